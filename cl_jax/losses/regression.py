"""Regression losses between a prediction and a stop-gradient target (BYOL, SimSiam), exact across devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.contrastive import l2_normalize


def _global_mean(per_example: jax.Array, axis_name: str | None) -> jax.Array:
  """Mean over the global batch: psum of the local sums over psum of the local counts."""
  total = parallel.psum(jnp.sum(per_example), axis_name)
  return total / parallel.psum(jnp.asarray(per_example.shape[0], jnp.float32), axis_name)


def cosine_similarity(p: jax.Array, z: jax.Array) -> jax.Array:
  """Per-row cosine similarity <p/||p||, z/||z||> in float32."""
  return jnp.sum(l2_normalize(p) * l2_normalize(z), axis=-1)


def byol_regression(p: jax.Array, z: jax.Array, axis_name: str | None = None) -> jax.Array:
  """BYOL (Grill et al. 2020, Eq. 2): ||p/||p|| - sg(z)/||z|| ||^2 = 2 - 2 cos(p, z), mean over the global batch.

  `p` is the online prediction q_theta(z_theta), `z` the target projection z'_xi (no gradient flows into it).
  With `axis_name`, rows are this device's and the returned loss (replicated) is the global-batch mean.
  """
  return _global_mean(2.0 - 2.0 * cosine_similarity(p, jax.lax.stop_gradient(z)), axis_name)


def negative_cosine(p: jax.Array, z: jax.Array, axis_name: str | None = None) -> jax.Array:
  """SimSiam (Chen & He 2021, Eq. 1 with Eq. 3's stop-gradient): D(p, sg(z)) = -cos(p, z), global-batch mean."""
  return _global_mean(-cosine_similarity(p, jax.lax.stop_gradient(z)), axis_name)
