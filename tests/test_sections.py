"""Declared model, optim and data sections: typos and impossible values are one line, declared knobs are settable
from the command line, and model.bn has one default for backbone and heads."""
import os

import numpy as np
import pytest
from flax import linen as nn
from PIL import Image

from cl_jax import train
from configs import quickstart
from tests.harness import build_method, cli_one_line, run_python


def _quickstart(method="simclr"):
  return quickstart.get_config(f"method={method},runlocal")


@pytest.mark.parametrize("section,key,value,expected", [
    ("model", "depht", 50, r"^model.depht: unknown;( did you mean depths\?)? known: bn, dtype, stem, width, zero_init_last_bn\.$"),
    ("optim", "warmup_epoch", 1, r"^optim.warmup_epoch: unknown; did you mean warmup_epochs\? known: "),
    ("data", "on_bad_imag", "fail", r"^data.on_bad_imag: unknown; did you mean on_bad_image\? known: "),
])
def test_build_run_names_a_typo_and_the_nearest_field(section, key, value, expected):
  c = _quickstart()
  with c.unlocked():
    c[section][key] = value
  with pytest.raises(ValueError, match=expected) as e:
    train.build_run(c)
  assert "\n" not in str(e.value)


def test_build_run_rejects_a_knob_the_chosen_component_does_not_read():
  c = _quickstart()
  c.optim.momentum = 0.0   # quickstart trains with adamw
  with pytest.raises(ValueError, match=r"^optim.momentum=0.0: adamw does not read it \(only lars, sgd do\)"):
    train.build_run(c)
  c = _quickstart()
  c.data.on_bad_image = "fail"   # shapes is rendered, never decoded
  with pytest.raises(ValueError, match=r"^data.on_bad_image='fail': shapes does not read it \(only captions, "):
    train.build_run(c)


_BAD_CLI = [
    (["--config=configs/quickstart.py:runlocal", "--config.model.depht=50"], "config.model.depht: unknown;"),
    (["--config=configs/quickstart.py:runlocal", "--config.optim.momentun=0.0"],
     "config.optim.momentun: unknown; did you mean momentum?"),
    (["--config=configs/quickstart.py:runlocal", "--config.data.on_bad_imag=fail"],
     "config.data.on_bad_imag: unknown; did you mean on_bad_image?"),
    (["--config=configs/quickstart.py:runlocal", "--config.model.width=0"], "model.width=0.0: must be > 0."),
    (["--config=configs/quickstart.py:runlocal", "--config.optim.momentum=0.0"],
     "optim.momentum=0.0: adamw does not read it (only lars, sgd do)"),
]


@pytest.mark.parametrize("args,expected", _BAD_CLI, ids=[a[-1] for a, _ in _BAD_CLI])
def test_cli_section_errors_are_one_line(tmp_path, args, expected):
  line = cli_one_line(*args, workdir=tmp_path / "run")
  assert expected in line, line


def _build_through_cli(tmp_path, *args):
  """Parses the real command line and builds the run (no training); returns stdout: the validated sections."""
  code = ("import sys; from absl import flags; from cl_jax import main, optim, train; "
          "from cl_jax.data import sources; main.parse_flags(sys.argv); c = flags.FLAGS.config; train.build_run(c); "
          "print(optim.optim_section(c.optim)); print(sources.data_section(c.data, c.dataset))")
  out = run_python("-c", code, *args, f"--workdir={tmp_path / 'run'}")
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout


def test_cli_sets_the_declared_momentum(tmp_path):
  out = _build_through_cli(tmp_path, "--config=configs/quickstart.py:runlocal", "--config.optim.name=sgd",
                           "--config.optim.momentum=0.0")
  assert "'momentum': 0.0" in out and "'name': 'sgd'" in out


def test_cli_sets_the_declared_on_bad_image(tmp_path):
  for label in range(2):
    os.makedirs(tmp_path / "images" / f"class{label}")
    for i in range(40):
      image = Image.fromarray(np.full((8, 8, 3), 60 * label + i, np.uint8))
      image.save(tmp_path / "images" / f"class{label}" / f"{i}.png")
  out = _build_through_cli(tmp_path, "--config=configs/quickstart.py:runlocal", "--config.batch_size=16",
                           f"--config.dataset=folder:{tmp_path / 'images'}", "--config.data.on_bad_image=fail")
  assert "'on_bad_image': 'fail'" in out


def _bn_axes(config):
  """The backbone's BatchNorm axis and the set of the heads' (projector, predictor) axes."""
  modules = [m for m in vars(build_method(config, num_devices=1)).values() if isinstance(m, nn.Module)]
  (encoder,) = [m for m in modules if hasattr(m, "backbone")]
  heads = [encoder.head] + [m for m in modules if hasattr(m, "bn_axis_name")]   # projector, predictor
  return encoder.backbone.bn_axis_name, {h.bn_axis_name for h in heads}


@pytest.mark.parametrize("method", ["simclr", "byol", "dino"])
def test_bn_unset_gives_backbone_and_heads_one_axis(method):
  c = _quickstart(method)
  c.model = {k: v for k, v in c.model.items() if k != "bn"}
  assert _bn_axes(c) == ("data", {"data"})   # one default, sync (SimCLR's global BN)
  c.model.bn = "local"
  assert _bn_axes(c) == (None, {None})


def test_resolved_json_records_every_declared_field_with_its_default(tmp_path):
  """Fields a config leaves unset are on record with the value the run uses (here the schema defaults)."""
  import json  # pylint: disable=g-import-not-at-top
  from cl_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config("runlocal")
  with config.unlocked():
    del config.method["proj_dim"]
  sections = train.resolved_sections(train.build_run(config))
  workdir_lib.write_resolved(str(tmp_path), sections)
  with open(tmp_path / "resolved.json") as f:
    resolved = json.load(f)
  assert set(resolved) == {"method", "model", "optim", "data", "eval", "parallel"}
  assert resolved["method"]["proj_dim"] == 128 and resolved["method"]["temperature"] == config.method.temperature
  assert resolved["model"]["bn"] == config.model.bn and "held_out_pairs" in resolved["data"]   # the shapes' field
  assert resolved["eval"]["knn_k"] == config.eval.knn_k


def test_parallel_section_typos_and_values_are_one_line():
  from tests.harness import one_line_error  # pylint: disable=g-import-not-at-top
  config = quickstart.get_config("runlocal")
  config.parallel.contrastive_imp = "ring"
  one_line_error(lambda: train.build_run(config), "contrastive_imp", "contrastive_impl")
  config = quickstart.get_config("runlocal")
  config.parallel.contrastive_impl = "rings"
  one_line_error(lambda: train.build_run(config), "rings")
