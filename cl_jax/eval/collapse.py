"""Collapse monitor: per-dimension std of L2-normalised embeddings (SimSiam, Chen & He 2021, Sec. 4.1, Fig. 2)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax.losses.contrastive import l2_normalize


def embedding_std(z: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Mean over dimensions of the batch std of z/||z||: ~1/sqrt(d) when healthy, 0 when collapsed."""
  z = l2_normalize(z)
  mean, sq = jnp.mean(z, axis=0), jnp.mean(z * z, axis=0)
  if axis_name is not None:
    mean, sq = jax.lax.pmean(mean, axis_name), jax.lax.pmean(sq, axis_name)
  return jnp.mean(jnp.sqrt(jnp.maximum(sq - mean * mean, 0.0)))
