"""SwAV's head (Caron et al. 2020, Sec. 4; official resnet50.py): projection MLP, L2 normalisation, prototypes."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cl_jax.losses.contrastive import l2_normalize
from cl_jax.models.heads import MLP


class SwAVHead(nn.Module):
  """Linear-BN-ReLU-Linear to `proj_dim`, L2-normalised (z), then scores z . c_k against K prototypes: a bias-free
  Dense whose kernel columns the method keeps at unit norm (SwAV.project_params)."""
  proj_hidden: int
  proj_dim: int
  num_prototypes: int
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> tuple[jax.Array, jax.Array]:
    z = MLP((self.proj_hidden,), self.proj_dim, use_bn=True, bn_axis_name=self.bn_axis_name, dtype=self.dtype,
            name="projector")(x, train)
    z = l2_normalize(z.astype(jnp.float32))
    scores = nn.Dense(self.num_prototypes, use_bias=False, param_dtype=jnp.float32, name="prototypes")(z)
    return z, scores


def normalize_prototypes(params: Any) -> Any:
  """params with head/prototypes/kernel [D, K] scaled to unit-norm columns (one prototype vector each)."""
  kernel = params["head"]["prototypes"]["kernel"]
  unit = kernel / jnp.linalg.norm(kernel, axis=0, keepdims=True)
  return {**params, "head": {**params["head"], "prototypes": {"kernel": unit}}}
