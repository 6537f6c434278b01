"""Recall@K image retrieval on fine labels (MaskCon's protocol, Feng & Patras 2023, Sec. 4.1; the official
MaskCon_CVPR2023 main.py `retrieval`): every test image queries the rest of the test split by cosine similarity of
backbone features, and counts as recalled at K when one of its K nearest others has its (fine) label.

Under data.coarse_labels training sees coarse labels only; the test split keeps the fine ones, so this measures how
much of the fine structure the representation recovers."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from cl_jax.eval import features
from cl_jax.run_state import Run, TrainState

KS = (1, 2, 5, 10)


def recall_at_k(x: np.ndarray, labels: np.ndarray, ks: tuple[int, ...] = KS, chunk: int = 1024) -> dict[int, float]:
  """{K: % of queries with a same-label item among their K nearest OTHER items} by cosine similarity of `x`."""
  x = jnp.asarray(x, jnp.float32)
  x = x / jnp.maximum(jnp.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  labels = np.asarray(labels)
  n, k_max = x.shape[0], max(ks)
  if n <= k_max:
    raise ValueError(f"recall@{k_max} needs more than {k_max} items, got {n}; evaluate on a larger split.")
  first_hit = np.empty(n, np.int64)   # rank (0-based) of the first same-label neighbour, k_max if none in the top
  for start in range(0, n, chunk):
    rows = jnp.arange(start, min(start + chunk, n))
    sim = x[rows] @ x.T
    sim = sim.at[jnp.arange(len(rows)), rows].set(-jnp.inf)        # never retrieve the query itself
    top = np.asarray(jax.lax.top_k(sim, k_max)[1])
    same = labels[top] == labels[np.asarray(rows)][:, None]
    first_hit[start:start + len(rows)] = np.where(same.any(1), same.argmax(1), k_max)
  return {k: 100.0 * float(np.mean(first_hit < k)) for k in ks}


def evaluate_fine_recall(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """eval/recall_at_{1,2,5,10} of the test split's backbone features against its own (fine) labels."""
  if "encode" not in run.cache:
    run.cache["encode"] = features.make_encode(run, specs)
  x, labels = features.extract_features(run, run.cache["encode"], state, run.test_source)
  return {f"eval/recall_at_{k}": v for k, v in recall_at_k(x, labels).items()}
