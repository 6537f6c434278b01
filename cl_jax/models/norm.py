"""The one BatchNorm of every backbone and head: two-pass variance mean((x - mean)^2), so the numbers do not
depend on how the batch is split over devices (flax's default E[x^2] - E[x]^2 loses most float32 digits on
inputs with large means and small variances, and 1 and 8 devices lose different ones); and the LayerNorm that
replaces it where examples must not see each other (CPC v2's patches)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp


def batch_norm(train: bool, axis_name: str | None, dtype: Any = None) -> Callable[..., nn.BatchNorm]:
  """nn.BatchNorm (momentum 0.9, eps 1e-5, float32 params) in train or eval mode, stats over `axis_name` too."""
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                           param_dtype=jnp.float32, axis_name=axis_name, use_fast_variance=False)


NORMS = ("batch", "layer")


def layer_norm(dtype: Any = None) -> Callable[..., nn.LayerNorm]:
  """Per-example LayerNorm over (H, W, C) of a feature map with per-channel scale and bias (Ba et al. 2016; CPC v2,
  Henaff et al. 2020, Sec. 4.1), two-pass variance; takes `scale_init` and `name` as the BatchNorm does."""
  return functools.partial(nn.LayerNorm, epsilon=1e-5, dtype=dtype, param_dtype=jnp.float32,
                           reduction_axes=(-3, -2, -1), feature_axes=-1, use_fast_variance=False)
