"""--what=peer (cl_jax/peer.py): what it hands the reference side (recipe, data), how it scores what comes back
(cl_jax's own kNN), and its one-line errors. None of this needs torch; the end-to-end run at the bottom runs only
where the side environment exists (docs/peer.md)."""
import ast
import json
import os
import pathlib
import stat

import numpy as np
import pytest

from cl_jax import peer, train
from cl_jax.data import sources
from cl_jax.eval import attributes, knn
from tests import harness

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _config(arg="method=simclr,runlocal"):
  from configs import quickstart  # pylint: disable=g-import-not-at-top
  return quickstart.get_config(arg)


def test_recipe_holds_what_the_config_says():
  c = _config()
  c.augment["global"].scale = (0.3, 0.9)
  c.augment["global"].grayscale_p = 0.35
  c.optim.lr = 1.5e-3
  c.method.temperature = 0.25
  run = train.build_run(c)
  rec = json.loads(json.dumps(peer.recipe(run, eval_every=1)))   # as written to recipe.json
  (g,) = rec["augment"]
  assert g["name"] == "global" and g["scale"] == [0.3, 0.9] and g["grayscale_p"] == 0.35
  assert g["jitter_strength"] == 0.5 and g["blur_p"] == [0.0] and g["views"] == 2 and g["size"] == 32
  assert rec["optim"]["lr"] == 1.5e-3 and rec["optim"]["name"] == "adamw" and rec["optim"]["weight_decay"] == 1e-4
  assert rec["method"] == {"name": "simclr", "version": 1, "temperature": 0.25, "proj_hidden": 256, "proj_dim": 64}
  assert rec["model"]["name"] == "resnet_tiny" and rec["model"]["zero_init_last_bn"] is False
  assert rec["batch_size"] == 64 and rec["total_steps"] == 3 and rec["steps_per_epoch"] == 512 // 64
  assert rec["eval"]["steps"] == [0, 1, 2, 3]
  assert (rec["eval"]["knn_k"], rec["eval"]["knn_temperature"]) == (200, 0.07)


def test_recipe_keeps_per_view_probabilities_and_method_defaults():
  rec = peer.recipe(train.build_run(_config("method=byol,runlocal")), eval_every=0)
  assert rec["augment"][0]["blur_p"] == [1.0, 0.1] and rec["augment"][0]["solarize_p"] == [0.0, 0.2]
  assert rec["method"]["base_momentum"] == 0.99 and rec["method"]["pred_hidden"] == 512
  assert rec["eval"]["steps"] == [0, 3]


def test_swav_recipe_freezes_the_prototypes_for_the_first_epoch():
  rec = peer.recipe(train.build_run(_config("method=swav")), eval_every=0)
  assert rec["method"] == {"name": "swav", "proj_hidden": 512, "proj_dim": 128, "num_prototypes": 100,
                           "temperature": 0.1, "epsilon": 0.05, "sinkhorn_iters": 3, "queue_length": 0,
                           "queue_start_epoch": 15}
  assert rec["optim"]["frozen"] == ["prototypes"] and rec["optim"]["frozen_steps"] == rec["steps_per_epoch"] == 39
  assert [g["role"] for g in rec["augment"]] == ["global"] and rec["total_steps"] == 585


def test_eval_steps_are_the_training_loops():
  assert peer.eval_steps(585, 117) == [0, 117, 234, 351, 468, 585]
  assert peer.eval_steps(10, 4) == [0, 4, 8, 10]
  assert peer.eval_steps(5, 0) == [0, 5]


