"""A small Transformer decoder over an encoder's output tokens (masked modelling's predictor: MaskCLIP's decoder,
Dong et al. 2023, Sec. 3.2; the lightweight decoder of MAE, He et al. 2022, Sec. 3)."""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cl_jax.models.vit import Block

_dense_init = nn.initializers.xavier_uniform()


class TokenDecoder(nn.Module):
  """Linear to `width`, `depth` pre-LN ViT blocks (bidirectional attention over every token), final LN, linear to
  `out_dim`: [b, N, D_in] -> [b, N, out_dim] float32. The encoder's tokens already carry their positions."""
  width: int
  depth: int
  num_heads: int
  out_dim: int
  mlp_ratio: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    if self.width % self.num_heads:
      raise ValueError(f"decoder width {self.width} is not divisible by its {self.num_heads} heads; pick heads "
                       "dividing the width.")
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=_dense_init)
    x = dense(self.width, name="embed")(x.astype(self.dtype))
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, self.dtype, name=f"block{i + 1}")(x)
    x = nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32, name="norm")(x)
    return dense(self.out_dim, name="predict")(x).astype(jnp.float32)
