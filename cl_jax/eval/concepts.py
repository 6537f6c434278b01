"""DCCL's concept generation on the host (Pu, Zhong & Sebe, CVPR 2023, Sec. 3.2 "Dynamic Conception Generation";
official TPCD/DCCL project_utils/infomap_cluster_utils.py): the features of the whole training split clustered
into concepts whose number is estimated, not given, as cluster ids per example (-1: outlier) and unit centroids.

- "infomap" (the paper's semi-supervised Infomap): a directed kNN graph on cosine similarity (k neighbours, self
  included, as faiss' IndexFlatIP search), an edge i -> j for each neighbour j != i with similarity >= min_sim
  (`get_links_with_label`), weighted by the similarity, except that an edge between two examples of the same
  training label is raised to i's highest neighbour similarity (max_sim=True, the official run) or to ~1
  (max_sim=False); Infomap (--two-level --directed) partitions the graph; an example with no out-edge is its own
  cluster; clusters of <= min_size examples are outliers (`cluster_by_semi_infomap`, k2). Needs the optional
  `infomap` package (pip install 'cl_jax[dccl]'). The official code compares example i's label with that of the
  example whose DATASET index equals the neighbour's rank (label_mark[j], j the rank): read here as intended, the
  neighbour's own label; unlabelled examples (label < 0) never match.
- "kmeans" (the fallback when infomap is not installed): semi-supervised k-means (GCD, Vaze et al. 2022, Sec. 3.2)
  with K estimated (`estimate_k`: GCD Sec. 3.3's labelled-accuracy criterion, then the silhouette), then the same
  min_size outlier rule.

The centroids are the means of the raw features of each cluster's members, L2-normalised (official
`generate_cluster_features` on the unnormalised features, then F.normalize). At most `max_concepts` clusters are
kept (the method state has a fixed shape): the largest, the rest become outliers.
"""
from __future__ import annotations

import dataclasses
import importlib.util

import numpy as np
import scipy.optimize

METHODS = ("auto", "infomap", "kmeans")


@dataclasses.dataclass(frozen=True)
class Concepts:
  """ids [N] int32 (-1: outlier), centroids [K, d] float32 unit rows, and how many clusters the cap dropped."""
  ids: np.ndarray
  centroids: np.ndarray
  dropped: int

  @property
  def num(self) -> int:
    return int(self.centroids.shape[0])


def have_infomap() -> bool:
  """Whether the optional `infomap` package is importable."""
  return importlib.util.find_spec("infomap") is not None


