"""DINO projection head (Caron et al. 2021, Sec. 3.1 and App. C; official DINOHead)."""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cl_jax.models.norm import batch_norm
from cl_jax.losses.contrastive import l2_normalize


class DINOHead(nn.Module):
  """3-layer MLP (hidden 2048, GELU, bottleneck 256), L2 normalisation, then a weight-normalised linear layer
  with `out_dim` outputs and no bias (DINO Sec. 3.1). `norm_last_layer=True` fixes the weight-norm gain g to 1
  (no parameter); else g is learned (initialised to 1).

  Returns (the L2-normalised bottleneck [b, bottleneck_dim], the logits [b, out_dim]), float32.
  The last layer's parameters are named `last_layer` (for optim.frozen: DINO's freeze_last_layer).
  """
  out_dim: int = 65536
  hidden_dim: int = 2048
  bottleneck_dim: int = 256
  num_layers: int = 3
  use_bn: bool = False
  norm_last_layer: bool = True
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    if self.num_layers < 1:
      raise ValueError(f"DINOHead num_layers must be >= 1, got {self.num_layers}; the paper uses 3.")
    # trunc_normal(std=0.02) weights and zero biases, as the official _init_weights.
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                              kernel_init=nn.initializers.truncated_normal(0.02))
    x = x.astype(self.dtype)
    for i in range(self.num_layers - 1):
      x = dense(self.hidden_dim, name=f"dense{i + 1}")(x)
      if self.use_bn:
        x = batch_norm(train, self.bn_axis_name, self.dtype)(name=f"bn{i + 1}")(x)
      x = nn.gelu(x, approximate=False)
    x = dense(self.bottleneck_dim, name=f"dense{self.num_layers}")(x)
    z = l2_normalize(x)
    # PyTorch nn.Linear's default init U(-1/sqrt(fan_in), 1/sqrt(fan_in)); only its direction matters.
    last = nn.Dense(self.out_dim, use_bias=False, dtype=jnp.float32, param_dtype=jnp.float32,
                    kernel_init=nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"), name="last_layer")
    # Weight norm per output unit (torch weight_norm dim=0): kernel [in, out] normalised over `in`.
    logits = nn.WeightNorm(last, use_scale=not self.norm_last_layer, feature_axes=-1,
                           name="last_layer_norm")(z)
    return z, logits.astype(jnp.float32)
