"""The backbone registry and `build_backbone`, which turns a backbone config into a Linen module."""
from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
from flax import linen as nn

from cl_jax.registry import Registry

# Each entry maps a backbone config (ConfigDict or dict) to a Linen module.
BACKBONES: Registry[Callable[[Any], nn.Module]] = Registry("backbone")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BN_MODES = {"sync": "data", "local": None}


def parse_dtype(name: str) -> Any:
  """Maps a config dtype string to a jnp dtype for the compute (parameters stay float32)."""
  if name not in DTYPES:
    raise ValueError(f"Unknown dtype '{name}'; use one of: {', '.join(DTYPES)}.")
  return DTYPES[name]


def parse_bn(mode: str) -> str | None:
  """Maps cfg.bn ('sync' | 'local') to the BatchNorm axis name ('data' | None)."""
  if mode not in BN_MODES:
    raise ValueError(f"Unknown bn '{mode}'; use one of: {', '.join(BN_MODES)} "
                     "(sync averages batch statistics over the 'data' mesh axis).")
  return BN_MODES[mode]


def build_backbone(cfg: Any) -> nn.Module:
  """Builds the backbone named cfg.name; other fields are optional (`cfg.get(field, default)`).

  Fields: width (1.0), stem ('imagenet' | 'cifar'), bn ('sync' | 'local'), dtype ('float32' |
  'bfloat16'), patch_size (ViT, 16), frozen_patch_embed (ViT, False). Fields a family does not use
  are ignored.
  """
  name = cfg.get("name", None)
  if name is None:
    raise ValueError("The backbone config has no 'name'; set it to one of: "
                     f"{', '.join(BACKBONES.names())}.")
  return BACKBONES.get(name)(cfg)
