"""The backbone registry, each backbone's declared `config.model` fields, and `build_backbone`."""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax.numpy as jnp
from flax import linen as nn

from cl_jax import parallel
from cl_jax.registry import Registry
from cl_jax.schema import Field, validate_variant

# Each entry maps a validated backbone config (a dict with every declared field) to a Linen module.
BACKBONES: Registry[Callable[[dict[str, Any]], nn.Module]] = Registry("backbone")

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
BN_MODES = {"sync": parallel.DATA, "local": None}
# One default for backbone and heads: synchronised (global-batch) BN, as SimCLR (Sec. 2.2) and every config that
# sets model.bn bar MoCo v1/v2 (local, their shuffling BN); a ViT backbone has no BN, only its heads read it.
BN_DEFAULT = "sync"
SHARED: dict[str, Field] = {"bn": Field(BN_DEFAULT, choices=tuple(BN_MODES)),
                            "dtype": Field("float32", choices=tuple(DTYPES))}
SCHEMAS: dict[str, dict[str, Field]] = {}   # backbone name -> its config.model fields (SHARED included)


def register(name: str, schema: Mapping[str, Field]) -> Callable[[Callable], Callable]:
  """Registers a backbone builder with the model fields it reads (besides name, bn, dtype)."""
  def add(build: Callable) -> Callable:
    SCHEMAS[name] = {**SHARED, **schema}
    return BACKBONES.register(name)(build)
  return add


def parse_dtype(name: str) -> Any:
  """Maps a config dtype string to a jnp dtype for the compute (parameters stay float32)."""
  if name not in DTYPES:
    raise ValueError(f"Unknown dtype '{name}'; use one of: {', '.join(DTYPES)}.")
  return DTYPES[name]


def parse_bn(mode: str) -> str | None:
  """Maps model.bn ('sync' | 'local') to the BatchNorm axis name ('data' | None)."""
  if mode not in BN_MODES:
    raise ValueError(f"Unknown bn '{mode}'; use one of: {', '.join(BN_MODES)} "
                     "(sync averages batch statistics over the 'data' mesh axis).")
  return BN_MODES[mode]


def model_section(cfg: Mapping[str, Any]) -> dict[str, Any]:
  """config.model validated against the named backbone's fields, defaults filled in; a typo is one line."""
  if "name" not in cfg or cfg["name"] is None:
    raise ValueError("The backbone config has no 'name'; set it to one of: "
                     f"{', '.join(BACKBONES.names())}.")
  BACKBONES.get(cfg["name"])   # an unknown name lists the known ones
  return validate_variant("model", cfg, SCHEMAS, cfg["name"])


def bn_axis_name(cfg: Mapping[str, Any]) -> str | None:
  """The BatchNorm axis of config.model.bn, for backbone and heads alike: 'data' (sync) or None (local)."""
  return parse_bn(model_section(cfg)["bn"])


def build_backbone(cfg: Mapping[str, Any]) -> nn.Module:
  """Builds the backbone named cfg.name from its validated fields (see SCHEMAS; unknown fields fail)."""
  hp = model_section(cfg)
  return BACKBONES.get(hp["name"])(hp)
