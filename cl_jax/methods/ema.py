"""EMA targets with a cosine momentum schedule (BYOL, Grill et al. 2020, Sec. 3.1; MoCo v3, DINO)."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax


def cosine_momentum(base: float, step: jax.Array, total_steps: int, final: float = 1.0) -> jax.Array:
  """tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, increasing from `base` to `final` (BYOL Sec. 3.1)."""
  t = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(total_steps), 1), 0.0, 1.0)
  return final - (final - base) * (jnp.cos(jnp.pi * t) + 1.0) / 2.0


def ema_update(target: Any, online: Any, momentum: jax.Array | float) -> Any:
  """target <- momentum * target + (1 - momentum) * online (BYOL Eq. 1), leaf by leaf."""
  return optax.incremental_update(online, target, step_size=1.0 - momentum)
