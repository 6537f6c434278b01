"""Pieces several methods share (no method file imports another): BN axis, 2-view check, crop roles, the EMA copy,
embedding_std."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from cl_jax import parallel
from cl_jax.data.augment import view_groups
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.methods.base import Method, Views
from cl_jax.models.encoder import Encoder
from cl_jax.models.registry import bn_axis_name
from cl_jax.schema import Field


def bn_axis(config: ml_collections.ConfigDict) -> str | None:
  """The heads' BatchNorm axis, the backbone's: the one declared model.bn ('data' when sync, None when local)."""
  return bn_axis_name(config.model)


def crop_roles(recipe: ml_collections.ConfigDict, method: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
  """Indices in views["crops"] of the global and local crop groups, by the role each group declares (multi-crop,
  SwAV Sec. 3.2, DINO Sec. 3.1): a one-line error if a group declares none or none is global."""
  groups = view_groups(recipe)
  unset = [name for name, g in groups if not g.role]
  if unset:
    raise ValueError(f"{method} needs every crop group to declare its role; set config.augment['{unset[0]}'].role "
                     "to 'global' (large crops) or 'local' (small crops).")
  global_groups = tuple(i for i, (_, g) in enumerate(groups) if g.role == "global")
  if not global_groups:
    raise ValueError(f"{method} has no global crops: no group of config.augment has role='global'; set it on the "
                     "large crops, e.g. config.augment['global'].role='global'.")
  return global_groups, tuple(i for i, (_, g) in enumerate(groups) if g.role == "local")


def two_views(views: Views, name: str) -> jax.Array:
  """The [2, b, H, W, C] crops of the first crop group, or a one-line error naming the fix."""
  crops = views["crops"][0]
  if crops.shape[0] != 2:
    raise ValueError(f"{name} takes 2 views per image, got {crops.shape[0]}; "
                     "set --config.augment['global'].views=2.")
  return crops


def embedding_std(z: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Collapse metric (SimSiam, Chen & He 2021, Sec. 4.1): mean per-dimension batch std of z/||z||, ~1/sqrt(d) or 0."""
  z = l2_normalize(z)
  mean, sq = jnp.mean(z, axis=0), jnp.mean(z * z, axis=0)
  mean, sq = parallel.pmean(mean, axis_name), parallel.pmean(sq, axis_name)
  return jnp.mean(jnp.sqrt(jnp.maximum(sq - mean * mean, 0.0)))


# The EMA copy of the online network (MoCo's key encoder, BYOL's target, MoCo v3's momentum encoder, DINO's
# teacher) lives in method state under one key, "ema", laid out as Flax variables so it applies directly:
# state["ema"] = {"params": ..., "batch_stats": ...}. Its params move in after_update (ema_step); its BN
# statistics come from its own train-mode forward in loss.


def momentum_field(default: float) -> Field:
  """The schema field of an EMA momentum: a float in [0, 1] (checked at start-up with the method's schema)."""
  return Field(default, low=0, high=1)


def ema_init(params: Any, batch_stats: Any) -> dict[str, Any]:
  """The EMA copy at step 0: a copy of the online network's params and BN statistics (as the official codes)."""
  return {"params": jax.tree.map(jnp.copy, params), "batch_stats": jax.tree.map(jnp.copy, batch_stats)}


def cosine_momentum(base: float, step: jax.Array, total_steps: int, final: float = 1.0) -> jax.Array:
  """tau_k = 1 - (1 - tau_base) (cos(pi k / K) + 1) / 2, increasing from `base` to `final` (BYOL Sec. 3.1)."""
  t = jnp.clip(jnp.asarray(step, jnp.float32) / max(int(total_steps), 1), 0.0, 1.0)
  return final - (final - base) * (jnp.cos(jnp.pi * t) + 1.0) / 2.0


def ema_update(target: Any, online: Any, momentum: jax.Array | float) -> Any:
  """target <- momentum * target + (1 - momentum) * online, leaf by leaf (MoCo Eq. 2, BYOL Eq. 1): the one EMA."""
  return optax.incremental_update(online, target, step_size=1.0 - momentum)


def ema_step(ema: dict[str, Any], online_params: Any, momentum: jax.Array | float) -> dict[str, Any]:
  """The EMA copy after an optimizer update: its params move towards `online_params`, its BN statistics stay."""
  return {**ema, "params": ema_update(ema["params"], online_params, momentum)}


class KeyEncoderMethod(Method):
  """A method whose state["ema"] is a momentum key encoder of its Encoder `self.model` (MoCo, MaskCon): the EMA
  step after each update (MoCo Eq. 2, theta_k <- m theta_k + (1 - m) theta_q, `self.momentum`) and evaluation of
  the query encoder's backbone features."""

  momentum: float
  model: Encoder

  def init_with_queue(self, key: jax.Array, views: Views, queue_size: int, dim: int) -> tuple[Any, dict[str, Any]]:
    """(params, state) at step 0: the query encoder, its copy as the key encoder, a queue of `queue_size` random
    unit keys of width `dim` (official MoCo: randn normalised per key; rows = keys) and its write pointer 0."""
    qkey, mkey = jax.random.split(key)
    variables = self.model.init(mkey, views["crops"][0][0], train=False)
    params, stats = variables["params"], variables.get("batch_stats", {})
    queue = l2_normalize(jax.random.normal(qkey, (queue_size, dim), jnp.float32))
    return params, {"batch_stats": stats, "ema": ema_init(params, stats), "queue": queue,
                    "ptr": jnp.zeros((), jnp.int32)}

  def after_update(self, params, state, step):
    del step
    return {**state, "ema": ema_step(state["ema"], params, self.momentum)}

  def encode(self, params, state, images):
    return self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, images, train=False,
                            method=Encoder.features)
