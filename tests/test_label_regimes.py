"""Label regimes (cl_jax/data/label_regimes.py): noisy labels at the asked rate along the protocol's flips, coarse
labels from a complete map, category discovery splits; deterministic by seed, the truths kept beside the training
label, and every bad setting one line."""
import json

import ml_collections
import numpy as np
import pytest

from cl_jax.data import label_regimes as lr, pipeline, shapes, sources
from tests.harness import one_line_error

N = 10_000


class Labels:
  """A labelled source without images: example i has label labels[i]."""

  has_labels, image_size = True, 8

  def __init__(self, labels, class_names, name="toy"):
    self._labels, self.class_names, self.num_classes, self.name = np.asarray(labels), tuple(class_names), \
        len(class_names), name

  def __len__(self):
    return len(self._labels)

  def __getitem__(self, i):
    return {"label": np.asarray(self._labels[i], np.int32), "index": np.asarray(i, np.int32)}


def _toy(c=10, n=N, names=None, name="toy"):
  return Labels(np.random.default_rng(0).integers(0, c, n), names or [f"c{k}" for k in range(c)], name)


def _wrap(src, split="train", **hp):
  return lr.wrap(src, split, {"seed": 0, "label_seed": None, **hp})


def _cfg(**kw):
  return ml_collections.ConfigDict(dict(dataset="shapes", image_size=16, num_train=256, num_test=64, **kw))


def _tol(p, n):
  return 4 * np.sqrt(p * (1 - p) / n) + 1e-9   # 4 binomial standard deviations


# ----------------------------------------------------------------------------------------------------- noisy labels

@pytest.mark.parametrize("rate", [0.0, 0.4, 0.8])
def test_symmetric_noise_flips_at_the_rate_to_every_other_class(rate):
  src = _toy()
  noisy = _wrap(src, label_noise=f"symmetric:{rate}")
  clean, label = lr.all_labels(src), noisy.labels
  flipped = label != clean
  assert abs(flipped.mean() - rate) <= _tol(rate, N), flipped.mean()
  if rate:
    # Uniform over the 9 other classes: each (clean, noisy) pair within a binomial tolerance of 1/9 of the flips.
    pairs = np.zeros((10, 10), int)
    np.add.at(pairs, (clean[flipped], label[flipped]), 1)
    assert np.all(np.diag(pairs) == 0)
    per_class = pairs.sum(1, keepdims=True)
    off = ~np.eye(10, dtype=bool)
    assert np.all(np.abs(pairs / per_class - 1 / 9)[off] <= _tol(1 / 9, per_class.min()))
  for i in (0, 1, 7, N - 1):   # one example read alone agrees with the bulk draw, clean label and flag kept
    ex = noisy[i]
    assert (ex["label"], ex["clean_label"], ex["is_noisy"]) == (label[i], clean[i], flipped[i])


def test_asymmetric_noise_follows_its_map():
  cifar10 = {"truck": "automobile", "bird": "airplane", "deer": "horse", "cat": "dog", "dog": "cat"}   # Patrini'17
  assert lr.CIFAR10_CLASSES == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
                                "truck")   # the tfds / official label order
  for names, name, flips in [(shapes.CLASS_NAMES, "shapes", lr.ASYMMETRIC_SHAPES),
                             (lr.CIFAR10_CLASSES, "cifar10", cifar10),
                             (("a", "b", "c"), "toy", {"a": "b", "b": "c", "c": "a"}),   # fallback i -> i + 1
                             (("a", "b", "c"), "toy", {"c": "a"})]:
    src = _toy(len(names), names=names, name=name)
    spec = ("asymmetric:0.4" if len(flips) != 1 else {"kind": "asymmetric", "rate": 0.4, "map": flips})
    noisy = _wrap(src, label_noise=spec)
    clean, label = lr.all_labels(src), noisy.labels
    target = np.asarray([names.index(flips.get(n, n)) for n in names])
    assert np.all((label == clean) | (label == target[clean])), name
    mapped = target[clean] != clean
    assert not np.any(label[~mapped] != clean[~mapped]), name   # classes outside the map never flip
    assert abs((label != clean)[mapped].mean() - 0.4) <= _tol(0.4, mapped.sum()), name
  fine = np.asarray(lr.CIFAR100_CLASSES)
  flips = lr.flip_map("cifar100", fine)
  coarse, _ = lr.parse_coarse("cifar100", fine)
  assert np.all(coarse[flips] == coarse) and np.all(flips != np.arange(100))   # the next class of its superclass


