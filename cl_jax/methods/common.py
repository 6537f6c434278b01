"""Pieces several methods share (no method file imports another): the BN axis of the heads and the 2-view check."""
from __future__ import annotations

import jax
import ml_collections

from cl_jax import parallel
from cl_jax.methods.base import Views


def bn_axis(config: ml_collections.ConfigDict) -> str | None:
  """The BatchNorm reduction axis: 'data' for synchronised BN, None for per-device BN."""
  return parallel.DATA if config.model.get("bn", "sync") == "sync" else None


def two_views(views: Views, name: str) -> jax.Array:
  """The [2, b, H, W, C] crops of the first crop group, or a one-line error naming the fix."""
  crops = views["crops"][0]
  if crops.shape[0] != 2:
    raise ValueError(f"{name} takes 2 views per image, got {crops.shape[0]}; "
                     "set --config.augment['global'].views=2.")
  return crops
