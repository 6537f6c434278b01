"""MLP projection / prediction heads shared by SimCLR, BYOL, SimSiam, MoCo v3 and DINO."""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cl_jax.models.norm import batch_norm


class MLP(nn.Module):
  """[Linear (+BN) + ReLU] per hidden layer, then Linear (+BN without affine if last_bn).

  Linear layers followed by BN have no bias (the BN shift replaces it). `last_bn_scale` keeps a
  learned gamma on the output BN (SimCLR v2's official head has a scale but no centre). Output is
  float32 whatever the compute dtype.
  """
  hidden_dims: Sequence[int]
  out_dim: int
  use_bn: bool = False
  last_bn: bool = False
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  last_bn_scale: bool = False
  out_bias: bool | None = None   # the output Linear's bias; None: a bias unless BN follows

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32)
    norm = batch_norm(train, self.bn_axis_name, self.dtype)
    x = x.astype(self.dtype)
    for i, h in enumerate(self.hidden_dims):
      x = dense(h, use_bias=not self.use_bn, name=f"dense{i + 1}")(x)
      if self.use_bn:
        x = norm(name=f"bn{i + 1}")(x)
      x = nn.relu(x)
    i = len(self.hidden_dims) + 1
    out_bias = not self.last_bn if self.out_bias is None else self.out_bias
    x = dense(self.out_dim, use_bias=out_bias, name=f"dense{i}")(x)
    if self.last_bn:
      x = norm(use_bias=False, use_scale=self.last_bn_scale, name=f"bn{i}")(x)
    return x.astype(jnp.float32)


def simclr_head(version: int, hidden: int, out: int, bn_axis_name: str | None = None,
                dtype: Any = jnp.float32) -> MLP:
  """SimCLR projection head g(.) (v1: Chen et al. 2020a Sec. 2.1; v2: Chen et al. 2020b Sec. 2).

  v1 is Linear-ReLU-Linear without BN; v2 has 3 layers with BN on every layer including the output,
  as the official code (output BN: scale, no centre).
  """
  if version == 1:
    return MLP((hidden,), out, use_bn=False, last_bn=False, bn_axis_name=bn_axis_name,
               dtype=dtype)
  if version == 2:
    return MLP((hidden, hidden), out, use_bn=True, last_bn=True, bn_axis_name=bn_axis_name,
               dtype=dtype, last_bn_scale=True)
  raise ValueError(f"Unknown SimCLR head version {version}; use 1 or 2.")
