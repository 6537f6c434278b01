"""Every config runs a few steps with :runlocal; the CLI trains on an image folder and reports kNN."""
import glob
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cl_jax import train
from tests.harness import cli_one_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not p.endswith("__init__.py"))


def load_config(path, arg):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def test_every_config_is_tested():
  assert {os.path.basename(p) for p in CONFIGS} >= {"quickstart.py", "simclr_cifar10.py", "simclr_imagenet.py",
                                                     "simclr_v2_imagenet.py"}


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_runlocal_trains_a_few_steps(path, tmp_path):
  config = load_config(path, "runlocal")
  assert config.total_steps <= 5, "runlocal must be a few steps"
  config.eval.every = -1   # training only; evaluation is covered by the loop's own tests
  history = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(history["loss"])
  with open(tmp_path / "metrics.jsonl") as f:
    assert max(json.loads(line)["step"] for line in f) == config.total_steps


def test_config_argument_typo_is_one_line():
  with pytest.raises(ValueError, match="Unknown config argument 'runlokal'; known: .*runlocal"):
    load_config(CONFIGS[0], "runlokal")


def test_cli_trains_on_an_image_folder_and_reports_knn(tmp_path):
  rng = np.random.default_rng(0)
  for split, n in (("train", 24), ("test", 8)):
    for label, color in enumerate([(255, 0, 0), (0, 0, 255)]):
      os.makedirs(tmp_path / "images" / split / f"class{label}")
      for i in range(n):
        img = (rng.uniform(0, 60, (40, 40, 3)) + np.array(color) * 0.7).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / "images" / split / f"class{label}" / f"{i}.png")
  workdir = tmp_path / "run"
  cmd = [sys.executable, "-m", "cl_jax.main", "--config=configs/quickstart.py:runlocal",
         f"--config.dataset=folder:{tmp_path / 'images'}", "--config.batch_size=16", "--config.eval.batch_size=16",
         f"--workdir={workdir}"]
  out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "kNN top-1" in out.stdout
  with open(workdir / "metrics.jsonl") as f:
    rows = [json.loads(line) for line in f]
  assert [r["step"] for r in rows if "eval/knn_top1" in r] == [0, 3]


def test_cli_bad_dataset_is_one_line_error(tmp_path):
  line = cli_one_line("--config=configs/quickstart.py:runlocal", f"--config.dataset=folder:{tmp_path / 'missing'}",
                      workdir=tmp_path / "run")
  assert "missing" in line, line
