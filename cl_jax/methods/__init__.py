"""Methods by name: `get_method(config)` builds the one named by config.method.name."""
from __future__ import annotations

import importlib
import pkgutil

import ml_collections

from cl_jax.methods.base import Method
from cl_jax.registry import Registry

METHODS: Registry[type[Method]] = Registry("method")



_IMPORT_ERRORS: dict[str, str] = {}


def _import_all() -> None:
  """Imports every module of this package; each method file registers its class on import.

  A module that fails to import is remembered, not fatal: it only matters if the requested method is missing.
  """
  for info in pkgutil.iter_modules(__path__):
    if info.name in _IMPORT_ERRORS:
      continue
    try:
      importlib.import_module(f"{__name__}.{info.name}")
    except Exception as e:  # noqa: BLE001 - reported by get_method when it matters
      _IMPORT_ERRORS[info.name] = f"{type(e).__name__}: {e}"


def get_method(config: ml_collections.ConfigDict, *, total_steps: int = 1, steps_per_epoch: int = 1,
               num_train: int = 0) -> Method:
  """Instantiates the method named by `config.method.name`; schedules (momentum, temperature) see the run length,
  memory banks the training split's size."""
  _import_all()
  name = config.method.name
  if name not in METHODS and _IMPORT_ERRORS:
    broken = "; ".join(f"cl_jax/methods/{m}.py: {e}" for m, e in sorted(_IMPORT_ERRORS.items()))
    raise ValueError(f"Unknown method '{name}'; known methods: {', '.join(METHODS.names())} "
                     f"(modules that failed to import: {broken}).")
  method = METHODS.get(name)(config)
  method.total_steps, method.steps_per_epoch, method.num_train = int(total_steps), int(steps_per_epoch), int(num_train)
  return method
