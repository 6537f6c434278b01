"""The evaluation contract: cl_jax/eval never imports the loop, and config.eval is a declared schema (a typo or an
impossible value is one line naming the nearest field, on the command line too; every shipped config validates)."""
import ast
import glob
import importlib.util
import os
import re

import ml_collections
import pytest

from cl_jax import evaluate
from cl_jax.eval import embedding_plot, features, knn, linear, monitors, noise_detection, retrieval, segmentation, zeroshot
from configs import quickstart
from tests.harness import ROOT, cli_one_line

EVAL_FILES = sorted(glob.glob(os.path.join(ROOT, "cl_jax", "eval", "*.py")))
CONFIGS = sorted(p for p in glob.glob(os.path.join(ROOT, "configs", "*.py")) if not p.endswith("__init__.py"))


def imported_modules(path, strings_only=False):
  """Every module a file imports, at the top or inside a function, and every string handed to import_module."""
  package = "cl_jax.eval"
  for node in ast.walk(ast.parse(open(path).read(), path)):
    if isinstance(node, ast.Import) and not strings_only:
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and not strings_only:
      base = node.module or ""
      if node.level:   # relative: resolve against cl_jax.eval
        parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
        base = f"{parent}.{base}" if base else parent
      yield base
      yield from (f"{base}.{a.name}" for a in node.names)
    elif isinstance(node, ast.Call):
      name = getattr(node.func, "attr", getattr(node.func, "id", ""))
      if name in ("import_module", "__import__", "find_spec"):
        yield from (a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str))


def test_the_ast_check_sees_lazy_and_relative_imports(tmp_path):
  f = tmp_path / "m.py"
  f.write_text("def g():\n  from .. import train\n  import importlib\n  importlib.import_module('cl_jax.train')\n"
               "from cl_jax.train import Run\n")
  assert [m for m in imported_modules(str(f)) if m == "cl_jax.train"] == ["cl_jax.train"] * 3


@pytest.mark.parametrize("path", EVAL_FILES, ids=os.path.basename)
def test_no_eval_module_imports_the_loop(path):
  bad = [m for m in imported_modules(path) if m == "cl_jax.train" or m.startswith("cl_jax.train.")]
  assert not bad, f"{os.path.relpath(path, ROOT)} imports {bad}; take Run/TrainState from cl_jax.run_state"


def test_the_loop_imports_eval_modules_plainly():
  """train.py imports cl_jax.eval (never the other way) by name, not by a string that hides the dependency."""
  path = os.path.join(ROOT, "cl_jax", "train.py")
  assert "cl_jax.eval.monitors" in imported_modules(path)
  assert not [m for m in imported_modules(path, strings_only=True) if m.startswith("cl_jax.eval")]


@pytest.mark.parametrize("path", EVAL_FILES + [os.path.join(ROOT, "cl_jax", f) for f in ("train.py", "evaluate.py")],
                         ids=os.path.basename)
def test_no_hidden_eval_defaults(path):
  """config.eval is read through the declared schemas (cl_jax.eval.settings.read), not `.get(key, default)`."""
  assert not re.search(r"\.eval\.get\(|\beval\.get\(", open(path).read()), path


def test_train_re_exports_the_run_types():
  from cl_jax import run_state, train  # pylint: disable=g-import-not-at-top
  assert train.Run is run_state.Run and train.TrainState is run_state.TrainState


def test_each_field_is_declared_once_and_the_cli_overrides_declared_fields():
  schemas = [monitors.SCHEMA, features.SCHEMA, knn.SCHEMA, linear.SCHEMA, embedding_plot.SCHEMA, zeroshot.SCHEMA,
             retrieval.SCHEMA, segmentation.SCHEMA, noise_detection.SCHEMA]
  assert sum(map(len, schemas)) == len(monitors.EVAL_SCHEMA)
  assert set(evaluate.EVAL_OPTIONS) <= set(monitors.EVAL_SCHEMA)


def config_with_eval(**values):
  c = quickstart.get_config("runlocal")
  with c.unlocked():
    c.eval = ml_collections.ConfigDict(values)
  return c


