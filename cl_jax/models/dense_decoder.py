"""A small DPT-style decoder (Ranftl et al. 2021, "Vision Transformers for Dense Prediction", Sec. 3): ViT patch
tokens reassembled on their grid, then fusion stages of residual conv units and 2x bilinear upsampling, and a 1x1
head into the output width (LSeg's head1, Li et al. 2022, Sec. 3.2)."""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp


class ResidualConvUnit(nn.Module):
  """DPT's residual conv unit: x + conv3x3(ReLU(conv3x3(ReLU(x))))."""
  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Conv(self.features, (3, 3), padding="SAME", name="conv1")(nn.relu(x))
    y = nn.Conv(self.features, (3, 3), padding="SAME", name="conv2")(nn.relu(y))
    return x + y


def upsample2x(x: jax.Array) -> jax.Array:
  """Bilinear 2x upsampling of [b, h, w, c] (half-pixel centres)."""
  b, h, w, c = x.shape
  return jax.image.resize(x, (b, 2 * h, 2 * w, c), method="linear", antialias=False)


class DenseDecoder(nn.Module):
  """Patch tokens [b, N, D] on a gh x gw grid -> per-location features [b, gh * 2^k, gw * 2^k, out_dim].

  Reassemble (DPT Eq. 5-6, single scale: the last layer's tokens, the CLS token dropped as DPT's 'ignore'
  readout): a 1x1 projection to `features`; then `upsamples` fusion stages (DPT Fig. 1: a residual conv unit, 2x
  bilinear upsampling, a 1x1 projection); a final residual conv unit and the 1x1 head to `out_dim`."""
  features: int
  out_dim: int
  upsamples: int

  @nn.compact
  def __call__(self, tokens: jax.Array, grid: tuple[int, int]) -> jax.Array:
    b, n, _ = tokens.shape
    if n != grid[0] * grid[1]:
      raise ValueError(f"DenseDecoder got {n} tokens for a {grid[0]}x{grid[1]} grid.")
    x = nn.Dense(self.features, name="reassemble")(tokens.astype(jnp.float32)).reshape(b, *grid, self.features)
    for i in range(self.upsamples):
      x = ResidualConvUnit(self.features, name=f"fusion{i + 1}_rcu")(x)
      x = nn.Conv(self.features, (1, 1), name=f"fusion{i + 1}_out")(upsample2x(x))
    x = ResidualConvUnit(self.features, name="final_rcu")(x)
    return nn.Conv(self.out_dim, (1, 1), name="head")(x)
