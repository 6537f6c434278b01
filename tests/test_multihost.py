"""Two local processes (4 fake devices each, jax.distributed on localhost) train exactly like one process of 8."""
import json
import os
import socket
import subprocess
import sys

import numpy as np

from cl_jax import train
from tests.harness import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OVERRIDES = {"data.num_train": 256, "data.num_test": 128, "batch_size": 32, "eval.batch_size": 64,
             "total_steps": 3, "log_every": 1, "checkpoint_every": 3}


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def test_two_hosts_match_one_host(tmp_path):
  reference = tiny_config(**OVERRIDES)
  train.train_and_evaluate(reference, str(tmp_path / "one"))

  workdir, port = tmp_path / "two", _free_port()
  cmd = [sys.executable, "-m", "cl_jax.main", "--config=configs/quickstart.py:runlocal", f"--workdir={workdir}",
         *[f"--config.{k}={v}" for k, v in OVERRIDES.items()]]
  procs = []
  for pid in range(2):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu",
           "CL_JAX_COORDINATOR": f"localhost:{port}", "CL_JAX_NUM_PROCESSES": "2", "CL_JAX_PROCESS_ID": str(pid)}
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True))
  outs = [p.communicate(timeout=900) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  assert "8 device(s)" in outs[0][0]

  one, two = _rows(tmp_path / "one"), _rows(workdir)
  losses = lambda rows: [r["loss"] for r in rows if "loss" in r]
  assert len(losses(two)) == 3
  np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
  knn = lambda rows: [r["eval/knn_top1"] for r in rows if "eval/knn_top1" in r]
  assert knn(two) == knn(one) and len(knn(two)) == 2
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3"]
