"""CPC's pieces over a grid of image patches: patch extraction and augmentation, the per-patch encoder, the masked
(causal) PixelCNN-style context network and the linear predictions W_k (van den Oord et al. 2018, Sec. 3.1 and
4.2; CPC v2, Henaff et al. 2020, Sec. 3.1 and 4.1)."""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

DIRECTIONS = ("down", "up", "right", "left")


def grid_size(size: int, patch: int, stride: int) -> int:
  """Patches along one side of a `size` px image cut into `patch` px patches every `stride` px (0 if none fits)."""
  return max((size - patch) // stride + 1, 0)


def extract_patches(images: jax.Array, patch: int, stride: int) -> jax.Array:
  """[b, H, W, C] -> [b, Gh, Gw, patch, patch, C]: the overlapping grid of CPC (Henaff et al. 2020, Sec. 4.1: a 7x7
  grid of 64 px patches every 32 px of a 256 px image); pixels past the last whole patch are dropped."""
  gh, gw = grid_size(images.shape[1], patch, stride), grid_size(images.shape[2], patch, stride)
  if min(gh, gw) < 1:
    raise ValueError(f"CPC patch_size={patch} is larger than the {images.shape[1]}x{images.shape[2]} px images; "
                     "set method.patch_size <= data.image_size (and the crop size).")
  rows = stride * jnp.arange(gh)[:, None] + jnp.arange(patch)           # [Gh, P]
  cols = stride * jnp.arange(gw)[:, None] + jnp.arange(patch)           # [Gw, P]
  return images[:, rows[:, None, :, None], cols[None, :, None, :], :]


def augment_patches(patches: jax.Array, key: jax.Array, color_drop_p: float, flip_p: float) -> jax.Array:
  """CPC v2's per-patch augmentation of ONE image's [Gh, Gw, P, P, 3] grid (Henaff et al. 2020, Sec. 4.1): with
  probability color_drop_p keep one random colour channel (the others set to 0, the normalised mean), and flip
  each patch horizontally with probability flip_p; one uniform draw per patch and op."""
  u = jax.random.uniform(key, patches.shape[:2] + (3,))
  channel = jnp.minimum(jnp.floor(u[..., 1] * 3).astype(jnp.int32), 2)
  keep = jax.nn.one_hot(channel, 3, dtype=patches.dtype)                 # [Gh, Gw, 3]
  keep = jnp.where((u[..., 0] < color_drop_p)[..., None], keep, 1.0)
  patches = patches * keep[:, :, None, None, :]
  flipped = patches[:, :, :, ::-1, :]
  return jnp.where((u[..., 2] < flip_p)[:, :, None, None, None], flipped, patches)


def to_direction(grid: jax.Array, direction: str) -> jax.Array:
  """[b, Gh, Gw, ...] turned so that predicting `direction` is predicting the rows below (CPC v2, Sec. 4.1: more
  directions than top-to-bottom); a permutation of each image's patches."""
  if direction not in DIRECTIONS:
    raise ValueError(f"Unknown CPC direction '{direction}'; use some of: {', '.join(DIRECTIONS)}.")
  if direction in ("right", "left"):
    grid = jnp.swapaxes(grid, 1, 2)
  return grid[:, ::-1] if direction in ("up", "left") else grid


class PatchEncoder(nn.Module):
  """z = f(patch) for every patch of the grid (CPC v2, Sec. 3.1): the backbone (LayerNorm, so no patch sees
  another) on [b * Gh * Gw, P, P, C], pooled to one [D] vector per patch."""
  backbone: nn.Module

  @nn.compact
  def __call__(self, patches: jax.Array, train: bool) -> jax.Array:
    lead = patches.shape[:3]
    z = self.backbone(patches.reshape((-1,) + patches.shape[3:]), train=train)
    return z.reshape(lead + z.shape[-1:])


class _CausalBlock(nn.Module):
  """One residual block of the context network: 1x1, masked 3x3, 1x1 (PixelCNN, van den Oord et al. 2016). The
  3x3 convolution with its bottom row masked is a 2x3 kernel on the grid padded by one row above: output row i
  sees rows i - 1 and i only."""
  hidden: int

  @nn.compact
  def __call__(self, c: jax.Array) -> jax.Array:
    y = nn.Conv(self.hidden, (1, 1), name="reduce")(nn.relu(c))
    y = nn.Conv(self.hidden, (2, 3), padding=((1, 0), (1, 1)), name="masked")(nn.relu(y))
    y = nn.Conv(c.shape[-1], (1, 1), name="expand")(nn.relu(y))
    return c + y


class ContextPredictor(nn.Module):
  """c_{i,j} = g_ar(z_{u,v} : u <= i) by stacked masked convolutions, then W_k c_{i,j} for k = 1..K, the prediction
  of z_{i+k,j} (CPC, van den Oord et al. 2018, Sec. 3.1 and 4.2; CPC v2, Sec. 3.1). [b, G, W, D] -> [b, K, G, W, D]."""
  steps: int
  blocks: int
  hidden: int

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    c = z
    for i in range(self.blocks):
      c = _CausalBlock(self.hidden, name=f"block{i + 1}")(c)
    d = z.shape[-1]
    # The K linear maps W_k side by side, zero at init: every score starts at 0 (loss log N) instead of the large
    # dot products of unnormalised patch vectors, which stalled the quick start near log N.
    preds = nn.Dense(self.steps * d, use_bias=False, kernel_init=nn.initializers.zeros, name="predict")(c)
    return jnp.moveaxis(preds.reshape(z.shape[:3] + (self.steps, d)), 3, 1)


class CPCModel(nn.Module):
  """Patch encoder + one context network and W_k per prediction direction (CPC v2, Sec. 3.1 and 4.1).

  `__call__(patches [b, Gh, Gw, P, P, C])` -> (z [b, Gh, Gw, D], ((z turned, predictions [b, K, G, W, D]) per
  direction)); `features(images)` is the mean of the patch vectors over the grid, what evaluation uses."""
  backbone: nn.Module
  directions: Sequence[str]
  steps: int
  blocks: int
  hidden: int
  patch_size: int
  patch_stride: int

  def setup(self):
    self.encoder = PatchEncoder(self.backbone)
    self.context = {d: ContextPredictor(self.steps, self.blocks, self.hidden) for d in self.directions}   # context_<d>

  def __call__(self, patches: jax.Array, train: bool = True):
    z = self.encoder(patches, train=train)
    turned = tuple(to_direction(z, d) for d in self.directions)
    return z, tuple((t, self.context[d](t)) for d, t in zip(self.directions, turned))

  def features(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Mean-pooled patch vectors of un-augmented images [b, H, W, C] -> [b, D] (CPC v2 Sec. 4.1 pools them too)."""
    z = self.encoder(extract_patches(images, self.patch_size, self.patch_stride), train=train)
    return jnp.mean(z, axis=(1, 2))
