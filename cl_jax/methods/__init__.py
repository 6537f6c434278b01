"""Methods by name: `get_method(config)` builds the one named by config.method.name."""
from __future__ import annotations

import importlib
import pkgutil

import ml_collections

from cl_jax.methods.base import Method, RunFacts
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


def method_class(config: ml_collections.ConfigDict) -> type[Method]:
  """The class named by `config.method.name` (one line listing the known names if there is none)."""
  _import_all()
  name = config.method.name
  if name not in METHODS and _IMPORT_ERRORS:
    broken = "; ".join(f"cl_jax/methods/{m}.py: {e}" for m, e in sorted(_IMPORT_ERRORS.items()))
    raise ValueError(f"Unknown method '{name}'; known methods: {', '.join(METHODS.names())} "
                     f"(modules that failed to import: {broken}).")
  return METHODS.get(name)


def get_method(config: ml_collections.ConfigDict, run_facts: RunFacts) -> Method:
  """Instantiates the method named by `config.method.name` for a run described by `run_facts` (required: a
  schedule without the run length would silently be wrong)."""
  return method_class(config)(config, run_facts)
