"""Evaluation under label regimes: Hungarian clustering accuracy (GCD v2) against a brute force over every mapping,
semi-supervised k-means on blobs, Recall@K against a brute-force ranking, the noise-detection AUC against the
Mann-Whitney pair count, and the monitors on tiny runs scoring the kept truths (fine / clean / true labels)."""
import itertools

import numpy as np
import pytest

from cl_jax import train
from cl_jax.eval import clustering, features, fine_retrieval, noise_detection
from tests.harness import one_line_error, tiny_config


def brute_cluster_accuracy(y_true, y_pred, is_old):
  """The best one-to-one cluster -> class map by trying every injective map (small K), scored on all examples."""
  classes, clusters = sorted(set(y_true)), sorted(set(y_pred))
  best, best_hit = -1, None
  for perm in itertools.permutations(classes + [None] * max(0, len(clusters) - len(classes)), len(clusters)):
    mapping = dict(zip(clusters, perm))
    hit = np.array([mapping[p] == t for t, p in zip(y_true, y_pred)])
    if hit.sum() > best:
      best, best_hit = hit.sum(), hit
  return {"all": 100 * best_hit.mean(), "old": 100 * best_hit[is_old].mean(), "new": 100 * best_hit[~is_old].mean()}


@pytest.mark.parametrize("seed", range(4))
def test_cluster_accuracy_is_the_best_single_mapping(seed):
  rng = np.random.default_rng(seed)
  y_true = rng.integers(0, 4, 40)
  y_pred = np.where(rng.random(40) < 0.6, (y_true + seed) % 5, rng.integers(0, 5, 40))   # 5 clusters, 4 classes
  is_old = y_true < 2
  got = clustering.cluster_accuracy(y_true, y_pred, is_old)
  ref = brute_cluster_accuracy(y_true, y_pred, is_old)
  for part in ("all", "old", "new"):   # a mapping shared by Old and New (v2), so old/new follow from the same hits
    np.testing.assert_allclose(got[part], ref[part], atol=1e-9)


def test_ss_kmeans_keeps_the_labelled_and_recovers_blobs():
  rng = np.random.default_rng(0)
  centres = np.eye(6)[:, :6] * 5.0
  y = np.repeat(np.arange(6), 30)
  x = centres[y] + rng.normal(scale=0.3, size=(180, 6))
  labels = np.where((y < 3) & (np.arange(180) % 2 == 0), y, -1)   # half of the 3 old classes labelled
  pred = clustering.ss_kmeans(x, labels, 6)
  np.testing.assert_array_equal(pred[labels >= 0], labels[labels >= 0])
  unl = labels < 0
  acc = clustering.cluster_accuracy(y[unl], pred[unl], y[unl] < 3)
  assert acc == {"all": 100.0, "old": 100.0, "new": 100.0}
  one_line_error(lambda: clustering.ss_kmeans(x, labels, 2), "3 labelled classes but k=2")


def test_recall_at_k_matches_a_brute_force_ranking():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(60, 5)).astype(np.float32)
  labels = rng.integers(0, 6, 60)
  got = fine_retrieval.recall_at_k(x, labels, chunk=16)
  xn = x / np.linalg.norm(x, axis=1, keepdims=True)
  sim = xn.astype(np.float64) @ xn.T.astype(np.float64)
  np.fill_diagonal(sim, -np.inf)
  order = np.argsort(-sim, axis=1)
  for k in fine_retrieval.KS:
    ref = 100 * np.mean([(labels[order[i, :k]] == labels[i]).any() for i in range(60)])
    np.testing.assert_allclose(got[k], ref, atol=1e-9)
  one_line_error(lambda: fine_retrieval.recall_at_k(x[:5], labels[:5]), "more than 10 items")


def test_noise_auc_is_the_pairwise_ranking_probability():
  rng = np.random.default_rng(2)
  noisy = rng.random(50) < 0.4
  scores = np.round(rng.random(50) - 0.3 * noisy, 1)   # ties included
  pairs = [(1.0 if c > n else 0.5 if c == n else 0.0) for c in scores[~noisy] for n in scores[noisy]]
  np.testing.assert_allclose(noise_detection.noise_auc(scores, noisy), 100 * np.mean(pairs), atol=1e-9)
  assert np.isnan(noise_detection.noise_auc(scores, np.zeros(50, bool)))


def tiny_eval_run(tmp_path, monitors, **overrides):
  c = tiny_config(total_steps=1, **{"eval.monitors": monitors, **overrides})
  return train.train_and_evaluate(c, str(tmp_path))


def test_coarse_run_scores_fine_labels(tmp_path):
  history = tiny_eval_run(tmp_path, ("knn", "fine_recall"), **{"data.coarse_labels": "shapes"})
  assert 0 <= history["eval/recall_at_1"] <= history["eval/recall_at_10"] <= 100
  run = train.build_run(tiny_config(**{"data.coarse_labels": "shapes"}))
  assert run.train_source.num_classes == 3 and features.num_classes(run) == 10
  state, specs = train.init_state(run)
  _, labels = features.extract_features(run, features.make_encode(run, specs), state, run.train_source)
  assert labels.max() > 2                                      # the kNN memory carries fine labels, not coarse


def test_discovery_monitor_on_a_tiny_run(tmp_path):
  history = tiny_eval_run(tmp_path, ("discovery",), **{"data.discovery": "old=0-4,labelled=0.5"})
  for part in ("all", "old", "new"):
    assert 0 <= history[f"eval/cluster_acc_{part}"] <= 100


def test_regime_monitors_without_their_regime_are_one_line(tmp_path):
  run = train.build_run(tiny_config())
  state, specs = train.init_state(run)
  one_line_error(lambda: clustering.evaluate_discovery(run, state, specs), "data.discovery")
  one_line_error(lambda: noise_detection.evaluate_noisy_labels(run, state, specs), "data.label_noise")
  noisy = train.build_run(tiny_config(**{"data.label_noise": "symmetric:0.4"}))
  state, specs = train.init_state(noisy)
  one_line_error(lambda: noise_detection.evaluate_noisy_labels(noisy, state, specs), "SimCLR", "classify",
                 "eval.noisy_linear_epochs")


def test_noisy_label_linear_probe_fits_the_noisy_labels_and_scores_the_clean_test():
  """eval/linear_noisy_top1 is the linear probe fitted to the flipped training labels (80% noise here), not to the
  clean ones, and scored on the clean test labels."""
  from cl_jax.data import label_regimes
  from cl_jax.eval import linear
  run = train.build_run(tiny_config(**{"data.label_noise": "symmetric:0.8", "eval.noisy_linear_epochs": 3}))
  state, specs = train.init_state(run)
  got = noise_detection.evaluate_noisy_labels(run, state, specs)["eval/linear_noisy_top1"]
  encode = features.make_encode(run, specs)
  feats, clean = features.extract_features(run, encode, state, run.train_source)
  noisy = label_regimes.all_labels(run.train_source)
  assert (noisy != clean).mean() > 0.5
  test_feats, test_labels = features.extract_features(run, encode, state, run.test_source)
  probe = lambda labels: linear.train_linear_classifier(feats, labels, test_feats, test_labels, 10, epochs=3, lr=0.1,
                                                        batch_size=256)["top1"]
  np.testing.assert_allclose(got, probe(noisy), atol=1e-6)
  assert abs(got - probe(clean)) > 1.0