def l2n(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def knn(x: np.ndarray, k: int, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """(neighbours [N, k] int64, cosine similarities [N, k]) of unit rows `x`, most similar first (self included,
  ties by index), by exact inner products in row chunks."""
  n = x.shape[0]
  k = min(k, n)
  nbrs, sims = np.zeros((n, k), np.int64), np.zeros((n, k), np.float32)
  for s in range(0, n, chunk):
    block = x[s:s + chunk] @ x.T                                                    # [c, N]
    part = np.argpartition(-block, k - 1, axis=1)[:, :k] if k < n else np.tile(np.arange(n), (len(block), 1))
    vals = np.take_along_axis(block, part, axis=1)
    order = np.lexsort((part, -vals), axis=1)
    nbrs[s:s + chunk] = np.take_along_axis(part, order, axis=1)
    sims[s:s + chunk] = np.take_along_axis(vals, order, axis=1)
  return nbrs, sims


def semi_links(nbrs: np.ndarray, sims: np.ndarray, labels: np.ndarray, min_sim: float,
               max_sim: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The directed edges (src [E], dst [E], weight [E]) of the semi-supervised kNN graph (`get_links_with_label`)."""
  n = nbrs.shape[0]
  src = np.repeat(np.arange(n), nbrs.shape[1]).reshape(nbrs.shape)
  keep = (nbrs != src) & (sims >= min_sim)
  labels = np.asarray(labels, np.int64)
  same = (labels[:, None] >= 0) & (labels[nbrs] == labels[:, None])
  others = np.where(nbrs != src, sims, -np.inf)
  raised = np.minimum(others.max(axis=1), 1.0) if max_sim else np.full(n, 0.999999999)
  weight = np.where(same, raised[:, None], sims)
  return src[keep], nbrs[keep], weight[keep].astype(np.float64)


def infomap_partition(n: int, src: np.ndarray, dst: np.ndarray, weight: np.ndarray, seed: int = 0,
                      markov_time: float = 1.0) -> np.ndarray:
  """Module id [n] of each node by Infomap (--two-level --directed; `markov_time` > 1 gives coarser modules, 1 is
  Infomap's default and the official run's); a node with no out-edge is its own module."""
  if not have_infomap():
    raise ValueError("DCCL's clustering='infomap' needs the infomap package; pip install 'cl_jax[dccl]' (or "
                     "infomap), or set method.clustering='kmeans'.")
  import infomap  # pylint: disable=g-import-not-at-top
  options = f"--two-level --directed --silent --seed {int(seed) + 1}"
  if markov_time != 1.0:
    options += f" --markov-time {float(markov_time)}"
  im = infomap.Infomap(options)
  im.add_links(list(zip(src.tolist(), dst.tolist(), weight.tolist())))
  result = im.run()
  modules = result.modules() if hasattr(result, "modules") else im.get_modules()   # infomap >= 2.16 / older
  ids = np.full(n, -1, np.int64)
  for node, module in dict(modules).items():
    ids[int(node)] = int(module)
  lonely = np.setdiff1d(np.arange(n), np.unique(src))
  lonely = np.union1d(lonely, np.flatnonzero(ids < 0))
  ids[lonely] = ids.max(initial=0) + 1 + np.arange(len(lonely))
  return ids


def kmeans(x: np.ndarray, k: int, labels: np.ndarray | None = None, iters: int = 50, seed: int = 0,
           restarts: int = 4) -> np.ndarray:
  """Cluster ids [N] of (semi-supervised) k-means on unit rows `x` (GCD Sec. 3.2): with `labels`, examples with
  a label >= 0 stay in their class's cluster (ids 0..L-1 in label order), which starts at their mean; the other
  centroids start by k-means++ on the unlabelled examples; unlabelled examples move to the nearest centroid. The
  best of `restarts` k-means++ draws (least squared error)."""
  runs = [_kmeans_once(x, k, labels, iters, np.random.default_rng([seed, r])) for r in range(restarts)]
  return min(runs, key=lambda run: run[1])[0]


def _kmeans_once(x: np.ndarray, k: int, labels: np.ndarray | None, iters: int,
                 rng: np.random.Generator) -> tuple[np.ndarray, float]:
  x = np.asarray(x, np.float64)
  n = x.shape[0]
  labels = np.full(n, -1) if labels is None else np.asarray(labels, np.int64)
  known = np.unique(labels[labels >= 0])
  fixed = np.searchsorted(known, labels) if known.size else np.zeros(n, np.int64)
  free = labels < 0
  k = max(int(k), len(known))
  centres = np.zeros((k, x.shape[1]))
  for c, lab in enumerate(known):
    centres[c] = x[labels == lab].mean(0)
  pool = x[free] if free.sum() >= k - len(known) else x
  sq = (pool ** 2).sum(1)
  dist = np.full(len(pool), np.inf)
  if len(known):
    dist = np.min(sq[:, None] + (centres[:len(known)] ** 2).sum(1)[None, :] - 2 * pool @ centres[:len(known)].T, 1)
  for c in range(len(known), k):   # k-means++
    dist = np.maximum(dist, 0.0)
    p = dist / dist.sum() if np.isfinite(dist).all() and dist.sum() > 0 else None
    centres[c] = pool[rng.choice(len(pool), p=p)]
    dist = np.minimum(dist, ((pool - centres[c]) ** 2).sum(-1))
  assign = np.full(n, -1)
  for _ in range(iters):
    new = np.where(free, np.argmax(x @ centres.T - 0.5 * (centres ** 2).sum(1), axis=1), fixed)
    if np.array_equal(new, assign):
      break
    assign = new
    for c in range(k):
      members = assign == c
      if members.any():
        centres[c] = x[members].mean(0)
  return assign, float(((x - centres[assign]) ** 2).sum())


def labelled_accuracy(pred: np.ndarray, labels: np.ndarray) -> float:
  """Accuracy of cluster ids `pred` against `labels` under the best one-to-one cluster -> label map (Hungarian)."""
  _, p = np.unique(pred, return_inverse=True)
  _, t = np.unique(labels, return_inverse=True)
  counts = np.zeros((p.max() + 1, t.max() + 1), np.int64)
  np.add.at(counts, (p, t), 1)
  rows, cols = scipy.optimize.linear_sum_assignment(counts, maximize=True)
  return float(counts[rows, cols].sum()) / len(labels)


def silhouette(x: np.ndarray, ids: np.ndarray) -> float:
  """Mean silhouette (Rousseeuw 1987) of cluster ids `ids` on unit rows `x` under the cosine distance."""
  uniq, t = np.unique(ids, return_inverse=True)
  if len(uniq) < 2:
    return -1.0
  dist = np.maximum(1.0 - x @ x.T, 0.0)
  onehot = np.eye(len(uniq))[t]
  counts = onehot.sum(0)
  mean = dist @ onehot                                             # [n, K] summed distances to each cluster
  own = counts[t]
  a = mean[np.arange(len(t)), t] / np.maximum(own - 1, 1)
  other = np.where(onehot > 0, np.inf, mean / counts[None, :])
  b = other.min(1)
  sil = np.where(own > 1, (b - a) / np.maximum(np.maximum(a, b), 1e-12), 0.0)
  return float(sil.mean())


def estimate_k(x: np.ndarray, labels: np.ndarray, low: int, high: int, candidates: int = 16,
               tolerance: float = 0.01, sample: int = 2000, seed: int = 0) -> int:
  """The number of concepts for the k-means fallback: GCD's estimate (Vaze et al. 2022, Sec. 3.3, on a grid
  instead of Brent's method) keeps the K in [low, high] whose plain k-means best matches the labelled examples'
  labels (Hungarian accuracy, within `tolerance` of the best); that score cannot see unlabelled classes merged or
  split, so among those the K of the highest silhouette (on `sample` examples) is taken."""
  lab = labels >= 0
  grid = np.unique(np.round(np.geomspace(max(low, 2), max(high, low, 2), candidates)).astype(int))
  runs = [kmeans(x, int(k), seed=seed) for k in grid]
  scores = np.asarray([labelled_accuracy(ids[lab], labels[lab]) for ids in runs])
  pick = np.random.default_rng(seed).permutation(len(x))[:sample]
  sil = np.asarray([silhouette(x[pick], ids[pick]) if s >= scores.max() - tolerance else -np.inf
                    for ids, s in zip(runs, scores)])
  return int(grid[int(np.argmax(sil))])


def find_concepts(features: np.ndarray, labels: np.ndarray, *, method: str = "auto", k: int = 15,
                  min_sim: float = 0.6, min_size: int = 4, max_concepts: int = 1024, max_sim: bool = True,
                  markov_time: float = 1.0, seed: int = 0) -> Concepts:
  """The concepts of the training split's `features` [N, d] (raw backbone features) with training `labels` [N]
  (< 0 unlabelled): see the module docstring."""
  if method not in METHODS:
    raise ValueError(f"DCCL clustering={method!r}: unknown; use one of {', '.join(METHODS)}.")
  labels = np.asarray(labels, np.int64)
  if not (labels >= 0).any():
    raise ValueError("DCCL needs labelled examples but every training label is -1; set data.discovery with "
                     "labelled > 0, e.g. --config.data.discovery=old=0-4,labelled=0.5.")
  x = l2n(features)
  n = x.shape[0]
  if method == "auto":
    method = "infomap" if have_infomap() else "kmeans"
  if method == "infomap":
    nbrs, sims = knn(x, k)
    src, dst, w = semi_links(nbrs, sims, labels, min_sim, max_sim)
    raw = infomap_partition(n, src, dst, w, seed, markov_time)
  else:
    low = len(np.unique(labels[labels >= 0])) + 1
    high = max(low, min(max_concepts, n // (min_size + 1)))
    raw = kmeans(x, estimate_k(x, labels, low, high, seed=seed), labels, seed=seed)
  # Clusters of more than min_size examples, largest first (ties: the smaller first member), at most max_concepts.
  uniq, inverse, counts = np.unique(raw, return_inverse=True, return_counts=True)
  first = np.full(len(uniq), n)
  np.minimum.at(first, inverse, np.arange(n))
  big = np.flatnonzero(counts > min_size)
  big = big[np.lexsort((first[big], -counts[big]))]
  kept = big[:max_concepts]
  new_id = np.full(len(uniq), -1, np.int64)
  new_id[kept] = np.arange(len(kept))
  ids = new_id[inverse].astype(np.int32)
  raw_f = np.asarray(features, np.float64)
  sums = np.zeros((len(kept), raw_f.shape[1]))
  np.add.at(sums, ids[ids >= 0], raw_f[ids >= 0])
  centroids = l2n(sums / np.maximum(np.bincount(ids[ids >= 0], minlength=len(kept)), 1)[:, None])
  return Concepts(ids=ids, centroids=centroids.astype(np.float32), dropped=int(len(big) - len(kept)))
