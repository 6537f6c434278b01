"""Which attributes a representation encodes: weighted kNN top-1 per labelled attribute (shape, colour, size,
position, background of the embedded `shapes` data).

Self-supervised methods keep what survives their views and may suppress harder features (Chen, Luo, Li 2021,
"Intriguing Properties of Contrastive Losses", Sec. 4: feature suppression). On `shapes` the class is the shape;
colour, size, position and background texture are nuisances, so this probe shows whether a run learnt the shape
or a shortcut.
"""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from cl_jax.eval import features, knn, settings
from cl_jax.run_state import Run, TrainState


def attribute_knn(queries: np.ndarray, query_attrs: Mapping[str, np.ndarray], memory: np.ndarray,
                  memory_attrs: Mapping[str, np.ndarray], k: int = 200, temperature: float = 0.07
                  ) -> dict[str, float]:
  """kNN top-1 (%) of each attribute: one neighbour search, then each attribute's labels vote."""
  names = list(memory_attrs)
  num_values = 1 + max(int(max(np.max(memory_attrs[n]), np.max(query_attrs[n]))) for n in names)
  scores = knn.knn_scores(queries, memory, np.stack([memory_attrs[n] for n in names]), num_values, k=k,
                          temperature=temperature)                    # [A, q, num_values]
  return {n: 100.0 * float(np.mean(np.argmax(scores[i], axis=1) == np.asarray(query_attrs[n])))
          for i, n in enumerate(names)}


def check_source(source: Any, dataset: str) -> None:
  """One-line error when the dataset has no per-example attributes to probe."""
  if not getattr(source, "attributes", None):
    raise ValueError(f"the attributes protocol needs per-example attributes; dataset '{dataset}' has only class "
                     "labels (use the knn or linear protocol), or train on the embedded 'shapes' data.")


def chance(source: Any) -> dict[str, float]:
  """Top-1 (%) of always answering an attribute's most frequent value in the test split."""
  return {name: 100.0 * float(np.max(np.bincount(source.attribute_values(name))) / len(source))
          for name in source.attributes}


def evaluate_attributes(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """{"eval/attr_<name>": kNN top-1 %} of test-split features against the train split, per attribute."""
  check_source(run.train_source, run.config.dataset)
  e = settings.read(run.config, knn.SCHEMA)
  encode = features.make_encode(run, specs)
  # As the kNN monitor: the train split (or its first eval.knn_train_examples) is the memory.
  memory, _ = features.extract_features(run, encode, state, run.train_source, e.knn_train_examples)
  queries, _ = features.extract_features(run, encode, state, run.test_source)
  names = run.train_source.attributes
  acc = attribute_knn(queries, {n: run.test_source.attribute_values(n) for n in names}, memory,
                      {n: run.train_source.attribute_values(n)[:len(memory)] for n in names},
                      k=e.knn_k, temperature=e.knn_temperature)
  return {f"eval/attr_{n}": v for n, v in acc.items()}
