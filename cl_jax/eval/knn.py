"""Weighted kNN classifier on L2-normalised features (Wu et al. 2018, Sec. 3.4; k=200, T=0.07 as in solo-learn)."""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from cl_jax.losses.contrastive import l2_normalize
from cl_jax.schema import Field

# config.eval fields of every kNN evaluation (monitor, attributes, plots); knn_train_examples=0: the whole train split.
SCHEMA = {"knn_k": Field(200, low=1), "knn_temperature": Field(0.07, low=0, open_low=True),
          "knn_train_examples": Field(0, low=0)}


@functools.partial(jax.jit, static_argnames=("num_classes", "k", "temperature"))
def _scores(queries: jax.Array, memory: jax.Array, memory_labels: jax.Array, *, num_classes: int, k: int,
            temperature: float) -> jax.Array:
  sims = l2_normalize(queries) @ l2_normalize(memory).T            # [q, N]
  top_sims, top_idx = jax.lax.top_k(sims, k)
  weights = jnp.exp(top_sims / temperature)                          # [q, k]
  # memory_labels [N] or [A, N] (A labellings voting over the same neighbours) -> labels [q, k] or [A, q, k].
  votes = jax.nn.one_hot(jnp.take(memory_labels, top_idx, axis=-1), num_classes) * weights[..., None]
  return jnp.sum(votes, axis=-2)                                     # [q, C] or [A, q, C]


def knn_scores(queries: np.ndarray, memory: np.ndarray, memory_labels: np.ndarray, num_classes: int,
               k: int = 200, temperature: float = 0.07, chunk: int = 512) -> np.ndarray:
  """Class scores sum_{i in top-k} exp(s_i / T) [label_i == c] for each query, computed in chunks on the device.

  `memory_labels` [N] gives [q, num_classes]; [A, N] (several labellings of the memory, e.g. attributes) gives
  [A, q, num_classes] from one neighbour search.
  """
  k = min(k, len(memory))
  memory, memory_labels = jnp.asarray(memory, jnp.float32), jnp.asarray(memory_labels, jnp.int32)
  out = []
  for start in range(0, len(queries), chunk):
    q = np.asarray(queries[start:start + chunk], np.float32)
    pad = chunk - len(q)   # pad to a fixed chunk so the jitted function compiles once
    q = np.concatenate([q, np.ones((pad, q.shape[1]), np.float32)]) if pad else q
    s = _scores(jnp.asarray(q), memory, memory_labels, num_classes=num_classes, k=k, temperature=temperature)
    out.append(np.asarray(s)[..., :chunk - pad, :])
  return np.concatenate(out, axis=-2)


def knn_accuracy(queries: np.ndarray, query_labels: np.ndarray, memory: np.ndarray, memory_labels: np.ndarray,
                 num_classes: int, k: int = 200, temperature: float = 0.07) -> dict[str, float]:
  """Top-1 and top-5 accuracy (in %) of the weighted kNN classifier."""
  scores = knn_scores(queries, memory, memory_labels, num_classes, k, temperature)
  ranked = np.argsort(-scores, axis=1)
  labels = np.asarray(query_labels)[:, None]
  return {"top1": 100.0 * float(np.mean(ranked[:, 0:1] == labels)),
          "top5": 100.0 * float(np.mean(np.any(ranked[:, :min(5, num_classes)] == labels, axis=1)))}
