"""Every config runs a few steps with :runlocal; the CLI trains on an image folder and reports kNN."""
import glob
import importlib.util
import json
import os
import pkgutil
import subprocess
import sys

import chex
import numpy as np
import pytest
from PIL import Image

from cl_jax import methods, train
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


def recipe_methods() -> set[str]:
  return {load_config(p, None).method.name for p in CONFIGS if not p.endswith("quickstart.py")}


def test_every_registered_method_has_a_recipe_config():
  """So the trace check below covers every method (each module imported, so none is missed)."""
  for info in pkgutil.iter_modules(methods.__path__):
    importlib.import_module(f"cl_jax.methods.{info.name}")
  registered = {n for n in methods.METHODS.names() if methods.METHODS.get(n).__module__.startswith("cl_jax.")}
  assert registered <= recipe_methods(), f"no configs/*.py recipe for {sorted(registered - recipe_methods())}"


@pytest.fixture
def traced_once(monkeypatch):
  """Every method the loop builds has its loss and after_update wrapped in chex.assert_max_traces(n=1): a step
  that retraces (a Python value or a dtype changing between steps) fails the run."""
  chex.clear_trace_counter()   # the counter is keyed by source: inherited methods share one across tests
  build = train.get_method

  def get_method(config, run_facts):
    method = build(config, run_facts)
    method.loss = chex.assert_max_traces(method.loss, n=1)
    method.after_update = chex.assert_max_traces(method.after_update, n=1)
    return method
  monkeypatch.setattr(train, "get_method", get_method)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_runlocal_trains_a_few_steps_and_traces_once(path, tmp_path, traced_once):
  config = load_config(path, "runlocal")
  assert 3 <= config.total_steps <= 5, "runlocal must be a few steps (at least 3, for the trace check)"
  config.eval.every = -1   # training only; evaluation is covered by the loop's own tests
  history = train.train_and_evaluate(config, str(tmp_path))
  assert np.isfinite(history["loss"])
  with open(tmp_path / "metrics.jsonl") as f:
    assert max(json.loads(line)["step"] for line in f) == config.total_steps


def test_config_argument_typo_is_one_line():
  with pytest.raises(ValueError, match="Unknown config argument 'runlokal'; known: .*runlocal"):
    load_config(CONFIGS[0], "runlokal")


def test_cli_override_through_a_keyword_key_names_the_bracket_form(tmp_path):
  line = cli_one_line("--config=configs/quickstart.py:runlocal", "--config.augment.global.jitter_strength=1.0",
                      workdir=str(tmp_path / "w"))
  assert "'global' is a Python keyword" in line
  assert "--config.augment['global'].jitter_strength=1.0" in line


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
