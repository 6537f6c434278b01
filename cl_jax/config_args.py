"""Parses a config file's argument string, e.g. `configs/x.py:runlocal,method=byol,batch=256`."""
from __future__ import annotations

import importlib.util
import os
import sys
from types import ModuleType
from typing import Any

import ml_collections


def _convert(value: str, default: Any, key: str) -> Any:
  if isinstance(default, bool):
    if value.lower() in ("", "1", "true", "yes"):
      return True
    if value.lower() in ("0", "false", "no"):
      return False
    raise ValueError(f"Config argument {key}={value!r} must be true or false.")
  try:
    return type(default)(value)
  except ValueError:
    raise ValueError(f"Config argument {key}={value!r} must be a {type(default).__name__}.") from None


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """`a=1,flag` -> ConfigDict(a=1, flag=True) typed by `defaults`; an unknown key fails listing the known ones."""
  out = dict(defaults)
  for item in filter(None, (arg or "").split(",")):
    key, _, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"Unknown config argument '{key}'; known: {', '.join(sorted(defaults))}.")
    out[key] = _convert(value.strip() if "=" in item else "true", defaults[key], key)
  return ml_collections.ConfigDict(out)


def load_sibling(anchor: str, name: str) -> ModuleType:
  """Imports `name` (e.g. "quickstart_methods.clip") from the folder of the config file `anchor`.

  Config files are loaded by path (`--config=configs/x.py`), so they may not rely on the repository root being on
  sys.path (a notebook or a run from another directory); they import each other through this instead.
  """
  path = os.path.join(os.path.dirname(os.path.abspath(anchor)), *name.split(".")) + ".py"
  key = "cl_jax_config." + os.path.splitext(os.path.relpath(path, "/"))[0].replace(os.sep, ".")
  if key not in sys.modules:
    if not os.path.exists(path):
      raise ValueError(f"No config module {name!r}: {path} does not exist.")
    spec = importlib.util.spec_from_file_location(key, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[key] = module
    spec.loader.exec_module(module)
  return sys.modules[key]
