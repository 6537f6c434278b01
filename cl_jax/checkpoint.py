"""Orbax checkpoints of the whole run: train state (params, optimizer, method state, step) and data iterator."""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

# Method-state keys older versions used for what is now method_state["ema"] (README.md, Changelog).
_OLD_EMA_KEYS = frozenset({"key_params", "key_batch_stats", "target", "teacher"})


class Checkpointer:
  """Keeps the last `keep` checkpoints in `<workdir>/checkpoints`; saves are atomic (written, then renamed)."""

  def __init__(self, directory: str, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=async_save),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def committed_step(self) -> int | None:
    """The newest checkpoint finalised on disk (the step a restart resumes from), or None. Unlike latest_step,
    which counts a save as soon as it starts, an async save still being written (or whose commit a dead peer
    blocks) is not counted."""
    try:
      steps = ocp.path.step.checkpoint_steps(self.directory)
    except (FileNotFoundError, ValueError):
      return None
    return max(steps, default=None)

  def save(self, step: int, state: Any, data_state: Any) -> None:
    """Starts writing checkpoint `step` (asynchronously; the run continues meanwhile).

    `data_state` is the data iterator's JSON-able state (grain's), or None.
    """
    data = {"iterator": data_state}
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      data=ocp.args.JsonSave(data)), force=True)

  def restore(self, target: Any) -> tuple[int, Any, Any] | None:
    """The newest readable checkpoint as (step, state laid out like `target`, data state), or None.

    An unreadable newest checkpoint is reported in one line and the one before it is used; one whose stored tree
    has other keys than `target` (the state layout changed) is an error naming both key lists.
    """
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    for step in reversed(self.all_steps()):
      try:
        restored = self._manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), data=ocp.args.JsonRestore()))
      except Exception as e:  # noqa: BLE001 - any failure to read means: fall back to the previous one
        mismatch = self._layout_mismatch(step, target)
        if mismatch:
          raise ValueError(mismatch) from e
        log.warning("Checkpoint %d in %s is unreadable (%s: %s); moved it to %s and trying the previous one.",
                    step, self.directory, type(e).__name__, str(e).splitlines()[0][:200], self._set_aside(step))
        continue
      return step, restored["state"], restored["data"]["iterator"]
    return None

  def _layout_mismatch(self, step: int, target: Any) -> str | None:
    """One line naming the shallowest dict whose stored keys differ from `target`'s, or None (same keys/unknown)."""
    try:
      stored = self._manager.item_metadata(step)["state"]
    except Exception:  # noqa: BLE001 - no readable metadata: an unreadable checkpoint, not a layout change
      return None
    diff = _first_key_difference(getattr(stored, "tree", stored), target)
    if diff is None:
      return None
    path, have, want = diff
    if path == "method_state" and _OLD_EMA_KEYS & set(have):
      why = ("the method state layout changed: moco_v1/moco_v2/byol/moco_v3/dino now keep the EMA copy of the online "
             "network as method_state['ema'] (README.md, Changelog), and their checkpoints written before that do "
             "not load; retrain in a fresh workdir or convert the checkpoint.")
    else:
      why = "the state layout changed; resume with the code and config that wrote it, or train in a fresh workdir."
    return (f"Checkpoint {step} in {self.directory} has {path} keys [{', '.join(have)}], this version expects "
            f"[{', '.join(want)}]; {why}")

  def _set_aside(self, step: int) -> str:
    """Moves an unreadable checkpoint out of the way (kept for inspection) so the step can be saved again."""
    target = os.path.join(self.directory + "_unreadable", f"{step}-{int(time.time())}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(target), exist_ok=True)
      os.replace(os.path.join(self.directory, str(step)), target)
    self._manager.reload()
    return target

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _first_key_difference(stored: Any, expected: Any) -> tuple[str, list[str], list[str]] | None:
  """(dotted path, stored keys, expected keys) of the shallowest pair of dicts whose keys differ, or None."""
  level = [((), stored, expected)]
  while level:
    deeper = []
    for path, s, e in level:
      if not (isinstance(s, Mapping) and isinstance(e, Mapping)):
        continue
      if set(map(str, s)) != set(map(str, e)):
        return ".".join(path) or "state", sorted(map(str, s)), sorted(map(str, e))
      deeper += [(path + (str(k),), s[k], e[k]) for k in e]
    level = deeper
  return None


class BestCheckpointer(Checkpointer):
  """The single best checkpoint by one eval metric (e.g. eval/knn_top1), in its own directory
  (`<workdir>/checkpoints_best`), next to the last-N checkpoints; survives restarts (orbax stores the metric)."""

  def __init__(self, directory: str, metric: str, mode: str = "max"):
    if mode not in ("max", "min"):
      raise ValueError(f"best_metric_mode must be 'max' or 'min', got '{mode}'.")
    self.directory, self.metric, self.mode = os.path.abspath(directory), metric, mode
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=1, create=True, best_fn=lambda m: m[metric],
                                             best_mode=mode, enable_async_checkpointing=False),
        item_names=("state", "data"))

  def best(self) -> tuple[int, float] | None:
    """(step, metric value) of the kept checkpoint, or None."""
    step = self._manager.best_step()
    if step is None:
      return None
    return step, float(self._manager.metrics(step)[self.metric])

  def maybe_save(self, step: int, state: Any, data_state: Any, metrics: dict[str, float]) -> bool:
    """Saves `state` if `metrics[metric]` beats the kept checkpoint; returns whether it did."""
    if self.metric not in metrics:
      raise ValueError(f"best_metric '{self.metric}' is not among the eval metrics {sorted(metrics)}; "
                       "set config.best_metric to one of them (or '' to keep no best checkpoint).")
    value, best = float(metrics[self.metric]), self.best()
    if best is not None and (value <= best[1] if self.mode == "max" else value >= best[1]):
      return False
    self._manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                      data=ocp.args.JsonSave({"iterator": data_state})),
                       metrics={self.metric: value}, force=True)
    self._manager.wait_until_finished()
    return True
