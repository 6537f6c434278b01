"""CLIP's modified ResNet image tower: 3-conv stem, anti-aliased (avg-pool) strides, attention pooling."""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cl_jax.models.norm import batch_norm
from cl_jax.models.registry import parse_bn, parse_dtype, register
from cl_jax.schema import Field
from cl_jax.models.vit import interpolate_posemb

_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def _avg_pool(x: jax.Array, stride: int) -> jax.Array:
  return x if stride == 1 else nn.avg_pool(x, (stride, stride), (stride, stride))


class _Bottleneck(nn.Module):
  """Bottleneck with the stride as an avg-pool after the 3x3 conv, and avg-pool + 1x1 conv on the shortcut."""
  planes: int
  stride: int
  conv: Any
  norm: Any

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_ch = 4 * self.planes
    y = nn.relu(self.norm(name="bn1")(self.conv(self.planes, (1, 1), name="conv1")(x)))
    y = nn.relu(self.norm(name="bn2")(self.conv(self.planes, (3, 3), padding=((1, 1), (1, 1)), name="conv2")(y)))
    y = _avg_pool(y, self.stride)
    y = self.norm(name="bn3")(self.conv(out_ch, (1, 1), name="conv3")(y))
    if self.stride > 1 or x.shape[-1] != out_ch:
      x = self.norm(name="down_bn")(self.conv(out_ch, (1, 1), name="down_conv")(_avg_pool(x, self.stride)))
    return nn.relu(x + y)


class AttentionPool2d(nn.Module):
  """QKV attention pooling: the mean feature (plus positions) attends over all positions (CLIP Sec. 2.4)."""
  num_heads: int
  output_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, d = x.shape
    shape = (1, h, w, d)
    if self.has_variable("params", "positional_embedding"):
      shape = self.get_variable("params", "positional_embedding").shape
    init = nn.initializers.normal(d ** -0.5)
    pos = interpolate_posemb(self.param("positional_embedding", init, shape, jnp.float32), (h, w))
    mean_pos = self.param("mean_positional_embedding", init, (1, 1, d), jnp.float32)
    tokens = x.reshape(b, h * w, d)
    tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True) + mean_pos, tokens + pos.reshape(1, h * w, d)],
                             axis=1).astype(self.dtype)
    std = d ** -0.5
    y = nn.MultiHeadDotProductAttention(num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32,
                                        kernel_init=nn.initializers.normal(std), out_features=self.output_dim,
                                        name="attn")(tokens[:, :1], tokens)   # its output projection is c_proj
    return y[:, 0].astype(jnp.float32)


class ModifiedResNet(nn.Module):
  """CLIP's ResNet (Radford et al. 2021, Sec. 2.4): 3 stem convs + avg-pool, bottleneck stages whose strides are
  avg-pools (Zhang 2019), and an attention pool in place of global average pooling.

  `__call__(x [b, h, w, 3], train) -> [b, output_dim]`; the total stride is 32. `heads` defaults to
  width * 32 // 64 as CLIP; `output_dim` defaults to the pooled width (width * 32).
  """
  layers: Sequence[int]
  width: int = 64
  heads: int | None = None
  output_dim: int | None = None
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  arch: str = "clip_resnet"

  @property
  def feature_dim(self) -> int:
    """Size of the pooled output, known without running the model."""
    return self.output_dim or self.width * 32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"{self.arch} expects images [batch, height, width, channels], got shape {x.shape}.")
    if min(x.shape[1:3]) < 32:
      raise ValueError(f"image size {x.shape[1]} is too small for {self.arch} (total stride 32); use "
                       "data.image_size >= 32.")
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=_conv_init)
    norm = batch_norm(train, self.bn_axis_name, self.dtype)
    x = x.astype(self.dtype)
    pad = ((1, 1), (1, 1))
    for i, (ch, stride) in enumerate(((self.width // 2, 2), (self.width // 2, 1), (self.width, 1))):
      x = nn.relu(norm(name=f"stem_bn{i + 1}")(conv(ch, (3, 3), (stride, stride), padding=pad,
                                                      name=f"stem_conv{i + 1}")(x)))
    x = _avg_pool(x, 2)
    for i, n in enumerate(self.layers):
      for j in range(n):
        x = _Bottleneck(self.width * 2**i, 2 if (i > 0 and j == 0) else 1, conv, norm,
                        name=f"layer{i + 1}_block{j + 1}")(x)
    heads = self.heads or max(1, self.width * 32 // 64)
    return AttentionPool2d(heads, self.feature_dim, self.dtype, name="attnpool")(x)


_ARCHS = {
    "clip_resnet_tiny": dict(layers=(1, 1, 1, 1), width=16),
    "clip_rn50": dict(layers=(3, 4, 6, 3), width=64),
    "clip_rn101": dict(layers=(3, 4, 23, 3), width=64),
    "clip_rn50x4": dict(layers=(4, 6, 10, 6), width=80),
}


SCHEMA = {"heads": Field(None), "output_dim": Field(None)}   # None: CLIP's width * 32 // 64 heads, the pooled width


def clip_resnet_from_config(hp: dict[str, Any], arch: str) -> ModifiedResNet:
  """Builds `arch` from the validated model fields (SCHEMA and registry.SHARED)."""
  return ModifiedResNet(**_ARCHS[arch], heads=hp["heads"], output_dim=hp["output_dim"],
                        bn_axis_name=parse_bn(hp["bn"]), dtype=parse_dtype(hp["dtype"]), arch=arch)


for _name in _ARCHS:
  register(_name, SCHEMA)(functools.partial(clip_resnet_from_config, arch=_name))
