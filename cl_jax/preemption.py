"""SIGTERM (how TPU VMs and SLURM announce preemption) -> checkpoint at the same step boundary on every host, then exit.

Multi-host runs use JAX's own preemption sync manager (`multihost_utils.reached_preemption_sync_point`, as orbax and
big_vision do): its notifier catches SIGTERM on any host and, in the background, agrees on the safe step (the
largest step any host has reached, plus one); asking at each step is a local lookup, not a host round trip, so
async dispatch keeps running ahead. Where that service is off (jax_enable_preemption_service=False), hosts share
their flags with one all-gather every `check_every` steps, the same steps on every host. One process needs neither:
a Python handler sets a flag.
"""
from __future__ import annotations

import signal
import threading

import jax
import numpy as np
from jax.experimental import multihost_utils


def sync_manager_available() -> bool:
  """Whether this multi-host run has JAX's preemption sync manager (jax.distributed with the preemption service)."""
  try:
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  state = getattr(distributed, "global_state", None)
  return getattr(state, "client", None) is not None and getattr(state, "preemption_sync_manager", None) is not None


class PreemptionGuard:
  """Notes a preemption signal; `should_stop(step)` is then true on every host at the same step.

  `should_stop` must be called after every step with the step count reached (the same sequence on every host)."""

  def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,), check_every: int = 10):
    if int(check_every) < 1:
      raise ValueError(f"preemption check_every={check_every}: must be >= 1 (steps between flag exchanges).")
    self.check_every = int(check_every)
    self._requested = False
    self._previous = {}
    self.mode = ("single" if jax.process_count() == 1 else
                 "sync_manager" if sync_manager_available() else "allgather")
    # The sync manager's notifier owns SIGTERM; a Python handler installed on top would hide the signal from it.
    if self.mode != "sync_manager" and threading.current_thread() is threading.main_thread():
      for s in signals:
        self._previous[s] = signal.signal(s, self._handle)

  def _handle(self, signum, frame) -> None:  # pylint: disable=unused-argument
    self._requested = True

  def should_stop(self, step: int) -> bool:
    """True on every host at the same step once any host received the signal."""
    if self.mode == "single":
      return self._requested
    if self.mode == "sync_manager":
      return bool(multihost_utils.reached_preemption_sync_point(int(step)))
    if int(step) % self.check_every:
      return False
    flags = multihost_utils.process_allgather(np.asarray(self._requested, np.int32))
    return bool(np.any(flags))

  def close(self) -> None:
    for s, handler in self._previous.items():
      signal.signal(s, handler)
    self._previous = {}
