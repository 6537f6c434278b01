"""config.init_from: start a run from the backbone of another cl_jax run (its latest checkpoint) instead of a
random one, e.g. MaskCon from a SimCLR or supervised run as the official code starts from ImageNet weights.

Only the image backbone moves (heads, queues and optimizer moments start fresh). Every copy of it in the new
state is replaced: the online network's params and BatchNorm statistics, and EMA / key-encoder copies (at step
0 those are copies of the online network anyway). The architectures must match leaf for leaf; the first leaf that
differs is named."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

BACKBONE = "backbone"


def backbone_paths(tree: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
  """The key paths of every dict node named 'backbone' in a nested dict (not below another one)."""
  if not isinstance(tree, dict):
    return []
  out = []
  for key, sub in tree.items():
    if key == BACKBONE and isinstance(sub, dict):
      out.append(prefix + (key,))
    else:
      out.extend(backbone_paths(sub, prefix + (str(key),)))
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


def source_backbone(state: Any) -> dict[str, Any]:
  """{"params", "batch_stats"} of the online backbone of a restored train state (the first 'backbone' of each)."""
  params = backbone_paths(state["params"])
  if not params:
    raise ValueError("the init_from run's parameters have no 'backbone'; point config.init_from at a cl_jax run "
                     "of an image method.")
  stats_tree = state["method_state"].get("batch_stats", {}) if isinstance(state["method_state"], dict) else {}
  stats = backbone_paths(stats_tree)
  return {"params": _get(state["params"], params[0]), "batch_stats": _get(stats_tree, stats[0]) if stats else {}}


def replace_backbones(state: Any, source: dict[str, Any], where: str) -> tuple[Any, int]:
  """`state` with every backbone copy replaced by `source`'s (same sharding as the leaves it replaces), and the
  number of copies replaced. A params-like backbone that does not match fails in one line naming the leaf."""
  count = 0
  new = dict(state)
  for section in ("params", "method_state"):
    tree = state[section]
    for path in backbone_paths(tree):
      old = _get(tree, path)
      kind = "batch_stats" if "batch_stats" in path else "params"
      value = source[kind]
      if kind == "batch_stats" and not value:
        continue                                      # a backbone without BatchNorm: nothing to copy
      if (diff := first_difference(old, value)) is not None:
        raise ValueError(f"config.init_from={where}: its backbone does not fit this model's "
                         f"({section}/{'/'.join(path)}: {diff}); set config.model as in that run.")
      placed = jax.tree.map(lambda o, v: jax.device_put(np.asarray(v, dtype=o.dtype), o.sharding), old, value)
      tree = _set(tree, path, placed)
      count += 1
    new[section] = tree
  if count == 0:
    raise ValueError(f"config.init_from={where}: this method's state has no 'backbone' to initialise.")
  return new, count


def initialise(state: Any, workdir: str) -> tuple[Any, str]:
  """The new run's state with the backbone of `workdir`'s latest checkpoint, and a line saying what was loaded."""
  from cl_jax import train  # pylint: disable=g-import-not-at-top  (train imports this module)
  src_run, src_state, _, step = train.load_run(workdir)
  state, count = replace_backbones(state, jax.device_get(source_backbone(src_state)), workdir)
  return state, (f"initialised {count} backbone copies from {workdir} ({src_run.config.method.name}, "
                 f"{src_run.config.model.name}, step {step})")
