"""Offline evaluation: the linear probe on synthetic features, the CLI on a tiny trained workdir, bad input."""
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from cl_jax import evaluate, train
from cl_jax.data import augment
from cl_jax.data import shapes
from cl_jax.eval import attributes, embedding_plot, features, linear, monitors
from tests.harness import cli_one_line, run_python
from tests.harness import tiny_config as base_config


def tiny_config():
  """The tiny config without periodic eval; crop + flip only (the evaluation under test does not care, and the
  full colour recipe compiles slowly)."""
  return base_config(**{"eval.every": -1, "tensorboard": False, "augment": ml_collections.ConfigDict({
      "global": augment.group(size=32, views=2, scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,))})})


def rows(workdir, key):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [r for r in map(json.loads, f) if key in r]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  path = str(tmp_path_factory.mktemp("run"))
  train.train_and_evaluate(tiny_config(), path)
  return path


@pytest.fixture(scope="module")
def loaded(workdir):
  return train.load_run(workdir)


# ----------------------------------------------------------------------------- the classifier on synthetic features

C, D = 10, 16


def blobs(n, seed, scale=4.0):
  rng = np.random.default_rng(seed)
  centers = np.random.default_rng(0).normal(size=(C, D)) * scale
  y = rng.integers(0, C, n)
  return (centers[y] + rng.normal(size=(n, D)) + 3.0).astype(np.float32), y   # offset: standardisation matters


def test_linear_classifier_separable_and_shuffled_labels():
  (xt, yt), (xs, ys) = blobs(512, 1), blobs(256, 2)
  kw = dict(epochs=20, lr=0.1, batch_size=128)
  good = linear.train_linear_classifier(xt, yt, xs, ys, C, **kw)
  assert good["top1"] >= 99.0 and good["top5"] >= good["top1"]
  shuffle = np.random.default_rng(3).permutation
  shuffled = linear.train_linear_classifier(xt, shuffle(yt), xs, shuffle(ys), C, **kw)
  assert shuffled["top1"] < 20.0                      # labels independent of the features: chance is 10%
  assert shuffled["top5"] >= shuffled["top1"]


def test_classifier_accuracy_matches_numpy():
  rng = np.random.default_rng(0)
  head = {"w": rng.normal(size=(D, C)).astype(np.float32), "b": rng.normal(size=C).astype(np.float32)}
  x, y = rng.normal(size=(300, D)).astype(np.float32), rng.integers(0, C, 300)
  mean, std = linear.feature_stats(x)
  got = linear.classifier_accuracy(head, x, y, mean, std)
  logits = ((x - x.mean(0)) / x.std(0)) @ head["w"] + head["b"]
  ranked = np.argsort(-logits, axis=1)
  assert got["top1"] == pytest.approx(100 * np.mean(ranked[:, 0] == y))
  assert got["top5"] == pytest.approx(100 * np.mean(np.any(ranked[:, :5] == y[:, None], axis=1)))


def test_linear_classifier_rejects_bad_labels():
  x = np.zeros((8, 4), np.float32)
  with pytest.raises(ValueError, match="num_classes"):
    linear.train_linear_classifier(x, np.full(8, 12), x, np.zeros(8), 10, epochs=1, lr=0.1, batch_size=4)


def test_nearest_neighbours_and_queries():
  rng = np.random.default_rng(0)
  q, m = rng.normal(size=(5, 6)), rng.normal(size=(40, 6))
  unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
  want = np.argsort(-(unit(q) @ unit(m).T), axis=1)[:, :7]
  np.testing.assert_array_equal(embedding_plot.nearest_neighbours(q, m, 7), want)
  labels = np.repeat(np.arange(4), 10)
  picked = embedding_plot.pick_queries(labels, 6, seed=1)
  assert len(set(picked.tolist())) == 6 and set(labels[picked[:4]].tolist()) == {0, 1, 2, 3}


