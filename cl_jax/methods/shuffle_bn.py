"""Shuffle BN (MoCo, He et al. 2020, Sec. 3.3): keys computed on a batch shuffled across devices, then un-shuffled."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp


def shuffled_apply(fn: Callable[[jax.Array], tuple[jax.Array, Any]], x: jax.Array, key: jax.Array,
                   axis_name: str | None) -> tuple[jax.Array, Any]:
  """Runs `fn` (e.g. the key encoder with per-device BN) on a global shuffle of `x` and returns its rows in order.

  All-gathers this device's rows `x` [b, ...], permutes the global batch with a permutation drawn from `key` (the
  same on every device: derive it from the step key), runs `fn` on this device's slice of the shuffled batch,
  all-gathers the outputs and takes back this device's rows in the original order. A query and its key thus meet
  different per-device BN statistics, so BN cannot leak the positive. `fn(x) -> (y [b, ...], aux)`; `aux` (e.g.
  BN state updates) is returned as computed on the shuffled slice. With axis_name=None it is `fn(x)`; on a one-device
  axis the batch is still permuted, which leaves whole-batch BN unchanged (a no-op up to rounding) and mixes the
  groups of a split BN (MoCo's one-GPU CIFAR demo, `bn_splits`).
  """
  if axis_name is None:
    return fn(x)
  b = x.shape[0]
  offset = jax.lax.axis_index(axis_name) * b
  x_all = jax.lax.all_gather(x, axis_name, tiled=True)                  # [B, ...]
  perm = jax.random.permutation(key, x_all.shape[0])                   # shuffled position -> original row
  y, aux = fn(jnp.take(x_all, jax.lax.dynamic_slice(perm, (offset,), (b,)), axis=0))
  y_all = jax.lax.all_gather(y, axis_name, tiled=True)                  # shuffled order
  unshuffle = jnp.argsort(perm)                                         # original row -> shuffled position
  return jnp.take(y_all, jax.lax.dynamic_slice(unshuffle, (offset,), (b,)), axis=0), aux
