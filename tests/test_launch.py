"""The launch scripts' --dry-run: the exact commands each would run (worker selector, environment, resume, SIGTERM)."""
from __future__ import annotations

import os
import shlex
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(script: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(["bash", os.path.join(ROOT, "launch", script), *args], capture_output=True, text=True,
                        cwd=ROOT, timeout=60, check=False)


def commands(out: str) -> list[list[str]]:
  """The printed command lines (comments dropped), split as a shell would."""
  return [shlex.split(line) for line in out.splitlines() if line.strip() and not line.startswith("#")]


def test_tpu_pod_ships_the_code_and_runs_on_every_worker():
  out = dry_run("tpu_pod.sh", "--dry-run", "my-tpu", "us-central2-b", "configs/simclr_imagenet.py", "gs://b/runs/r50",
                "--config.batch_size=4096")
  assert out.returncode == 0, out.stderr
  archive, scp, ssh = commands(out.stdout)
  assert archive[:2] == ["git", "-C"] and archive[3:] == ["archive", "--format=tar.gz", "-o", "/tmp/cl_jax_src.tar.gz",
                                                          "HEAD"]
  assert scp[:5] == ["gcloud", "compute", "tpus", "tpu-vm", "scp"] and "--worker=all" in scp and "my-tpu:" in scp
  assert ssh[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
  assert "--zone=us-central2-b" in ssh and "--worker=all" in ssh
  remote = ssh[ssh.index("--command") + 1]
  run = remote.split(" && ")[-1]
  assert shlex.split(run) == ["CL_JAX_DISTRIBUTED=1", "python", "-m", "cl_jax.main", "--config=configs/simclr_imagenet.py",
                              "--workdir=gs://b/runs/r50", "--config.batch_size=4096"]
  assert "jax[tpu]" in remote and "rerun exactly this command" in out.stdout
  assert out.stderr == ""                                              # a gs:// workdir: no warning


def test_tpu_pod_warns_about_a_local_workdir_and_runs_nothing():
  out = dry_run("tpu_pod.sh", "--dry-run", "t", "z", "configs/simclr_imagenet.py", "/tmp/runs/x")
  assert out.returncode == 0 and "not a gs:// path" in out.stderr


def test_slurm_submits_with_sigterm_before_the_limit_and_requeue():
  out = dry_run("slurm_gpu.sbatch", "--dry-run", "configs/simclr_imagenet.py", "/shared/runs/r50", "--config.seed=1")
  assert out.returncode == 0, out.stderr
  directives = [line.split()[1] for line in out.stdout.splitlines() if line.startswith("#   --")]
  assert "--signal=TERM@120" in directives and "--requeue" in directives and "--ntasks-per-node=1" in directives
  submit, step = commands(out.stdout)
  assert submit[0] == "sbatch" and submit[-3:] == ["configs/simclr_imagenet.py", "/shared/runs/r50", "--config.seed=1"]
  assert step == ["CL_JAX_DISTRIBUTED=1", "srun", "python", "-m", "cl_jax.main", "--config=configs/simclr_imagenet.py",
                  "--workdir=/shared/runs/r50", "--config.seed=1"]


def test_local_gpu_sets_the_memory_fraction():
  out = dry_run("local_gpu.sh", "--dry-run", "configs/simclr_cifar10.py", "/tmp/runs/c10", "--config.batch_size=512")
  assert out.returncode == 0, out.stderr
  (cmd,) = commands(out.stdout)
  assert cmd == ["XLA_PYTHON_CLIENT_MEM_FRACTION=0.9", "python", "-m", "cl_jax.main", "--config=configs/simclr_cifar10.py",
                 "--workdir=/tmp/runs/c10", "--config.batch_size=512"]


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sbatch", "local_gpu.sh"])
def test_missing_arguments_print_the_usage(script):
  out = dry_run(script, "--dry-run")
  assert out.returncode == 2 and "usage:" in out.stderr and "--dry-run" in out.stderr


@pytest.mark.parametrize("script", ["tpu_pod.sh", "slurm_gpu.sbatch", "local_gpu.sh"])
def test_the_printed_config_loads(script):
  """The config a dry run names is one this checkout can load (a stale path in a script fails here)."""
  args = {"tpu_pod.sh": ("t", "z"), "slurm_gpu.sbatch": (), "local_gpu.sh": ()}[script]
  out = dry_run(script, "--dry-run", *args, "configs/simclr_imagenet.py", "gs://b/x")
  config = next(a for cmd in commands(out.stdout) for a in shlex.split(" ".join(cmd)) if a.startswith("--config="))
  assert os.path.exists(os.path.join(ROOT, config.split("=", 1)[1].split(":")[0]))
