"""What a run reports: metrics.jsonl, TensorBoard scalars and images, and a progress line."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Any

import jax
import numpy as np


def _format_eta(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _truncate_after(path: str, step: int) -> None:
  """Drops rows logged after `step` (a run killed after its last checkpoint repeats those steps)."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    rows = [line for line in f if line.strip()]
  keep = []
  for line in rows:
    try:
      if json.loads(line)["step"] <= step:
        keep.append(line)
    except (json.JSONDecodeError, KeyError):
      continue   # a line half-written by a killed run
  with open(path + ".tmp", "w") as f:
    f.writelines(keep)
  os.replace(path + ".tmp", path)


class Reporter:
  """Appends one JSON object per log step to `<workdir>/metrics.jsonl` and mirrors scalars to TensorBoard.

  Only process 0 writes; every process may call it.
  """

  def __init__(self, workdir: str, total_steps: int, tensorboard: bool = True, stream=None,
               resume_step: int | None = None):
    self.total_steps = total_steps
    self.active = jax.process_index() == 0
    self.stream = stream or sys.stdout
    self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
    self._open_line = False   # a progress bar is on the current terminal line
    self._tb = None
    self._jsonl = None
    if self.active:
      os.makedirs(workdir, exist_ok=True)
      path = os.path.join(workdir, "metrics.jsonl")
      if resume_step is not None:
        _truncate_after(path, resume_step)
      self._jsonl = open(path, "a")
      if tensorboard:
        from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def write(self, step: int, metrics: dict[str, Any]) -> None:
    """Records scalars for `step` (floats; arrays are converted)."""
    if not self.active:
      return
    row = {"step": int(step)}
    row.update({k: float(v) for k, v in metrics.items()})
    self._jsonl.write(json.dumps(row) + "\n")
    self._jsonl.flush()
    if self._tb is not None:
      for k, v in row.items():
        if k != "step":
          self._tb.add_scalar(k, v, step)
      self._tb.flush()

  def image(self, tag: str, step: int, image: np.ndarray) -> None:
    """An HxWx3 uint8 image to TensorBoard."""
    if self.active and self._tb is not None:
      self._tb.add_image(tag, image, step, dataformats="HWC")

  def progress(self, step: int, loss: float, lr: float, images_per_sec: float, seconds_per_step: float,
               data_wait_frac: float = 0.0) -> None:
    """One line of progress: step, loss, lr, throughput, the time waiting for data when it is 5% or more, ETA."""
    if not self.active:
      return
    eta = _format_eta((self.total_steps - step) * seconds_per_step)
    waiting = f" | data wait {data_wait_frac:.0%}" if data_wait_frac >= 0.05 else ""
    text = (f"step {step:>6}/{self.total_steps} | loss {loss:.4f} | lr {lr:.4g} | "
            f"{images_per_sec:,.0f} img/s{waiting} | eta {eta}")
    if self._tty:
      done = int(30 * step / max(self.total_steps, 1))
      end = "\n" if step >= self.total_steps else ""
      print(f"\r[{'#' * done}{'.' * (30 - done)}] {text}", end=end, file=self.stream, flush=True)
      self._open_line = not end
    else:
      print(text, file=self.stream, flush=True)

  def say(self, text: str) -> None:
    if self.active:
      print(("\n" if self._open_line else "") + text, file=self.stream, flush=True)
      self._open_line = False

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


class Throughput:
  """Images/s, seconds/step and the fraction of wall time spent waiting for the input pipeline, between two log
  points, measured on the host after the device finished."""

  def __init__(self):
    self._t, self._step, self._wait = time.perf_counter(), None, 0.0

  def reset(self, step: int) -> None:
    self._t, self._step, self._wait = time.perf_counter(), step, 0.0

  def waited(self, seconds: float) -> None:
    """Adds the time one `next(batches)` took (the host blocked on decoding, batching and the copy to devices)."""
    self._wait += seconds

  def measure(self, step: int, batch_size: int) -> tuple[float, float, float]:
    """(images/s, seconds/step, data_wait_frac) since the last reset or measure."""
    now = time.perf_counter()
    steps = max(step - (self._step if self._step is not None else step - 1), 1)
    dt = max(now - self._t, 1e-9)
    frac = min(self._wait / dt, 1.0)
    self._t, self._step, self._wait = now, step, 0.0
    return steps * batch_size / dt, dt / steps, frac
