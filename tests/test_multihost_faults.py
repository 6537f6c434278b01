"""Two local processes (4 fake devices each, jax.distributed on localhost) under faults: a SIGTERM to ONE host makes
both checkpoint the same step through JAX's preemption sync manager and exit, and the restart resumes there; a
peer killed outright makes the survivor stop within the heartbeat timeout with one line naming the lost process."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {"data.num_train": 256, "data.num_test": 128, "batch_size": 32, "eval.batch_size": 64,
             "eval.every": -1, "log_every": 1, "checkpoint_every": 1000}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _launch(workdir, total_steps, extra=()):
  port = _free_port()
  cmd = [sys.executable, "-m", "cl_jax.main", "--config=configs/quickstart.py:runlocal", f"--workdir={workdir}",
         *[f"--config.{k}={v}" for k, v in {**OVERRIDES, "total_steps": total_steps}.items()], *extra]
  procs = []
  for pid in range(2):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "CL_JAX_COORDINATOR": f"localhost:{port}", "CL_JAX_NUM_PROCESSES": "2", "CL_JAX_PROCESS_ID": str(pid)}
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  return procs


def _last_step(workdir) -> int:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return 0
  with open(path) as f:
    steps = [json.loads(line).get("step", 0) for line in f if line.strip().endswith("}")]
  return max(steps, default=0)


def _gist(err: str) -> str:
  """The telling lines of a process's stderr (errors, fatal checks), without Gloo chatter and module lists."""
  keep = [l for l in err.splitlines() if l and not l[0].isspace() and "Gloo" not in l and "Extension modules" not in l]
  return "\n".join(keep[-15:])


def _wait_for_step(workdir, step, procs, timeout=600):
  end = time.time() + timeout
  while _last_step(workdir) < step:
    if any(p.poll() is not None for p in procs):
      outs = [p.communicate() for p in procs]
      pytest.fail(f"a process exited before step {step}: {[_gist(o[1]) for o in outs]}")
    if time.time() > end:
      pytest.fail(f"no step {step} within {timeout} s")
    time.sleep(0.2)


@pytest.mark.multiprocess
def test_sigterm_to_one_host_then_a_killed_peer_both_resume(tmp_path):
  """One scenario (each launch compiles twice): SIGTERM to host 1 -> both hosts checkpoint the same step S and exit
  0; the restart resumes at S; SIGKILL to host 1 -> host 0 exits 3 with one line naming process 1 and the last
  common checkpoint C; the restart of both resumes at C."""
  # 15 s: with 6 s both hosts once timed out while compiling, under the full suite on 2 loaded cores.
  workdir, extra = str(tmp_path), ("--config.parallel.peer_timeout_seconds=15",)
  procs = _launch(workdir, 2000, extra)
  _wait_for_step(workdir, 3, procs)
  procs[1].send_signal(signal.SIGTERM)
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  stops = []
  for out, _ in outs:   # every host says where it stopped (process 1 with its index)
    line = [l for l in out.splitlines() if "Preempted: checkpoint written at step" in l]
    assert line, out[-2000:]
    stops.append(int(line[0].split("step ")[1].split(";")[0]))
  assert stops[0] == stops[1] and 3 <= stops[0] < 2000
  assert str(stops[0]) in os.listdir(os.path.join(workdir, "checkpoints"))

  procs = _launch(workdir, 2000, extra + ("--config.checkpoint_every=2",))
  _wait_for_step(workdir, stops[0] + 4, procs)
  procs[1].kill()                                          # SIGKILL: no chance to say goodbye
  out, err = procs[0].communicate(timeout=90)              # JAX's own heartbeat would abort only after 100 s
  procs[1].communicate()
  assert f"resumed from step {stops[0]}" in out
  assert procs[0].returncode == 3, err[-3000:]
  lines = [l for l in err.splitlines() if l.startswith("error:")]
  assert len(lines) == 1 and "process 1 of 2 sent no heartbeat for 15 s" in lines[0], err[-3000:]
  assert "Traceback" not in err
  common = int(lines[0].split("the last checkpoint every host finished is step ")[1].split(";")[0])
  assert common > stops[0] and str(common) in os.listdir(os.path.join(workdir, "checkpoints"))

  procs = _launch(workdir, common + 2, extra)
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, e) in zip(procs, outs):
    assert p.returncode == 0, e[-3000:]
  assert f"resumed from step {common}" in outs[0][0]
  assert _last_step(workdir) == common + 2


def test_one_process_needs_no_watch_and_bad_settings_are_one_line():
  from cl_jax import peers, preemption
  from tests.harness import one_line_error
  watch = peers.PeerWatch(5.0, lambda: None)
  assert not watch.active                                   # one process: no heartbeat thread
  with pytest.raises(RuntimeError, match="boom"):
    watch.wait_for_verdict(RuntimeError("boom"))            # not a lost peer: the error itself
  one_line_error(lambda: peers.PeerWatch(0, lambda: None), "peer_timeout_seconds=0", "must be > 0")
  one_line_error(lambda: preemption.PreemptionGuard(check_every=0), "check_every=0", ">= 1")
  guard = preemption.PreemptionGuard()
  try:
    assert guard.mode == "single" and not guard.should_stop(1)
    os.kill(os.getpid(), signal.SIGTERM)
    assert guard.should_stop(2)
  finally:
    guard.close()
