"""Pictures of a representation: a 2-D embedding of test features and nearest-neighbour retrievals.

- `<workdir>/eval/tsne_step<N>.png`: t-SNE (van der Maaten & Hinton 2008; scikit-learn after PCA to 50 dims,
  500 iterations, exact below 500 points) or UMAP (McInnes et al. 2018) when `umap` is importable, of up to
  `max_points` test features, coloured by label, with a legend of class names (the `MAX_CLASSES` most frequent
  classes when there are more).
- `<workdir>/eval/retrieval_step<N>.png`: for a few test queries (distinct classes where possible), the top-k
  training images by cosine similarity of backbone features (as the kNN monitor, Wu et al. 2018 Sec. 3.4);
  the query in the first column, a green / red border for a neighbour of the same / a different label.

Needs matplotlib and scikit-learn (imported when used). Images are looked up by position in the source, which
is the order `features.extract_features` returns them in on one process.
"""
from __future__ import annotations

import inspect
import os
from typing import Any, Sequence

import numpy as np

from cl_jax.eval import features, knn, settings
from cl_jax.run_state import Run, TrainState
from cl_jax.schema import Field

# config.eval fields of the plots (the `tsne` protocol): points in the 2-D embedding, retrieval queries and k.
SCHEMA = {"tsne_points": Field(2000, low=3), "retrieval_queries": Field(8, low=1), "retrieval_k": Field(8, low=1)}
MAX_CLASSES = 20
_QUERY_COLOR, _SAME_COLOR, _DIFF_COLOR = "#1f77b4", "#2ca02c", "#d62728"


def _pyplot() -> Any:
  try:
    import matplotlib  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("the tsne protocol needs matplotlib; pip install matplotlib scikit-learn.") from e
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def embed_2d(features: np.ndarray, seed: int = 0) -> np.ndarray:
  """[n, d] features -> [n, 2]: UMAP if importable, else t-SNE (perplexity <= 30, PCA init) on <= 50 PCA dims."""
  x = np.asarray(features, np.float64)
  x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)   # cosine geometry, as kNN
  if len(x) < 3:
    raise ValueError(f"a 2-D embedding needs at least 3 points, got {len(x)}; use a larger test split.")
  try:
    import umap  # pylint: disable=g-import-not-at-top
    return np.asarray(umap.UMAP(n_components=2, random_state=seed).fit_transform(x))
  except ImportError:
    pass
  try:
    from sklearn.decomposition import PCA  # pylint: disable=g-import-not-at-top
    from sklearn.manifold import TSNE  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError("the tsne protocol needs scikit-learn (or umap-learn); pip install scikit-learn.") from e
  dims = min(50, x.shape[0], x.shape[1])
  if x.shape[1] > dims:
    x = PCA(n_components=dims, random_state=seed).fit_transform(x)
  perplexity = float(min(30.0, (len(x) - 1) / 3))
  iters = "max_iter" if "max_iter" in inspect.signature(TSNE).parameters else "n_iter"   # renamed in 1.5
  return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto", random_state=seed,
              method="exact" if len(x) <= 500 else "barnes_hut", **{iters: 500}).fit_transform(x)


def plot_embedding(points: np.ndarray, labels: np.ndarray, class_names: Sequence[str], path: str,
                   title: str) -> str:
  """Scatter of [n, 2] points coloured by label with a class-name legend (top MAX_CLASSES classes), as PNG."""
  plt = _pyplot()
  labels = np.asarray(labels)
  classes, counts = np.unique(labels, return_counts=True)
  shown = classes[np.argsort(-counts, kind="stable")][:MAX_CLASSES]
  cmap = plt.get_cmap("tab10" if len(shown) <= 10 else "tab20")
  fig, ax = plt.subplots(figsize=(8, 7), dpi=100)
  for i, c in enumerate(sorted(shown)):
    sel = labels == c
    name = class_names[c] if c < len(class_names) else str(c)
    ax.scatter(points[sel, 0], points[sel, 1], s=8, color=cmap(i % cmap.N), label=name, alpha=0.8,
               linewidths=0)
  if len(shown) < len(classes):
    title += f" ({len(shown)} most frequent of {len(classes)} classes)"
  ax.set_title(title)
  ax.set_xticks([])
  ax.set_yticks([])
  ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, markerscale=2, frameon=False)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def nearest_neighbours(queries: np.ndarray, memory: np.ndarray, k: int) -> np.ndarray:
  """[q, k] indices of the k most cosine-similar memory rows for each query, most similar first."""
  def unit(x):
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
  sims = unit(queries) @ unit(memory).T
  k = min(k, sims.shape[1])
  top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
  order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
  return np.take_along_axis(top, order, axis=1)


