"""Generalized category discovery's evaluation (Vaze et al. 2022, Sec. 4.1 and Appendix; the official
sgvaze/generalized-category-discovery `split_cluster_acc_v2` and `ss_k_means`): semi-supervised k-means over the
training split's features, then clustering accuracy of the unlabelled examples under the best one-to-one matching of
clusters to classes (Hungarian), reported on All, Old and New classes.

The matching is computed once over all the unlabelled examples and then scored separately on the examples of old
and of new classes (GCD's v2 protocol; the v1 protocol matched Old and New separately, which flatters New).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import scipy.optimize
import sklearn.cluster

from cl_jax.data import label_regimes
from cl_jax.eval import features
from cl_jax.run_state import Run, TrainState


def cluster_accuracy(y_true: np.ndarray, y_pred: np.ndarray, is_old: np.ndarray) -> dict[str, float]:
  """{"all", "old", "new"} accuracy (%) of cluster ids `y_pred` against classes `y_true` under the one-to-one map
  of clusters to classes that maximises the number of matches over all examples (scipy's linear_sum_assignment);
  `is_old` marks the examples of old classes. An empty subset scores NaN."""
  y_true, y_pred, is_old = (np.asarray(a).ravel() for a in (y_true, y_pred, is_old))
  if not len(y_true) == len(y_pred) == len(is_old):
    raise ValueError(f"cluster_accuracy: {len(y_true)} labels, {len(y_pred)} predictions and {len(is_old)} "
                     "old-class flags; pass one of each per example.")
  classes, t = np.unique(y_true, return_inverse=True)
  clusters, p = np.unique(y_pred, return_inverse=True)
  counts = np.zeros((len(clusters), len(classes)), np.int64)
  np.add.at(counts, (p, t), 1)
  rows, cols = scipy.optimize.linear_sum_assignment(counts, maximize=True)
  mapped = np.full(len(clusters), -1)
  mapped[rows] = cols
  hit = mapped[p] == t

  def pct(mask):
    return 100.0 * float(hit[mask].mean()) if mask.any() else float("nan")

  return {"all": pct(np.ones_like(hit)), "old": pct(is_old.astype(bool)), "new": pct(~is_old.astype(bool))}


def ss_kmeans(x: np.ndarray, labels: np.ndarray, k: int, *, iters: int = 100, seed: int = 0) -> np.ndarray:
  """Cluster ids [N] of semi-supervised k-means (GCD Sec. 3.2) on L2-normalised `x`: examples with a label >= 0
  stay in their class's cluster, which starts at their mean; the other k - #labelled-classes centroids start by
  k-means++ on the unlabelled examples; unlabelled examples move to the nearest centroid until nothing changes."""
  x = np.asarray(x, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  labels = np.asarray(labels, np.int64)
  known = np.unique(labels[labels >= 0])
  if len(known) > k:
    raise ValueError(f"ss_kmeans: {len(known)} labelled classes but k={k}; k must count every class.")
  if known.size and known.max() >= k:
    raise ValueError(f"ss_kmeans: label {known.max()} >= k={k}; labels must be class ids below k.")
  free = np.setdiff1d(np.arange(k), known)
  unl = labels < 0
  centres = np.zeros((k, x.shape[1]))
  for c in known:
    centres[c] = x[labels == c].mean(0)
  if free.size:
    pool = x[unl] if unl.sum() >= free.size else x
    centres[free], _ = sklearn.cluster.kmeans_plusplus(pool, n_clusters=free.size, random_state=seed)
  assign = np.where(unl, -1, labels)
  for _ in range(iters):
    new = np.where(unl, np.argmax(x @ centres.T - 0.5 * (centres ** 2).sum(1), axis=1), labels)
    if np.array_equal(new, assign):
      break
    assign = new
    for c in range(k):
      if (assign == c).any():
        centres[c] = x[assign == c].mean(0)
  return assign


def evaluate_discovery(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """eval/cluster_acc_{all,old,new}: semi-supervised k-means with K = the true number of classes on the backbone
  features of the training split (labelled examples anchor their classes), scored on its unlabelled examples."""
  regimes = [r for r in label_regimes.regimes_of(run.train_source) if r.kind == "discovery"]
  if not regimes:
    raise ValueError("the discovery monitor needs a category-discovery split; set data.discovery, e.g. "
                     "--config.data.discovery=old=0-4,labelled=0.5.")
  if "encode" not in run.cache:
    run.cache["encode"] = features.make_encode(run, specs)
  out = features.extract(run, run.cache["encode"], state, run.train_source, ("label", "true_label", "is_old_class"))
  k = int(regimes[0].num_classes)
  pred = ss_kmeans(out["features"], out["label"], k, seed=int(run.config.seed))
  unl = out["label"] < 0
  acc = cluster_accuracy(out["true_label"][unl], pred[unl], out["is_old_class"][unl])
  return {f"eval/cluster_acc_{part}": v for part, v in acc.items()}
