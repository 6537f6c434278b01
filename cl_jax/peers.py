"""A dead peer does not hang the survivors: a heartbeat over jax.distributed's key-value store, one line naming the
lost process, and an exit within `timeout` seconds.

Every process of a multi-host run bumps its counter `cl_jax/heartbeat/<id>` every timeout/4 s from a daemon thread
and reads the others'; a counter that has not moved for `timeout` s (this host's clock only), or a store that no
longer answers (the coordinator, process 0, is gone), ends the run on this host with one `error:` line and exit code
3. A step that fails on a dead peer's collective (Gloo on CPU raises at once; TPU collectives would hang) waits for
that verdict instead of printing a traceback. JAX's own heartbeat (jax.distributed.initialize's
heartbeat_timeout_seconds, set longer by parallel.initialize_distributed) would abort the process with a fatal
stack dump and no word of which process died; this one fires first. Orbax commits a checkpoint atomically, so the
restart of every process resumes from the last checkpoint all of them finished; the line names that step (the
newest finalised on disk: a save the dead peer never let commit is not counted).
"""
from __future__ import annotations

import os
import sys
import threading
import time
from typing import Callable

import jax

EXIT_CODE = 3


def _client():
  from jax._src import distributed  # pylint: disable=g-import-not-at-top
  return distributed.global_state.client


class PeerWatch:
  """Heartbeat of this process and watch over the others' (a no-op on one process). `step` is set by the loop."""

  def __init__(self, timeout: float, last_checkpoint: Callable[[], int | None]):
    if not timeout > 0:
      raise ValueError(f"parallel.peer_timeout_seconds={timeout}: must be > 0 (seconds without a heartbeat before a "
                       "peer counts as lost).")
    self.timeout, self.last_checkpoint, self.step = float(timeout), last_checkpoint, 0
    self.me, self.count = jax.process_index(), jax.process_count()
    self.verdict: str | None = None
    self._stop = threading.Event()
    self._thread = None
    if self.count > 1 and _client() is not None:
      self._thread = threading.Thread(target=self._run, name="cl_jax-peer-watch", daemon=True)
      self._thread.start()

  @property
  def active(self) -> bool:
    return self._thread is not None

  def _run(self) -> None:
    client, beat = _client(), 0
    seen = {p: (None, time.monotonic()) for p in range(self.count) if p != self.me}
    while not self._stop.wait(self.timeout / 4):
      beat += 1
      try:
        client.key_value_set(f"cl_jax/heartbeat/{self.me}", str(beat), allow_overwrite=True)
        now = time.monotonic()
        for p, (value, since) in seen.items():
          current = _peek(client, p)
          seen[p] = (current, now) if current != value else (value, since)
        lost = sorted(p for p, (_, since) in seen.items() if now - since > self.timeout)
        if lost:
          self._end(f"process{'es' if len(lost) > 1 else ''} {', '.join(map(str, lost))} of {self.count} sent no "
                    f"heartbeat for {self.timeout:g} s")
      except Exception as e:  # noqa: BLE001 - the store itself is gone: the coordinator died
        if self._stop.is_set():
          return
        self._end(f"process 0 of {self.count} (the coordinator) no longer answers ({type(e).__name__})")

  def _end(self, what: str) -> None:
    last = self.last_checkpoint()
    where = f"the last checkpoint every host finished is step {last}" if last is not None else "no checkpoint yet"
    self.verdict = (f"error: {what}; process {self.me} stops at step {self.step}; {where}; restart every process "
                    "with the same command to resume.")
    print(self.verdict, file=sys.stderr, flush=True)
    os._exit(EXIT_CODE)   # a watchdog: the survivors' collectives would hang or abort with no word of who died

  def wait_for_verdict(self, error: BaseException) -> None:
    """After a step failed on a multi-host run: wait (at most ~2 x timeout) for the watch to name the lost peer and
    exit; if every peer still beats, the failure was not a lost peer and `error` is re-raised."""
    if not self.active:
      raise error
    time.sleep(2 * self.timeout + 1)
    raise error

  def close(self) -> None:
    self._stop.set()


def _peek(client, process: int) -> str | None:
  """Process `process`'s heartbeat counter; None before its first beat (the store answers NOT_FOUND)."""
  try:
    return client.key_value_try_get(f"cl_jax/heartbeat/{process}")
  except Exception as e:  # noqa: BLE001 - jaxlib raises a generic error; only NOT_FOUND means "not yet"
    if "NOT_FOUND" in str(e) or "not found" in str(e).lower():
      return None
    raise
