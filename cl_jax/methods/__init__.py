"""Methods by name: `get_method(config)` builds the one named by config.method.name."""
from __future__ import annotations

import importlib
import pkgutil

import ml_collections

from cl_jax.methods.base import Method
from cl_jax.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")



def _import_all() -> None:
  """Imports every module of this package; each method file registers its class on import."""
  for info in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{info.name}")


def get_method(config: ml_collections.ConfigDict, *, total_steps: int = 1, steps_per_epoch: int = 1) -> Method:
  """Instantiates the method named by `config.method.name`; schedules (momentum, temperature) see the run length."""
  _import_all()
  method = METHODS.get(config.method.name)(config)
  method.total_steps, method.steps_per_epoch = int(total_steps), int(steps_per_epoch)
  return method
