"""SIGTERM (how TPU VMs and SLURM announce preemption) -> checkpoint at the next step boundary, then exit."""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


class PreemptionGuard:
  """Notes a preemption signal; `should_stop()` is then true on every host at the same step."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
    self._requested = False
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for s in signals:
        self._previous[s] = signal.signal(s, self._handle)

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self._requested = True

  def should_stop(self) -> bool:
    """True on every host as soon as any host received the signal."""
    if jax.process_count() == 1:
      return self._requested
    flags = multihost_utils.process_allgather(np.asarray(self._requested, np.int32))
    return bool(np.any(flags))

  def close(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