def pick_queries(labels: np.ndarray, num: int, seed: int = 0) -> np.ndarray:
  """`num` test indices in a seeded random order, one per class first, then any (deterministic)."""
  order = np.random.default_rng(seed).permutation(len(labels))
  picked, seen = [], set()
  for i in order:
    if labels[i] not in seen:
      picked.append(i)
      seen.add(labels[i])
    if len(picked) == num:
      break
  seen_index = set(picked)
  rest = [i for i in order if i not in seen_index] if len(picked) < num else []
  return np.asarray((picked + rest)[:num], np.int64)


def plot_retrievals(query_images: np.ndarray, query_labels: np.ndarray, neighbour_images: np.ndarray,
                    neighbour_labels: np.ndarray, class_names: Sequence[str], path: str, title: str) -> str:
  """Grid: query [q, H, W, 3] in column 0, its k neighbours [q, k, H, W, 3] after it; green/red = same/other label."""
  plt = _pyplot()
  q, k = neighbour_labels.shape
  fig, axes = plt.subplots(q, k + 1, figsize=(1.3 * (k + 1), 1.45 * q + 0.4), dpi=100, squeeze=False)

  def name(c):
    return class_names[c] if c < len(class_names) else str(c)

  for r in range(q):
    cells = [(query_images[r], _QUERY_COLOR, f"query: {name(query_labels[r])}")]
    cells += [(neighbour_images[r, j], _SAME_COLOR if neighbour_labels[r, j] == query_labels[r] else _DIFF_COLOR,
               name(neighbour_labels[r, j])) for j in range(k)]
    for c, (image, color, label) in enumerate(cells):
      ax = axes[r, c]
      ax.imshow(image, interpolation="nearest")
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_edgecolor(color)
        spine.set_linewidth(4)
      ax.set_title(label, fontsize=7, color=color if c else "black")
  fig.suptitle(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
  return path


def embedding_plots(run: Run, state: TrainState, specs: Any, workdir: str, step: int, *,
                    max_points: int = 2000, num_queries: int = 8, k: int = 8, seed: int = 0) -> dict[str, Any]:
  """Writes the t-SNE/UMAP and retrieval PNGs of a run; returns their paths and the retrieval precision@k (%)."""
  if not run.train_source.has_labels or run.test_source is None:
    raise ValueError(f"the tsne protocol needs labels; dataset '{run.config.dataset}' has none, use a labelled "
                     "dataset (class folders, shapes or a tfds name).")
  encode = features.make_encode(run, specs)
  memory, memory_labels = features.extract_features(run, encode, state, run.train_source,
                                                    settings.read(run.config, knn.SCHEMA).knn_train_examples)
  test, test_labels = features.extract_features(run, encode, state, run.test_source)
  names = list(run.train_source.class_names or [])
  out_dir = os.path.join(workdir, "eval")
  os.makedirs(out_dir, exist_ok=True)

  sub = np.sort(np.random.default_rng(seed).permutation(len(test))[:max_points])
  points = embed_2d(test[sub], seed)
  tsne_path = plot_embedding(points, test_labels[sub], names, os.path.join(out_dir, f"tsne_step{step}.png"),
                             f"{run.config.method.name} on {run.config.dataset}, step {step}: "
                             f"{len(sub)} test features")

  queries = pick_queries(test_labels, num_queries, seed)
  neighbours = nearest_neighbours(test[queries], memory, k)
  neighbour_labels = memory_labels[neighbours]
  precision = 100.0 * float(np.mean(neighbour_labels == test_labels[queries][:, None]))
  retrieval_path = plot_retrievals(
      np.stack([run.test_source[int(i)]["image"] for i in queries]), test_labels[queries],
      np.stack([[run.train_source[int(j)]["image"] for j in row] for row in neighbours]), neighbour_labels,
      names, os.path.join(out_dir, f"retrieval_step{step}.png"),
      f"step {step}: test queries (left) and their {neighbours.shape[1]} nearest training images by cosine "
      f"similarity; precision@{neighbours.shape[1]} {precision:.1f}%")
  return {"tsne": tsne_path, "retrieval": retrieval_path, "retrieval_precision": precision}
