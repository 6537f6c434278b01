"""ResNet backbones (He et al. 2016), v1.5 layout (stride on the 3x3 conv), no classifier."""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cl_jax.models.norm import NORMS, batch_norm, layer_norm
from cl_jax.models.registry import parse_bn, parse_dtype, register
from cl_jax.schema import Field

STEMS = ("imagenet", "cifar", "small")
# torchvision / Goyal et al. conv init: He normal with fan_out.
_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _Block(nn.Module):
  """Basic (two 3x3) or bottleneck (1x1-3x3-1x1) residual block (He et al. 2016, Fig. 5)."""
  channels: int
  strides: int
  bottleneck: bool
  conv: Any
  norm: Any
  zero_init_last_bn: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    last_init = nn.initializers.zeros if self.zero_init_last_bn else nn.initializers.ones
    out_channels = self.channels * (4 if self.bottleneck else 1)
    s = (self.strides, self.strides)
    if self.bottleneck:
      y = nn.relu(self.norm()(self.conv(self.channels, (1, 1))(x)))
      y = nn.relu(self.norm()(self.conv(self.channels, (3, 3), s, padding=((1, 1), (1, 1)))(y)))
      y = self.norm(scale_init=last_init)(self.conv(out_channels, (1, 1))(y))
    else:
      y = nn.relu(self.norm()(self.conv(self.channels, (3, 3), s, padding=((1, 1), (1, 1)))(x)))
      y = self.conv(out_channels, (3, 3), padding=((1, 1), (1, 1)))(y)
      y = self.norm(scale_init=last_init)(y)
    if x.shape[-1] != out_channels or self.strides != 1:
      x = self.norm(name="proj_bn")(self.conv(out_channels, (1, 1), s, name="proj_conv")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet features: `__call__(x [b,h,w,3], train) -> [b, feature_dim]` float32, average-pooled.

  `width` multiplies every channel count (SimCLR v2 Sec. 2 uses wider ResNets); `stem='cifar'` is
  the 3x3/1 stem without max-pool (SimCLR Appendix B.9); `stem='small'` is one 3x3/2 conv without
  max-pool (half resolution: cheaper than 'cifar', finer than 'imagenet' on tiny images); `bn_axis_name='data'` synchronises
  BatchNorm statistics over that mesh axis (train=True then needs shard_map; init with train=False
  works anywhere); `zero_init_last_bn` zero-inits each block's last BN gamma (Goyal et al. 2017,
  Sec. 5.1). `norm='layer'` replaces every BatchNorm by a per-example LayerNorm (CPC v2, Henaff et al. 2020,
  Sec. 4.1: BN would let the patches of one image see each other); no batch statistics then. It is a module
  attribute, not a config field: the one method that needs it (cpc_v2) sets it with `backbone.clone(norm=...)`.
  """
  stage_sizes: Sequence[int]
  bottleneck: bool = False
  base_width: int = 64
  width: float = 1.0
  stem: str = "imagenet"
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  zero_init_last_bn: bool = True
  arch: str = "resnet"
  norm: str = "batch"

  def stage_channels(self, i: int) -> int:
    """Block width of stage i (before the bottleneck's x4 expansion)."""
    return max(1, int(round(self.base_width * self.width * 2**i)))

  @property
  def feature_dim(self) -> int:
    """Size D of the pooled feature, known without running the model."""
    return self.stage_channels(len(self.stage_sizes) - 1) * (4 if self.bottleneck else 1)

  @property
  def total_stride(self) -> int:
    """Down-sampling factor from the input to the last feature map."""
    return {"imagenet": 4, "small": 2}.get(self.stem, 1) * 2**(len(self.stage_sizes) - 1)

  def _check_input(self, x: jax.Array) -> None:
    if self.stem not in STEMS:
      raise ValueError(
          f"Unknown stem '{self.stem}' for {self.arch}; use one of: {', '.join(STEMS)}.")
    if x.ndim != 4:
      raise ValueError(f"{self.arch} expects images [batch, height, width, channels], "
                       f"got shape {x.shape}.")
    h, w = x.shape[1:3]
    if min(h, w) < self.total_stride:
      size = f"{h}" if h == w else f"{h}x{w}"
      fix = "use stem='cifar' or a larger" if self.stem == "imagenet" else "use a larger"
      raise ValueError(f"image size {size} is too small for {self.arch} with the {self.stem} stem "
                       f"(needs >= {self.total_stride}); {fix} data.image_size")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    self._check_input(x)
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, param_dtype=jnp.float32,
                             kernel_init=_conv_init)
    if self.norm not in NORMS:
      raise ValueError(f"Unknown norm '{self.norm}' for {self.arch}; use one of: {', '.join(NORMS)}.")
    norm = batch_norm(train, self.bn_axis_name, self.dtype) if self.norm == "batch" else layer_norm(self.dtype)
    x = x.astype(self.dtype)
    c0 = self.stage_channels(0)
    if self.stem == "imagenet":
      x = conv(c0, (7, 7), (2, 2), padding=((3, 3), (3, 3)), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    elif self.stem == "small":
      x = conv(c0, (3, 3), (2, 2), padding=((1, 1), (1, 1)), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    else:
      x = conv(c0, (3, 3), padding=((1, 1), (1, 1)), name="stem_conv")(x)
      x = nn.relu(norm(name="stem_bn")(x))
    for i, n_blocks in enumerate(self.stage_sizes):
      for j in range(n_blocks):
        strides = 2 if (i > 0 and j == 0) else 1
        x = _Block(self.stage_channels(i), strides, self.bottleneck, conv, norm,
                   self.zero_init_last_bn, name=f"stage{i + 1}_block{j + 1}")(x)
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2))


_ARCHS = {
    "resnet_tiny": dict(stage_sizes=(1, 1, 1, 1), bottleneck=False, base_width=16),
    "resnet18": dict(stage_sizes=(2, 2, 2, 2), bottleneck=False),
    "resnet34": dict(stage_sizes=(3, 4, 6, 3), bottleneck=False),
    "resnet50": dict(stage_sizes=(3, 4, 6, 3), bottleneck=True),
    "resnet101": dict(stage_sizes=(3, 4, 23, 3), bottleneck=True),
    "resnet152": dict(stage_sizes=(3, 8, 36, 3), bottleneck=True),
}


SCHEMA = {"width": Field(1.0, low=0, open_low=True), "stem": Field("imagenet", choices=STEMS),
          "zero_init_last_bn": Field(True, choices=(True, False))}


def resnet_from_config(hp: dict[str, Any], arch: str) -> ResNet:
  """Builds ResNet `arch` from the validated model fields (SCHEMA and registry.SHARED)."""
  return ResNet(**_ARCHS[arch], width=float(hp["width"]), stem=hp["stem"], bn_axis_name=parse_bn(hp["bn"]),
                dtype=parse_dtype(hp["dtype"]), zero_init_last_bn=bool(hp["zero_init_last_bn"]), arch=arch)


for _name in _ARCHS:
  register(_name, SCHEMA)(functools.partial(resnet_from_config, arch=_name))
