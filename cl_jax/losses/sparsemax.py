"""Sparsemax (Martins & Astudillo 2016): the Euclidean projection of a score vector onto the probability simplex.

  sparsemax(z) = argmin_{p in simplex} ||p - z||^2 = max(z - tau(z), 0)                               (Eq. 2)

with the threshold tau found from the scores sorted in decreasing order z_(1) >= ... >= z_(K): the support size is
k(z) = max{k : 1 + k z_(k) > sum_{j<=k} z_(j)} and tau(z) = (sum_{j<=k(z)} z_(j) - 1) / k(z)  (Alg. 1, Eq. 3-4).
Unlike softmax it gives exact zeros, keeps the order of the scores (z_i >= z_j => p_i >= p_j) and is invariant to
adding a constant. Its Jacobian is diag(s) - s s^T / |S| with s the support indicator (Eq. 10-12): on the support
the tangent minus its support mean, zero elsewhere; that is the JVP below (so no gradient flows through the sort).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


@jax.custom_jvp
def _sparsemax_last(z: jax.Array) -> jax.Array:
  """Sparsemax over the last axis of float z (Alg. 1: sort, cumulative sum, support size, threshold)."""
  z = z - jnp.max(z, axis=-1, keepdims=True)               # invariant to shifts; keeps the sums small
  zs = -jnp.sort(-z, axis=-1)                               # decreasing
  k = jnp.arange(1, z.shape[-1] + 1, dtype=z.dtype)
  cumsum = jnp.cumsum(zs, axis=-1)
  in_support = 1.0 + k * zs > cumsum                        # true on a prefix of the sorted scores (Eq. 3)
  size = jnp.sum(in_support, axis=-1, keepdims=True)        # k(z) >= 1: the largest score is always kept
  total = jnp.take_along_axis(cumsum, size - 1, axis=-1)
  tau = (total - 1.0) / size.astype(z.dtype)                # Eq. 4
  return jnp.maximum(z - tau, 0.0)


@_sparsemax_last.defjvp
def _sparsemax_jvp(primals, tangents):
  (z,), (dz,) = primals, tangents
  p = _sparsemax_last(z)
  s = (p > 0).astype(p.dtype)
  mean = jnp.sum(s * dz, axis=-1, keepdims=True) / jnp.sum(s, axis=-1, keepdims=True)
  return p, s * (dz - mean)                                 # (diag(s) - s s^T / |S|) dz  (Eq. 12)


def sparsemax(z: jax.Array, axis: int = -1) -> jax.Array:
  """Sparsemax of `z` along `axis` (float32 or float64; lower precisions are computed in float32).

  Entries equal to -inf get probability 0 (at least one entry per row must be finite)."""
  dtype = z.dtype
  if dtype not in (jnp.float32, jnp.float64):
    z = z.astype(jnp.float32)
  out = jnp.moveaxis(_sparsemax_last(jnp.moveaxis(z, axis, -1)), -1, axis)
  return out.astype(dtype)
