"""Methods by name: `get_method(config)` builds the one named by config.method.name."""
from __future__ import annotations

import importlib

import ml_collections

from cl_jax.methods.base import Method
from cl_jax.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")

# Each module registers its class on import; list new method files here.
_MODULES = ("simclr",)


def _import_all() -> None:
  for name in _MODULES:
    importlib.import_module(f"cl_jax.methods.{name}")


def get_method(config: ml_collections.ConfigDict) -> Method:
  """Instantiates the method named by `config.method.name`."""
  _import_all()
  return METHODS.get(config.method.name)(config)
