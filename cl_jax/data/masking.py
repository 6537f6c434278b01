"""Random masks for masked modelling, pure keyed functions vmapped over the batch (one key per example, so the masks
do not depend on how the batch is split over devices): BEiT's block-wise patch masking and BERT-style token masking.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.data.augment import example_keys


def num_masked_patches(grid: tuple[int, int], ratio: float) -> int:
  """The target number of masked patches of a grid: round(ratio * gh * gw), at least 1 when ratio > 0."""
  n = grid[0] * grid[1]
  return 0 if ratio <= 0 else max(1, min(n, int(round(ratio * n))))


def block_mask(key: jax.Array, grid: tuple[int, int], ratio: float, min_patches: int = 16,
               min_aspect: float = 0.3, max_tries: int = 10) -> jax.Array:
  """One block-wise mask (BEiT, Bao et al. 2022, Sec. 2.5 / Algorithm 1): bool [gh * gw], row-major.

  Repeats: a block of s ~ U[min_patches, T - |M|] patches (T = round(ratio * N)), aspect ratio r log-uniform in
  [min_aspect, 1 / min_aspect], height round(sqrt(s r)) and width round(sqrt(s / r)) (clipped to the grid), at a
  uniform position; M <- M u block. As BEiT's MaskingGenerator (the code behind the algorithm) a block is kept only
  if it adds at least one patch and does not take |M| past T, and masking stops when |M| = T or after `max_tries`
  consecutive blocks were rejected; so |M| <= T always, and |M| < T only rarely (on tiny grids).
  `min_patches` (BEiT: 16 of 14 x 14) is capped at T, so that a small grid still gets blocks.
  """
  gh, gw = grid
  target = num_masked_patches(grid, ratio)
  min_patches = max(1, min(int(min_patches), target))   # a grid smaller than BEiT's 14 x 14 takes smaller blocks
  rows = jnp.arange(gh)[:, None]
  cols = jnp.arange(gw)[None, :]
  log_lo, log_hi = math.log(min_aspect), math.log(1.0 / min_aspect)

  def propose(k, count):
    k_s, k_r, k_t, k_l = jax.random.split(k, 4)
    high = jnp.maximum(target - count, min_patches).astype(jnp.float32)
    s = jax.random.uniform(k_s, (), minval=float(min_patches), maxval=high)
    r = jnp.exp(jax.random.uniform(k_r, (), minval=log_lo, maxval=log_hi))
    h = jnp.clip(jnp.round(jnp.sqrt(s * r)), 1, gh).astype(jnp.int32)
    w = jnp.clip(jnp.round(jnp.sqrt(s / r)), 1, gw).astype(jnp.int32)
    top = jax.random.randint(k_t, (), 0, gh - h + 1)
    left = jax.random.randint(k_l, (), 0, gw - w + 1)
    return (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)

  def cond(carry):
    _, count, fails, _ = carry
    return (count < target) & (fails < max_tries)

  def body(carry):
    mask, count, fails, attempt = carry
    block = propose(jax.random.fold_in(key, attempt), count)
    delta = jnp.sum(block & ~mask)
    keep = (delta > 0) & (count + delta <= target)
    mask = jnp.where(keep, mask | block, mask)
    count = jnp.where(keep, count + delta, count)
    fails = jnp.where(keep, 0, fails + 1)
    return mask, count, fails, attempt + 1

  # The empty mask and zero counters drawn from `key`, so that inside shard_map they vary over devices as the key
  # does (a while_loop's carry keeps its type).
  empty = jax.random.uniform(key, (gh, gw)) < 0
  zero = jnp.sum(empty, dtype=jnp.int32)
  init = (empty, zero, zero, zero)
  mask, *_ = jax.lax.while_loop(cond, body, init)
  return mask.reshape(-1)


def token_mask(key: jax.Array, maskable: jax.Array, ratio: float) -> jax.Array:
  """One BERT-style token mask (Devlin et al. 2019, Sec. 3.1): bool [L], exactly max(1, round(ratio * n)) of the
  n maskable positions, uniformly at random (none if n = 0)."""
  n = jnp.sum(maskable)
  k = jnp.where(n > 0, jnp.maximum(1, jnp.round(ratio * n)), 0).astype(jnp.int32)
  scores = jnp.where(maskable, jax.random.uniform(key, maskable.shape), 2.0)
  rank = jnp.argsort(jnp.argsort(scores))
  return maskable & (rank < k)


def batch_keys(key: jax.Array, local_batch: int, axis_name: str | None = parallel.DATA) -> jax.Array:
  """Per-example keys fold_in(key, global example index): inside shard_map over `axis_name` the index is the
  example's position in the global batch, so 8 devices draw the same masks as 1."""
  index = parallel.global_example_index(local_batch) if axis_name is not None else jnp.arange(local_batch)
  return example_keys(key, index)


def block_masks(key: jax.Array, batch: int, grid: tuple[int, int], ratio: float, min_patches: int = 16,
                min_aspect: float = 0.3, axis_name: str | None = parallel.DATA) -> jax.Array:
  """bool [batch, gh * gw]: one block_mask per example from its own key (see batch_keys)."""
  keys = batch_keys(key, batch, axis_name)
  return jax.vmap(lambda k: block_mask(k, grid, ratio, min_patches, min_aspect))(keys)


def token_masks(key: jax.Array, maskable: jax.Array, ratio: float,
                axis_name: str | None = parallel.DATA) -> jax.Array:
  """bool [batch, L]: one token_mask per row of `maskable` from its own key (see batch_keys)."""
  keys = batch_keys(key, maskable.shape[0], axis_name)
  return jax.vmap(lambda k, m: token_mask(k, m, ratio))(keys, maskable)
