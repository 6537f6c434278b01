"""The one BatchNorm of every backbone and head: two-pass variance mean((x - mean)^2), so the numbers do not
depend on how the batch is split over devices (flax's default E[x^2] - E[x]^2 loses most float32 digits on
inputs with large means and small variances, and 1 and 8 devices lose different ones)."""
from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp


def batch_norm(train: bool, axis_name: str | None, dtype: Any = None) -> Callable[..., nn.BatchNorm]:
  """nn.BatchNorm (momentum 0.9, eps 1e-5, float32 params) in train or eval mode, stats over `axis_name` too."""
  return functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype,
                           param_dtype=jnp.float32, axis_name=axis_name, use_fast_variance=False)
