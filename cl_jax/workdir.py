"""A run's workdir: its config.json, and whether a new config can resume the run recorded there."""
from __future__ import annotations

import json
import logging
import os
from typing import Any

import jax
import ml_collections

log = logging.getLogger(__name__)

# Changing one of these makes a checkpoint unusable (other shapes, another method, another data order).
UNUSABLE_IF_CHANGED = ("method", "model", "dataset", "batch_size", "seed", "optim.name", "optim.grad_accum_steps",
                       "online_probe", "data.image_size", "data.num_train", "data.label_noise", "data.coarse_labels",
                       "data.discovery", "data.label_seed")


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict):
    out = {}
    for k, v in tree.items():
      out.update(_flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: tree}


def config_path(workdir: str) -> str:
  return os.path.join(workdir, "config.json")


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with (its config.json)."""
  path = config_path(workdir)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{workdir} holds no run (no config.json); train into it first with "
                            f"python -m cl_jax.main --config=... --workdir={workdir}.")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def changed_keys(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
  """Dotted keys whose values differ between two config dicts (tuples and lists compare equal)."""
  a, b = _flatten(json.loads(json.dumps(old))), _flatten(json.loads(json.dumps(new)))
  return sorted(k for k in set(a) | set(b) if a.get(k, "<unset>") != b.get(k, "<unset>"))


def check_resumable(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Fails in one line when the workdir's run cannot continue under `config`; logs harmless changes."""
  if not os.path.exists(config_path(workdir)):
    return
  with open(config_path(workdir)) as f:
    old = json.load(f)
  new = json.loads(config.to_json_best_effort())
  changed = changed_keys(old, new)
  bad = [k for k in changed if any(k == p or k.startswith(p + ".") for p in UNUSABLE_IF_CHANGED)]
  if bad:
    flat_old, flat_new = _flatten(old), _flatten(new)
    detail = ", ".join(f"{k} ({flat_old.get(k, '<unset>')} -> {flat_new.get(k, '<unset>')})" for k in bad[:6])
    raise ValueError(f"{workdir} holds a run whose checkpoint does not fit this config: {detail}; "
                     "use a new --workdir, or restore those values to resume.")
  if changed:
    log.warning("Resuming %s with changed settings: %s.", workdir, ", ".join(changed))


def write_config(workdir: str, config: ml_collections.ConfigDict) -> None:
  """Writes config.json atomically (process 0 only)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  tmp = config_path(workdir) + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json_best_effort(indent=2))
  os.replace(tmp, config_path(workdir))


def write_resolved(workdir: str, sections: dict[str, Any]) -> None:
  """Writes resolved.json (process 0): every declared field of each section with the value the run uses, defaults
  included, so a run's effective settings are on record even where its config left them unset."""
  write_json(workdir, "resolved.json", sections)


def write_json(workdir: str, name: str, obj: Any) -> None:
  """Writes <workdir>/<name> as JSON atomically (process 0; values JSON cannot hold as their repr)."""
  if jax.process_index() != 0:
    return
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, name)
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True, default=repr)
  os.replace(path + ".tmp", path)
