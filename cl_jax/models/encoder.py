"""Backbone + projection head as one Linen module, the shape most methods train."""
from __future__ import annotations

import flax.linen as nn
import jax


class Encoder(nn.Module):
  """Runs `backbone` then `head`; returns (backbone features, projection)."""
  backbone: nn.Module
  head: nn.Module

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    h = self.backbone(x, train=train)
    return h, self.head(h, train=train)

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Backbone features only (evaluation)."""
    return self.backbone(x, train=train)
