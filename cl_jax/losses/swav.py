"""SwAV's codes and swapped prediction (Caron et al. 2020, Sec. 3.1), exact with the batch split over devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel


def sinkhorn(scores: jax.Array, epsilon: float, iters: int, valid: jax.Array | None = None,
             axis_name: str | None = None) -> jax.Array:
  """Codes Q [n, K] of prototype scores [n, K] (Eq. 3-4; official distributed_sinkhorn), no gradient.

  Q = exp(scores / epsilon), then `iters` rounds of: rows (prototypes) to equal mass 1/K summed over every device,
  columns (samples) to 1/B each, locally; B counts the valid samples of all devices. Rows with valid=False (an
  unfilled queue) get zero codes and count nowhere. Returns B * Q^T: each valid sample's code sums to 1.
  """
  scores = jax.lax.stop_gradient(scores).astype(jnp.float32)
  valid = jnp.ones(scores.shape[:1], bool) if valid is None else valid
  # Subtracting the global max changes nothing after the first normalisation and keeps exp finite.
  top = parallel.pmax(jnp.max(jnp.where(valid[:, None], scores, -jnp.inf)), axis_name)
  q = jnp.where(valid[:, None], jnp.exp((scores - top) / epsilon), 0.0)       # [n, K]
  k = q.shape[1]
  total = parallel.psum(jnp.sum(valid.astype(jnp.float32)), axis_name)        # B
  q = q / parallel.psum(jnp.sum(q), axis_name)
  for _ in range(iters):
    q = q / parallel.psum(jnp.sum(q, axis=0, keepdims=True), axis_name) / k   # each prototype: 1/K
    col = jnp.sum(q, axis=1, keepdims=True)
    q = jnp.where(valid[:, None], q / jnp.where(col > 0, col, 1.0), 0.0) / total   # each sample: 1/B
  return q * total


def swapped_prediction(scores: jax.Array, codes: jax.Array, temperature: float,
                       axis_name: str | None = None) -> jax.Array:
  """SwAV's loss (Eq. 1-2): for each global crop i, every other crop v predicts its codes with
  softmax(scores_v / temperature); -sum q log p averaged over crops v != i, over the global crops i and over the
  global batch (the official loop's `subloss / (n_crops - 1)`, `/ n_global`).

  `scores` [V, b, K] of every crop (global crops first), `codes` [G, b, K] of the G global crops.
  """
  v, b, _ = scores.shape
  g = codes.shape[0]
  logp = jax.nn.log_softmax(scores.astype(jnp.float32) / temperature, axis=-1)   # [V, b, K]
  cross = -jnp.einsum("gbk,vbk->gvb", codes, logp)                               # [G, V, b]
  not_self = 1.0 - jnp.eye(g, v)                                                 # skip v == i
  per_row = jnp.sum(cross * not_self[:, :, None], axis=(0, 1)) / ((v - 1) * g)   # [b]
  return parallel.psum(jnp.sum(per_row), axis_name) / (b * parallel.axis_size(axis_name))


def code_entropy(codes: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Entropy (nats) of the global batch's mean code [.., b, K]: log K when all prototypes are used equally, 0 when
  every sample goes to one prototype (collapse)."""
  flat = codes.reshape(-1, codes.shape[-1])
  mean = parallel.psum(jnp.sum(flat, axis=0), axis_name) / (flat.shape[0] * parallel.axis_size(axis_name))
  return -jnp.sum(jnp.where(mean > 0, mean * jnp.log(jnp.where(mean > 0, mean, 1.0)), 0.0))