# ----------------------------------------------------------------------------- a trained workdir


def test_cli_linear_fast_writes_metrics(workdir):
  result = run_python("-m", "cl_jax.evaluate", f"--workdir={workdir}", "--protocol=linear", "--fast",
                      "--config.eval.linear_epochs=10")
  assert result.returncode == 0, result.stderr
  assert "linear top-1" in result.stdout and "10 epochs" in result.stdout and "fast" in result.stdout
  (row,) = rows(workdir, "eval/linear_top1")
  assert row["step"] == 3 and 0.0 <= row["eval/linear_top1"] <= row["eval/linear_top5"] <= 100.0


def test_knn_protocol_writes_metrics(workdir, loaded):
  run, state, specs, step = loaded
  metrics = evaluate.run_protocol("knn", run, state, specs, step, workdir)
  (row,) = rows(workdir, "eval/knn_top1")
  assert row == {"step": 3, **metrics}
  assert 0.0 <= row["eval/knn_top1"] <= row["eval/knn_top5"] <= 100.0


def test_attribute_knn_finds_the_encoded_attribute():
  # Features that encode only the colour: colour is read perfectly, the shape no better than the majority class.
  data = shapes.generate(1200, seed=3)
  attrs = {n: data[key] for n, (key, _) in shapes.ShapesSource.attributes.items()}
  rng = np.random.default_rng(0)
  feats = np.eye(8, dtype=np.float32)[data["color"]] * 5.0 + rng.normal(size=(1200, 8)).astype(np.float32) * 0.1
  acc = attributes.attribute_knn(feats[:200], {n: v[:200] for n, v in attrs.items()}, feats[200:],
                                 {n: v[200:] for n, v in attrs.items()}, k=50)
  assert acc["color"] == 100.0
  majority = 100.0 * np.max(np.bincount(attrs["shape"][:200])) / 200
  assert acc["shape"] < majority + 8.0 and acc["position"] < 100.0 / 9 + 10.0


def test_attributes_protocol_writes_metrics(workdir, loaded, capsys):
  run, state, specs, step = loaded
  metrics = evaluate.run_protocol("attributes", run, state, specs, step, workdir)
  (row,) = rows(workdir, "eval/attr_shape")
  assert row == {"step": 3, **metrics}
  assert set(metrics) == {f"eval/attr_{n}" for n in ("shape", "color", "size", "position", "background")}
  # The shape column is the class: it equals the kNN monitor's top-1 on the same features.
  knn = monitors.evaluate_knn(run, features.make_encode(run, specs), state)
  assert metrics["eval/attr_shape"] == pytest.approx(knn["eval/knn_top1"])
  assert "kNN top-1 by attribute: shape" in capsys.readouterr().out


def test_num_test_evaluates_on_a_larger_test_split(workdir, tmp_path, capsys):
  # The run's test split has 128 examples; --num_test=200 draws 200 (the embedded data has any number), and the
  # line names the size of the split that was actually built, so an override that never reached the source fails.
  workdir = shutil.copytree(workdir, tmp_path / "run")   # its own metrics.jsonl: other tests count rows
  metrics = evaluate.evaluate(str(workdir), "knn", num_test=200)
  assert "test split: 200 examples" in capsys.readouterr().out
  assert 0.0 <= metrics["eval/knn_top1"] <= 100.0
  assert metrics["eval/knn_top1"] * 2 == pytest.approx(round(metrics["eval/knn_top1"] * 2))   # k / 200 in %
  assert rows(workdir, "eval/knn_top1")[-1] == {"step": 3, **metrics}


def test_cli_bad_num_test_is_one_line(workdir):
  line = cli_one_line(f"--workdir={workdir}", "--protocol=knn", "--num_test=0", module="cl_jax.evaluate", status=1)
  assert line == ("error: --num_test=0: must be a whole number >= 1 (test examples to evaluate on); leave it out "
                  "for the run's own test split."), line