def test_data_export_round_trips_the_sources_examples(tmp_path):
  c = _config()
  hp = sources.data_section(c.data, c.dataset)
  train_source, test_source = sources.get_source(hp, "train"), sources.get_source(hp, "test")
  path = str(tmp_path / "data.npz")
  peer.export_data(train_source, test_source, path)
  data = peer.load_data(path)
  for split, source in (("train", train_source), ("test", test_source)):
    assert data[f"{split}_image"].dtype == np.uint8 and len(data[f"{split}_image"]) == len(source)
    for i in (0, 1, len(source) // 2, len(source) - 1):
      np.testing.assert_array_equal(data[f"{split}_image"][i], source[i]["image"])
      assert data[f"{split}_label"][i] == source[i]["label"]
    for name in source.attributes:
      np.testing.assert_array_equal(data[f"{split}_attr_{name}"], source.attribute_values(name))
  assert sorted(peer.attribute_names(data)) == sorted(train_source.attributes)
  # the splits differ (a swapped or repeated split would pass the per-split checks above only by accident)
  assert not np.array_equal(data["train_image"][:8], data["test_image"][:8])


def _fake_data(rng, n_train=300, n_test=120, classes=4):
  data = {"train_label": rng.integers(0, classes, n_train).astype(np.int32),
          "test_label": rng.integers(0, classes, n_test).astype(np.int32)}
  for split, n in (("train", n_train), ("test", n_test)):
    data[f"{split}_attr_color"] = rng.integers(0, 3, n).astype(np.int32)
    data[f"{split}_attr_shape"] = data[f"{split}_label"]
  return data


def test_reference_features_are_scored_by_cl_jaxs_knn(tmp_path):
  rng = np.random.default_rng(0)
  data = _fake_data(rng)
  centres = rng.normal(size=(4, 16)) * 3
  feats = {}
  for step, noise in ((0, 30.0), (5, 0.5)):   # step 0: noise (near chance); step 5: label-clustered
    tr = centres[data["train_label"]] + noise * rng.normal(size=(300, 16))
    te = centres[data["test_label"]] + noise * rng.normal(size=(120, 16))
    feats[step] = (tr.astype(np.float32), te.astype(np.float32))
    np.savez(tmp_path / f"features_{step}.npz", train=feats[step][0], test=feats[step][1])
  rec = {"eval": {"steps": [0, 5], "knn_k": 50, "knn_temperature": 0.01, "knn_train_examples": 0}}
  curve, attrs = peer.score_reference(str(tmp_path), rec, data, num_classes=4)
  for step in (0, 5):
    tr, te = feats[step]
    want = knn.knn_accuracy(te, data["test_label"], tr, data["train_label"], 4, k=50, temperature=0.01)["top1"]
    assert curve[step] == want
  # the recipe's k and T matter on the noisy step (so a path that ignored them would fail above)
  tr, te = feats[0]
  assert curve[0] != knn.knn_accuracy(te, data["test_label"], tr, data["train_label"], 4)["top1"]
  assert curve[5] > 95 and curve[0] < 60
  tr, te = feats[5]
  want = attributes.attribute_knn(te, {"color": data["test_attr_color"], "shape": data["test_attr_shape"]}, tr,
                                  {"color": data["train_attr_color"], "shape": data["train_attr_shape"]},
                                  k=50, temperature=0.01)
  assert attrs == want and attrs["shape"] == curve[5]


def test_reference_features_use_the_first_knn_train_examples(tmp_path):
  rng = np.random.default_rng(1)
  data = _fake_data(rng)
  tr, te = rng.normal(size=(300, 8)).astype(np.float32), rng.normal(size=(120, 8)).astype(np.float32)
  np.savez(tmp_path / "features_0.npz", train=tr, test=te)
  rec = {"eval": {"steps": [0], "knn_k": 20, "knn_temperature": 0.07, "knn_train_examples": 100}}
  curve, _ = peer.score_reference(str(tmp_path), rec, data, num_classes=4)
  assert curve[0] == knn.knn_accuracy(te, data["test_label"], tr[:100], data["train_label"][:100], 4, k=20,
                                      temperature=0.07)["top1"]


def test_missing_side_environment_is_one_line_naming_the_install(tmp_path):
  missing = str(tmp_path / "venv" / "bin" / "python")
  harness.one_line_error(lambda: peer.check_python(missing), "does not exist",
                         f"python -m venv {tmp_path / 'venv'} && {tmp_path / 'venv'}/bin/pip install "
                         "torch==2.14.1 torchvision==0.29.1 lightly==1.6.0", "--peer_python=")
  # A Python that exists but cannot import the reference's packages.
  fake = tmp_path / "bin" / "python"
  fake.parent.mkdir()
  fake.write_text("#!/bin/sh\necho \"ModuleNotFoundError: No module named 'lightly'\" >&2\nexit 1\n")
  fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
  harness.one_line_error(lambda: peer.check_python(str(fake)), "cannot import", "No module named 'lightly'",
                         "pip install torch==2.14.1 torchvision==0.29.1 lightly==1.6.0")
  assert peer.install_command() == ("python -m venv ~/.cl_jax_peer && ~/.cl_jax_peer/bin/pip install "
                                    "torch==2.14.1 torchvision==0.29.1 lightly==1.6.0")


def test_default_side_python_comes_from_the_environment(monkeypatch):
  monkeypatch.setenv(peer.ENV_PYTHON, "/opt/side/bin/python")
  assert peer.default_python() == "/opt/side/bin/python"
  monkeypatch.delenv(peer.ENV_PYTHON)
  assert peer.default_python() == "~/.cl_jax_peer/bin/python"


def test_cli_missing_side_environment(tmp_path):
  line = harness.cli_one_line("--config=configs/quickstart.py:runlocal", "--what=peer",
                              f"--peer_python={tmp_path}/nowhere/bin/python", module="cl_jax.bench", status=1)
  assert f"python -m venv {tmp_path}/nowhere && {tmp_path}/nowhere/bin/pip install torch==2.14.1" in line


def test_cli_method_without_a_reference():
  line = harness.cli_one_line("--config=configs/quickstart.py:method=instdisc,runlocal", "--what=peer",
                              module="cl_jax.bench", status=1)
  assert "method 'instdisc' has no reference" in line and "simclr, moco_v2, byol, simsiam, dino, swav" in line


def _imports(path):
  names = set()
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      names.update(a.name.split(".")[0] for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      names.add(node.module.split(".")[0])
  return names


def test_torch_stays_on_the_reference_side():
  """peer.py (imported by cl_jax) never imports torch; peer_torch.py and its views module (run by the side Python)
  never cl_jax."""
  assert not _imports(ROOT / "cl_jax" / "peer.py") & {"torch", "torchvision", "lightly"}
  assert not _imports(ROOT / "cl_jax" / "bench.py") & {"lightly"}
  side = _imports(ROOT / "cl_jax" / "peer_torch.py")
  assert "cl_jax" not in side and {"torch", "lightly", "peer_torch_views"} <= side
  assert "cl_jax" not in _imports(ROOT / "cl_jax" / "peer_torch_views.py")


def _side_python():
  p = os.path.expanduser(os.environ.get(peer.ENV_PYTHON, "~/.cl_jax_peer/bin/python"))
  return p if os.path.isfile(p) else None


@pytest.mark.skipif(_side_python() is None, reason="no side environment (docs/peer.md); CI has no torch")
@pytest.mark.parametrize("method", sorted(peer.REFERENCES))
def test_end_to_end_on_a_few_steps(tmp_path, method):
  result = peer.compare(_config(f"method={method},runlocal"), python=_side_python(), workdir=str(tmp_path),
                        eval_every=3)
  steps = [r["step"] for r in result["curve"]]
  assert steps == [0, 3]
  assert all(r["cl_jax"] is not None and 0 <= r["reference"] <= 100 for r in result["curve"])
  assert set(result["attributes"]["reference"]) == set(result["attributes"]["cl_jax"]) >= {"shape", "color"}
  assert json.load(open(tmp_path / "peer.json"))["method"] == method


_SWAV_SIDE = """
import json, sys
import numpy as np, torch
sys.path.insert(0, sys.argv[1])
import peer_torch
r = json.load(open(sys.argv[2]))
torch.manual_seed(0)
method = peer_torch.SwAV(r["method"], r["model"], r)
method.train()
groups = [torch.randn(16, 2, 3, 32, 32)]
with torch.no_grad():
  high, low = method.scores(groups)
  loss = method.loss(groups, 0)
  frozen = [n for n, p in method.named_parameters() if any(s in n for s in r["optim"]["frozen"])]
  norm_init = method.prototypes.heads[0].weight.norm(dim=1)
  method.prototypes.heads[0].weight.mul_(3.0)
  method.after_step(0)
  norm_after = method.prototypes.heads[0].weight.norm(dim=1)
np.savez(sys.argv[3], scores=torch.stack(high).numpy(), num_low=len(low), loss=float(loss),
         norm_init=norm_init.numpy(), norm_after=norm_after.numpy(), frozen=np.array(frozen))
"""


@pytest.mark.skipif(_side_python() is None, reason="no side environment (docs/peer.md); CI has no torch")
def test_reference_swav_is_cl_jaxs_loss_on_unit_prototypes(tmp_path):
  """The reference's SwAV loss on its own prototype scores equals cl_jax's sinkhorn + swapped_prediction with the
  recipe's temperature, epsilon and iterations; prototypes are unit vectors without bias, renormalised after a
  step, and the recipe's optim.frozen names exactly the prototypes."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cl_jax.losses import swav  # pylint: disable=g-import-not-at-top

  rec = peer.recipe(train.build_run(_config("method=swav,runlocal")), eval_every=0)
  (tmp_path / "recipe.json").write_text(json.dumps(rec))
  out = tmp_path / "side.npz"
  subprocess.run([_side_python(), "-c", _SWAV_SIDE, str(ROOT / "cl_jax"), str(tmp_path / "recipe.json"), str(out)],
                 check=True, capture_output=True)
  side = np.load(out)
  m = rec["method"]
  scores = side["scores"]                                       # [2, 16, K]: both global crops, no local ones
  assert scores.shape == (2, 16, m["num_prototypes"]) and int(side["num_low"]) == 0
  assert np.abs(scores).max() <= 1 + 1e-5 and np.abs(scores).max() > 0.05   # unit z . unit prototypes, no bias

  def cl_jax_loss(temperature, epsilon, iters):
    codes = jnp.stack([swav.sinkhorn(jnp.asarray(s), epsilon, iters) for s in scores])
    return float(swav.swapped_prediction(jnp.asarray(scores), codes, temperature))

  want = cl_jax_loss(m["temperature"], m["epsilon"], m["sinkhorn_iters"])
  np.testing.assert_allclose(float(side["loss"]), want, rtol=1e-5)
  for wrong in ((0.2, m["epsilon"], m["sinkhorn_iters"]), (m["temperature"], 0.1, m["sinkhorn_iters"]),
                (m["temperature"], m["epsilon"], 1)):   # the check above can tell each setting apart
    assert abs(cl_jax_loss(*wrong) - want) > 1e-3
  np.testing.assert_allclose(side["norm_init"], 1.0, rtol=1e-5)
  np.testing.assert_allclose(side["norm_after"], 1.0, rtol=1e-5)
  assert list(side["frozen"]) == ["prototypes.heads.0.weight"]
