"""Backbone + projection head as one Linen module, the shape most methods train; the multi-crop variant."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


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


class MultiCropEncoder(nn.Module):
  """Backbone run once per resolution group, head run once on the concatenated features (DINO's
  MultiCropWrapper, Sec. 3.1 multi-crop)."""
  backbone: nn.Module
  head: nn.Module

  @nn.compact
  def __call__(self, groups: Sequence[jax.Array], train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    """groups: [n_g, H_g, W_g, C] per resolution -> (backbone features, head bottleneck, logits), rows in order."""
    feats = jnp.concatenate([self.backbone(x, train=train) for x in groups], axis=0)
    z, logits = self.head(feats, train=train)
    return feats, z, logits

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Backbone features only (evaluation)."""
    return self.backbone(x, train=train)