def test_noise_is_deterministic_by_seed():
  src = _toy(n=2000)
  a, b = _wrap(src, label_noise="symmetric:0.4").labels, _wrap(src, label_noise="symmetric:0.4").labels
  other = _wrap(src, label_noise="symmetric:0.4", label_seed=1).labels
  assert np.array_equal(a, b) and (a != other).mean() > 0.3
  assert np.array_equal(_wrap(src, label_noise="symmetric:0.4", seed=1).labels, other)   # label_seed None: data.seed


def test_the_loader_yields_the_noisy_label_and_the_test_split_the_true_one():
  cfg = _cfg(label_noise="symmetric:0.5")
  train = sources.get_source(cfg, "train")
  truth = shapes.ShapesSource("train", num_examples=256, image_size=16)
  noisy = lr.all_labels(train)
  seen = 0
  for host in (0, 1):
    loader = pipeline.make_loader(train, global_batch=64, seed=3, shuffle=True, num_epochs=1, process_index=host,
                                  process_count=2)
    for batch in loader:
      idx = batch["index"]
      assert np.array_equal(batch["label"], noisy[idx])
      assert np.array_equal(batch["clean_label"], truth.arrays["label"][idx])
      seen += len(idx)
  assert seen == 256 and (noisy != truth.arrays["label"]).mean() > 0.3
  assert not hasattr(train, "arrays")   # shapes' columns (with the clean "label") are not handed through
  test = sources.get_source(cfg, "test")
  assert "clean_label" not in test[0] and test[0]["label"] == shapes.ShapesSource("test", num_examples=64,
                                                                                   image_size=16)[0]["label"]
  summary = json.loads(json.dumps(lr.regime_summary(train)))
  assert summary["regimes"][0]["noisy_indices"] == np.flatnonzero(noisy != truth.arrays["label"]).tolist()
  assert lr.regime_summary(truth) == {}


# ---------------------------------------------------------------------------------------------------- coarse labels

def test_coarse_labels_map_every_class_and_keep_the_fine_one():
  src = _toy(10, n=500, names=shapes.CLASS_NAMES, name="shapes")
  coarse = _wrap(src, coarse_labels="shapes")
  assert coarse.class_names == ("round", "angular", "other") and coarse.num_classes == 3
  fine = lr.all_labels(src)
  grouping = {f: k for k, group in enumerate(lr.SHAPES_COARSE.values()) for f in group}
  assert sorted(grouping) == sorted(shapes.CLASS_NAMES)
  assert np.array_equal(coarse.labels, [grouping[shapes.CLASS_NAMES[f]] for f in fine])
  ex = coarse[3]
  assert ex["fine_label"] == fine[3] and ex["label"] == grouping[shapes.CLASS_NAMES[fine[3]]]
  # CIFAR-100's superclasses against the standard numeric fine -> coarse table (an independent encoding).
  table = [4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15, 3, 15,
           0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4, 2, 0, 17, 4, 18, 17,
           10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13, 16, 19, 2, 4, 6, 19, 5, 5, 8, 19,
           18, 1, 2, 15, 6, 0, 17, 8, 14, 13]
  ids, names = lr.parse_coarse("cifar100", lr.CIFAR100_CLASSES)
  assert ids.tolist() == table and len(names) == 20
  # Explicit forms: {fine: coarse}, {coarse: [fine]}, a list of ids.
  three = ("a", "b", "c")
  for spec in ({"a": "x", "b": "y", "c": "x"}, {"x": ["a", "c"], "y": ["b"]}, [0, 1, 0]):
    assert lr.parse_coarse(spec, three)[0].tolist() == [0, 1, 0]


# ----------------------------------------------------------------------------------------------- category discovery

