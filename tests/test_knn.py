"""The kNN monitor against a direct NumPy implementation."""
import numpy as np

from cl_jax.eval import knn


def reference_scores(q, m, labels, num_classes, k, t):
  q = q / np.linalg.norm(q, axis=1, keepdims=True)
  m = m / np.linalg.norm(m, axis=1, keepdims=True)
  out = np.zeros((len(q), num_classes))
  for i, row in enumerate(q @ m.T):
    for j in np.argsort(-row)[:k]:
      out[i, labels[j]] += np.exp(row[j] / t)
  return out


def test_scores_match_reference_across_chunks():
  rng = np.random.default_rng(0)
  memory, labels = rng.normal(size=(300, 16)), rng.integers(0, 5, 300)
  queries = rng.normal(size=(70, 16))
  got = knn.knn_scores(queries, memory, labels, 5, k=20, temperature=0.1, chunk=32)
  np.testing.assert_allclose(got, reference_scores(queries, memory, labels, 5, 20, 0.1), rtol=1e-4)


def test_separable_clusters_are_classified():
  rng = np.random.default_rng(1)
  centers = rng.normal(size=(4, 8)) * 5
  labels = rng.integers(0, 4, 400)
  feats = centers[labels] + rng.normal(size=(400, 8)) * 0.3
  acc = knn.knn_accuracy(feats[300:], labels[300:], feats[:300], labels[:300], 4, k=10)
  assert acc["top1"] == 100.0
  shuffled = knn.knn_accuracy(feats[300:], rng.permutation(labels[300:]), feats[:300], labels[:300], 4, k=10)
  assert shuffled["top1"] < 60.0


def test_declared_defaults_are_the_classifier_defaults():
  """config.eval.knn_k / knn_temperature default to the classifier's k=200, T=0.07 (Wu et al. 2018; solo-learn)."""
  assert (knn.SCHEMA["knn_k"].default, knn.SCHEMA["knn_temperature"].default) == (200, 0.07)
  rng = np.random.default_rng(2)
  memory, labels, queries = rng.normal(size=(250, 8)), rng.integers(0, 3, 250), rng.normal(size=(10, 8))
  np.testing.assert_allclose(knn.knn_scores(queries, memory, labels, 3),
                             reference_scores(queries, memory, labels, 3, 200, 0.07), rtol=1e-4)