# The defaults the evaluators read before the schema (`.get(key, default)`; None / 0: "unset").
DEFAULTS = {"every": 0, "monitors": ("knn",), "batch_size": 0, "image_size": 0, "crop_frac": 1.0, "knn_k": 200,
            "knn_temperature": 0.07, "knn_train_examples": 0, "linear_fast": None, "linear_epochs": None,
            "linear_lr": 0.1, "linear_batch_size": 256, "linear_weight_decay": 0.0, "linear_seed": 0,
            "tsne_points": 2000, "retrieval_queries": 8, "retrieval_k": 8, "prompt_templates": None,
            "retrieval_examples": 0, "seg_background": "auto", "seg_threshold": 0.5, "seg_logit_scale": 100.0,
            "seg_examples": 500, "seg_class_names": (), "seg_background_prompts": (), "seg_png_examples": 8,
            "noisy_linear_epochs": 0}


def test_declared_defaults_are_the_former_ones():
  assert monitors.validate_eval(config_with_eval()) == DEFAULTS


def test_validate_fills_the_declared_defaults():
  got = monitors.validate_eval(config_with_eval(knn_k=20, knn_train_examples=None))
  assert got["knn_k"] == 20 and got["knn_train_examples"] == 0   # None: the declared default
  assert got["monitors"] == ("knn",) and got["knn_temperature"] == 0.07 and got["crop_frac"] == 1.0


@pytest.mark.parametrize("values,message", [
    ({"knn_kk": 5}, r"^eval\.knn_kk: unknown; did you mean knn_k\? known: batch_size, crop_frac, every, "),
    ({"knn_k": 0}, r"^eval\.knn_k=0: must be >= 1\.$"),
    ({"knn_temperature": 0.0}, r"^eval\.knn_temperature=0\.0: must be > 0\.$"),
    ({"crop_frac": 1.5}, r"^eval\.crop_frac=1\.5: must be <= 1\.$"),
    ({"linear_fast": "yes"}, r"^eval\.linear_fast='yes': must be one of True, False\.$"),
    ({"monitors": ("knn", "zeroshott")}, r"^Unknown eval monitor 'zeroshott'; known eval monitors: discovery, fine_recall, knn, "),
    ({"monitors": "knn"}, r"^eval\.monitors='knn': must be a tuple of names"),
])
def test_bad_eval_values_are_one_line(values, message):
  with pytest.raises(ValueError, match=message):
    monitors.validate_eval(config_with_eval(**values))


def load_config(path, arg):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_every_config_eval_section_validates(path):
  for arg in (None, "runlocal"):
    monitors.validate_eval(load_config(path, arg))


@pytest.mark.parametrize("name", quickstart.method_names())
def test_every_quickstart_method_eval_section_validates(name):
  for arg in (f"method={name}", f"method={name},runlocal"):
    monitors.validate_eval(quickstart.get_config(arg))


def test_cli_eval_override_typo_is_one_line(tmp_path):
  line = cli_one_line("--config=configs/quickstart.py:runlocal", "--config.eval.knn_kk=5", workdir=tmp_path / "run")
  assert line.startswith("error: config.eval.knn_kk: unknown; did you mean knn_k? known: "), line


def test_cli_eval_typo_in_a_config_file_is_one_line(tmp_path):
  """A key the file itself adds to config.eval reaches the loop: the declared schema rejects it at start-up."""
  path = tmp_path / "typo.py"
  path.write_text(f"import sys\nsys.path.insert(0, {ROOT!r})\nfrom configs import quickstart\n\n\n"
                  "def get_config(arg=None):\n  c = quickstart.get_config('runlocal')\n  c.eval.knn_kk = 5\n"
                  "  return c\n")
  line = cli_one_line(f"--config={path}", workdir=tmp_path / "run")
  assert line.startswith("error: eval.knn_kk: unknown; did you mean knn_k? known: batch_size, crop_frac, "), line


def test_cli_eval_value_out_of_range_is_one_line(tmp_path):
  line = cli_one_line("--config=configs/quickstart.py:runlocal", "--config.eval.knn_k=0", workdir=tmp_path / "run")
  assert line == "error: eval.knn_k=0: must be >= 1.", line