def test_discovery_unlabels_new_classes_and_labels_the_fraction_of_old_ones():
  src = _toy()
  d = _wrap(src, discovery="old=0-4,labelled=0.3")
  true, label = lr.all_labels(src), d.labels
  old = true < 5
  assert d.old_classes == (0, 1, 2, 3, 4) and d.new_classes == (5, 6, 7, 8, 9)
  assert np.all(label[~old] == -1)
  kept = label[old] >= 0
  assert abs(kept.mean() - 0.3) <= _tol(0.3, old.sum()) and np.array_equal(label[old][kept], true[old][kept])
  ex = d[11]
  assert (ex["true_label"], bool(ex["is_old_class"])) == (true[11], bool(old[11]))
  assert lr.parse_discovery({"old": ["c1", 3], "labelled": 1}, src.class_names) == {"old": [1, 3], "labelled": 1.0}
  assert lr.parse_discovery("old=8", src.class_names)["old"] == list(range(8))


def test_regimes_compose_through_get_source():
  train = sources.get_source(_cfg(coarse_labels="shapes", discovery="old=0-1"), "train")
  ex, truth = train[5], shapes.ShapesSource("train", num_examples=256, image_size=16)[5]
  assert ex["fine_label"] == truth["label"] and ex["true_label"] == lr.parse_coarse("shapes", shapes.CLASS_NAMES)[0][
      truth["label"]]
  assert [r["regime"] for r in lr.regime_summary(train)["regimes"]] == ["coarse_labels", "discovery"]


# ------------------------------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("hp,needles", [
    (dict(label_noise="symmetric:1.0"), ("outside [0, 1)",)),
    (dict(label_noise="symmetric:-0.1"), ("outside [0, 1)",)),
    (dict(label_noise="uniform:0.4"), ("unknown noise kind 'uniform'", "symmetric")),
    (dict(label_noise="symmetric"), ("kind:rate",)),
    (dict(label_noise={"kind": "asymmetric", "rate": 0.2, "map": {"c1": "zebra"}}), ("unknown class 'zebra'",)),
    (dict(coarse_labels={"c0": "x", "c1": "y"}), ("fine class 'c2' has no coarse class", "map every class")),
    (dict(coarse_labels="cifar10"), ("unknown; use one of shapes, cifar100",)),
    (dict(discovery="old=0-9"), ("no new classes",)),
    (dict(discovery={"old": []}), ("no old classes",)),
    (dict(discovery="labelled=0.5"), ("no old classes given",)),
    (dict(discovery="old=0-4,labelled=1.5"), ("must be in [0, 1]",)),
    (dict(discovery="old=0-4,lablled=0.5"), ("data.discovery.lablled: unknown",)),
])
def test_bad_settings_are_one_line(hp, needles):
  one_line_error(lambda: _wrap(_toy(n=50), **hp), *needles)
  one_line_error(lambda: _wrap(_toy(n=50), split="test", **hp), *needles)   # checked on the test split too


def test_a_regime_of_an_unlabelled_source_is_one_line():
  src = _toy(n=20)
  src.has_labels, src.class_names, src.num_classes = False, None, None
  one_line_error(lambda: _wrap(src, label_noise="symmetric:0.2"), "needs labels", "unset data.label_noise")
  one_line_error(lambda: sources.get_source(_cfg(label_noize="symmetric:0.2"), "train"),
                 "data.label_noize: unknown; did you mean label_noise?")


def test_empty_string_is_off_and_the_quickstart_declares_the_regimes():
  """The quick start declares every regime as "" (a default the command line can override) and "" means off."""
  from configs import quickstart   # pylint: disable=g-import-not-at-top
  c = quickstart.get_config("runlocal")
  train = sources.get_source(c.data.to_dict() | {"dataset": c.dataset}, "train")
  assert not isinstance(train, lr.LabelRegime) and lr.regime_summary(train) == {}
  with c.unlocked():
    c.data.label_noise = "symmetric:0.4"
  noisy = sources.get_source(c.data.to_dict() | {"dataset": c.dataset}, "train")
  assert isinstance(noisy, lr.LabelRegime) and "clean_label" in noisy[0]
