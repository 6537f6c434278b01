"""config.init_from: start a run from the backbone of another cl_jax run (its latest checkpoint) instead of a
random one, e.g. MaskCon from a SimCLR or supervised run as the official code starts from ImageNet weights.

Only the image backbone moves (heads, queues and optimizer moments start fresh). Every copy of it in the new
state is replaced: the online network's params and BatchNorm statistics, and EMA / key-encoder copies (at step
0 those are copies of the online network anyway). The architectures must match leaf for leaf; the first leaf that
differs is named. A method that starts from more than the backbone names the parts in `init_from_parts` (e.g.
LSeg and PACL: ("backbone", "text", "image_projection"), a CLIP run's two towers and its image projection)."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

BACKBONE = "backbone"


def backbone_paths(tree: Any, prefix: tuple[str, ...] = (), name: str = BACKBONE) -> list[tuple[str, ...]]:
  """The key paths of every dict node called `name` in a nested dict (not below another one)."""
  if not isinstance(tree, dict):
    return []
  out = []
  for key, sub in tree.items():
    if key == name and isinstance(sub, dict):
      out.append(prefix + (key,))
    else:
      out.extend(backbone_paths(sub, prefix + (str(key),), name))
  return out


def _get(tree: Any, path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: tuple[str, ...], value: Any) -> dict:
  """A copy of the nested dict `tree` with the node at `path` replaced."""
  if not path:
    return value
  return {**tree, path[0]: _set(tree[path[0]], path[1:], value)}


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
  return {jax.tree_util.keystr(p): tuple(np.shape(x)) for p, x in jax.tree_util.tree_leaves_with_path(tree)}


def first_difference(want: Any, got: Any) -> str | None:
  """None when the two trees have the same leaves and shapes, else a phrase naming the first difference."""
  a, b = _shapes(want), _shapes(got)
  for key in sorted(set(a) | set(b)):
    if key not in b:
      return f"{key} is missing from the source"
    if key not in a:
      return f"the source has an extra {key}"
    if a[key] != b[key]:
      return f"{key} has shape {b[key]} in the source, {a[key]} here"
  return None


def source_backbone(state: Any, name: str = BACKBONE) -> dict[str, Any]:
  """{"params", "batch_stats"} of the online `name` part of a restored train state (the first of each)."""
  params = backbone_paths(state["params"], name=name)
  if not params:
    raise ValueError(f"the init_from run's parameters have no '{name}'; point config.init_from at a cl_jax run "
                     f"{'of an image method' if name == BACKBONE else 'that has one (a CLIP run for its towers)'}.")
  stats_tree = state["method_state"].get("batch_stats", {}) if isinstance(state["method_state"], dict) else {}
  stats = backbone_paths(stats_tree, name=name)
  return {"params": _get(state["params"], params[0]), "batch_stats": _get(stats_tree, stats[0]) if stats else {}}


def replace_backbones(state: Any, source: dict[str, Any], where: str, name: str = BACKBONE) -> tuple[Any, int]:
  """`state` with every copy of the `name` part replaced by `source`'s (same sharding as the leaves it replaces),
  and the number of copies replaced. A params-like part that does not match fails in one line naming the leaf."""
  count = 0
  new = dict(state)
  for section in ("params", "method_state"):
    tree = state[section]
    for path in backbone_paths(tree, name=name):
      old = _get(tree, path)
      kind = "batch_stats" if "batch_stats" in path else "params"
      value = source[kind]
      if kind == "batch_stats" and not value:
        continue                                      # a backbone without BatchNorm: nothing to copy
      if (diff := first_difference(old, value)) is not None:
        raise ValueError(f"config.init_from={where}: its {name} does not fit this model's "
                         f"({section}/{'/'.join(path)}: {diff}); set config.model (and text_model) as in that run.")
      placed = jax.tree.map(lambda o, v: jax.device_put(np.asarray(v, dtype=o.dtype), o.sharding), old, value)
      tree = _set(tree, path, placed)
      count += 1
    new[section] = tree
  if count == 0:
    raise ValueError(f"config.init_from={where}: this method's state has no '{name}' to initialise.")
  return new, count


def initialise(state: Any, workdir: str, parts: tuple[str, ...] = (BACKBONE,)) -> tuple[Any, str]:
  """The new run's state with the `parts` (default: the backbone) of `workdir`'s latest checkpoint, and a line
  saying what was loaded."""
  import os  # pylint: disable=g-import-not-at-top

  from cl_jax import train, workdir as workdir_lib  # pylint: disable=g-import-not-at-top  (train imports this)
  if not os.path.exists(workdir_lib.config_path(workdir)):
    raise ValueError(f"config.init_from={workdir} holds no cl_jax run (no config.json); train that run first or "
                     "fix the path.")
  src_run, src_state, _, step = train.load_run(workdir)
  counts = []
  for name in parts:
    state, count = replace_backbones(state, jax.device_get(source_backbone(src_state, name)), workdir, name)
    counts.append(f"{count} {name} cop{'y' if count == 1 else 'ies'}")
  return state, (f"initialised {', '.join(counts)} from {workdir} ({src_run.config.method.name}, "
                 f"{src_run.config.model.name}, step {step})")