def test_attributes_protocol_needs_attributes():
  class Labelled:
    attributes = None
  with pytest.raises(ValueError, match="needs per-example attributes; dataset 'cifar10' has only class labels"):
    attributes.check_source(Labelled(), "cifar10")


def test_tsne_protocol_writes_pngs(workdir, loaded):
  run, state, specs, step = loaded
  assert evaluate.run_protocol("tsne", run, state, specs, step, workdir) == {}
  for name in ("tsne_step3.png", "retrieval_step3.png"):
    with Image.open(os.path.join(workdir, "eval", name)) as im:
      im.verify()
    with Image.open(os.path.join(workdir, "eval", name)) as im:
      pixels = np.asarray(im.convert("RGB"))
    assert min(pixels.shape[:2]) >= 300 and pixels.std() > 10   # a real picture, not a blank canvas


def test_linear_full_mode_trains_the_head(loaded):
  run, state, specs, _ = loaded
  encode = features.make_encode(run, specs)
  head, mean, std, losses = linear.train_head_augmented(run, state, specs, encode, epochs=4, lr=0.005,
                                                        batch_size=64)
  assert losses.shape == (4 * (256 // 64),) and np.all(np.isfinite(losses))
  # The head fits the images: its cross-entropy (NumPy) on the training split's centre-crop features is below the
  # initial head's (minibatch losses of random crops are too noisy to compare over 16 steps).
  feats, labels = features.extract_features(run, encode, state, run.train_source)

  def xent(h):
    logits = ((np.asarray(feats) - mean) / std) @ np.asarray(h["w"]) + np.asarray(h["b"])
    logits = logits - logits.max(1, keepdims=True)
    return float(np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(labels)), labels]))

  initial = linear.init_head(jax.random.key(0), feats.shape[1], run.train_source.num_classes)
  assert xent(head) < xent(initial) - 0.01
  test_feats, test_labels = features.extract_features(run, encode, state, run.test_source)
  acc = linear.classifier_accuracy(head, test_feats, test_labels, mean, std)
  assert 0.0 <= acc["top1"] <= acc["top5"] <= 100.0


# ----------------------------------------------------------------------------- bad input


def test_cli_unknown_protocol_and_empty_workdir(tmp_path):
  line = cli_one_line(f"--workdir={tmp_path}", "--protocol=lineer", module="cl_jax.evaluate", status=1)
  assert line == ("error: Unknown protocol 'lineer'; known protocols: attributes, discovery, fdt_tokens, fine_recall, knn, linear, "
                  "noisy_labels, retrieval, segmentation, tsne, "
                  "zeroshot."), line
  line = cli_one_line(f"--workdir={tmp_path}", "--protocol=knn", module="cl_jax.evaluate", status=1)
  assert "no config.json" in line, line


def test_cli_bad_eval_value_is_one_line(workdir):
  line = cli_one_line(f"--workdir={workdir}", "--protocol=knn", "--config.eval.knn_k=0", module="cl_jax.evaluate",
                      status=1)
  assert line == "error: eval.knn_k=0: must be >= 1.", line


def test_workdir_without_checkpoint(tmp_path):
  with open(tmp_path / "config.json", "w") as f:
    f.write(tiny_config().to_json_best_effort())
  with pytest.raises(FileNotFoundError, match="no checkpoint"):
    evaluate.evaluate(str(tmp_path), "knn")


def test_unlabelled_dataset_needs_labels(tmp_path):
  flat = tmp_path / "flat"
  flat.mkdir()
  for i in range(4):
    Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(flat / f"{i}.png")
  c = tiny_config()
  c.dataset = f"folder:{flat}"
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  with open(run_dir / "config.json", "w") as f:
    f.write(c.to_json_best_effort())
  for protocol in ("linear", "knn", "tsne"):
    with pytest.raises(ValueError, match=f"the {protocol} protocol needs labels;"):
      evaluate.evaluate(str(run_dir), protocol)
