"""A run's life: exact resume after SIGKILL, checkpoint on SIGTERM, a corrupt newest checkpoint, config changes."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from cl_jax import train
from tests.harness import tiny_config as base_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config.data.num_train=256", "--config.data.num_test=128", "--config.batch_size=32",
         "--config.eval.every=-1", "--config.log_every=1", "--config.checkpoint_every=2"]


def tiny_config(**overrides):
  return base_config(**{"eval.every": -1, "log_every": 1, "checkpoint_every": 2, **overrides})


def command(workdir, steps, extra=()):
  return [sys.executable, "-m", "cl_jax.main", "--config=configs/quickstart.py:runlocal", f"--workdir={workdir}",
          f"--config.total_steps={steps}", *FLAGS, *extra]


def logged_steps(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  steps = []
  with open(path) as f:
    for line in f:
      try:
        steps.append(json.loads(line)["step"])
      except (json.JSONDecodeError, KeyError):
        pass
  return steps


def wait_for_step(proc, workdir, step, timeout=300):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if proc.poll() is not None:
      return False
    if logged_steps(workdir) and max(logged_steps(workdir)) >= step:
      return True
    time.sleep(0.05)
  raise TimeoutError(f"step {step} not reached")


def final_state(workdir):
  _, state, _, step = train.load_run(workdir)
  return step, jax.tree.map(np.asarray, state)


def assert_trees_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_sigkill_at_random_moments_then_resume_is_bitwise_exact(tmp_path):
  steps = 10
  reference = str(tmp_path / "reference")
  subprocess.run(command(reference, steps), cwd=ROOT, check=True, capture_output=True, timeout=600)
  killed = str(tmp_path / "killed")
  rng = np.random.default_rng(0)
  for _ in range(3):   # kill -9 at random moments, each time after a random number of logged steps
    proc = subprocess.Popen(command(killed, steps), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done = max(logged_steps(killed) or [0])
    if wait_for_step(proc, killed, done + int(rng.integers(1, 4))):
      time.sleep(float(rng.uniform(0, 0.3)))
      proc.send_signal(signal.SIGKILL)
    proc.wait()
  subprocess.run(command(killed, steps), cwd=ROOT, check=True, capture_output=True, timeout=600)
  ref_step, ref_state = final_state(reference)
  step, state = final_state(killed)
  assert step == ref_step == steps
  assert_trees_equal(state, ref_state)
  assert logged_steps(killed) == list(range(1, steps + 1))   # rows of repeated steps were replaced


def test_sigterm_writes_a_checkpoint_and_the_rerun_continues(tmp_path):
  workdir = str(tmp_path / "run")
  proc = subprocess.Popen(command(workdir, 500, ["--config.checkpoint_every=1000"]), cwd=ROOT,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  assert wait_for_step(proc, workdir, 3)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=120)
  assert proc.returncode == 0, err[-2000:]
  line = [l for l in out.splitlines() if l.startswith("Preempted")][0]
  step = int(line.split("at step ")[1].split(";")[0])
  assert os.listdir(os.path.join(workdir, "checkpoints")) == [str(step)]
  out = subprocess.run(command(workdir, step + 2), cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert f"resumed from step {step}" in out.stdout
  assert logged_steps(workdir)[-1] == step + 2


def test_corrupt_newest_checkpoint_falls_back_to_the_previous(tmp_path, caplog):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(total_steps=4), workdir)
  files = [f for f in glob.glob(os.path.join(workdir, "checkpoints", "4", "**", "*"), recursive=True)
           if os.path.isfile(f)]
  for f in files:   # truncate every file of the newest checkpoint
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)
  train.train_and_evaluate(tiny_config(total_steps=5), workdir)
  assert "Checkpoint 4" in caplog.text and "unreadable" in caplog.text
  assert logged_steps(workdir) == [1, 2, 3, 4, 5]


def test_config_changes_on_resume(tmp_path):
  workdir = str(tmp_path)
  train.train_and_evaluate(tiny_config(total_steps=2), workdir)
  with pytest.raises(ValueError, match=r"does not fit this config: model.name \(resnet_tiny -> resnet18\)") as e:
    train.train_and_evaluate(tiny_config(total_steps=4, **{"model.name": "resnet18"}), workdir)
  assert "\n" not in str(e.value)
  with pytest.raises(ValueError, match=r"method.temperature"):
    train.train_and_evaluate(tiny_config(total_steps=4, **{"method.temperature": 0.7}), workdir)
  history = train.train_and_evaluate(tiny_config(total_steps=3, log_every=3), workdir)   # harmless change
  assert np.isfinite(history["loss"]) and logged_steps(workdir)[-1] == 3


def test_online_linear_probe_logs_accuracy_and_never_touches_the_encoder(tmp_path):
  c = tiny_config(total_steps=3, online_probe=True)
  history = train.train_and_evaluate(c, str(tmp_path / "probe"))
  assert 0.0 <= history["train/online_linear_top1"] <= 100.0
  train.train_and_evaluate(tiny_config(total_steps=3), str(tmp_path / "plain"))
  _, with_probe = final_state(str(tmp_path / "probe"))
  _, without = final_state(str(tmp_path / "plain"))
  assert_trees_equal(with_probe["params"], without["params"])   # stop-gradient: the encoder is unchanged
  assert not np.array_equal(with_probe["probe"]["params"]["kernel"], np.zeros_like(with_probe["probe"]["params"]["kernel"]))


def test_online_probe_update_fits_separable_features():
  from cl_jax.eval import online_probe
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 4, 256)
  feats = (np.eye(4)[labels] * 3 + rng.normal(size=(256, 4)) * 0.1).astype(np.float32)
  tx = online_probe.optimizer(1e-1)
  params = online_probe.init(None, 4, 4)
  probe = {"params": params, "opt_state": tx.init(params)}
  step = jax.jit(lambda p: online_probe.update(p, tx, feats, labels, axis_name=None))
  first = None
  for _ in range(30):
    probe, metrics = step(probe)
    first = first if first is not None else float(metrics["train/online_linear_loss"])
  assert float(metrics["train/online_linear_loss"]) < 0.1 * first
  assert float(metrics["train/online_linear_top1"]) == 100.0
