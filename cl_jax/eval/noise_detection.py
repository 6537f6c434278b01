"""Learning with noisy labels' evaluation (TCL, Huang et al. 2023, Sec. 4): clean-test accuracy of the method's own
classifier head, and how well its per-example cleanness scores pick out the flipped training labels (ROC-AUC
against the regime's true flags: 50 is chance, 100 perfect).

A method opts in by defining `classify(params, state, images) -> logits` (per device, inference mode) and/or
`clean_scores(state) -> [num_train] P(clean)` (host side, on the method state fetched to the host, index order; None
while it has none yet, e.g. during a warm-up). The linear probe (`--protocol=linear`) and kNN score against the
clean labels too (label_regimes.truth)."""
from __future__ import annotations

from typing import Any

import numpy as np
import sklearn.metrics

from cl_jax import parallel
from cl_jax.data import label_regimes
from cl_jax.eval import features
from cl_jax.run_state import Run, TrainState


def noise_auc(clean_scores: np.ndarray, is_noisy: np.ndarray) -> float:
  """ROC-AUC (%) of `clean_scores` (higher = cleaner) at telling clean from flipped labels; NaN if one kind only."""
  clean_scores, is_noisy = np.asarray(clean_scores, np.float64).ravel(), np.asarray(is_noisy, bool).ravel()
  if clean_scores.shape != is_noisy.shape:
    raise ValueError(f"noise_auc: {clean_scores.size} scores for {is_noisy.size} examples; give one per example.")
  if is_noisy.all() or not is_noisy.any():
    return float("nan")
  return 100.0 * float(sklearn.metrics.roc_auc_score(~is_noisy, clean_scores))


def noisy_flags(source: Any) -> np.ndarray:
  """bool [N]: which training examples' labels the data.label_noise regime flipped (index order)."""
  regimes = [r for r in label_regimes.regimes_of(source) if r.kind == "label_noise"]
  if not regimes:
    raise ValueError("the noisy_labels monitor needs label noise; set data.label_noise, e.g. "
                     "--config.data.label_noise=symmetric:0.4.")
  r = regimes[0]
  return np.asarray(r.fields(label_regimes.all_labels(r.source), np.arange(len(r)))["is_noisy"], bool)


def evaluate_noisy_labels(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """eval/head_top1 (clean test accuracy of method.classify) and eval/noise_auc (method.clean_scores against the
  flipped flags of the training split), each where the method defines it."""
  method, result = run.method, {}
  flags = noisy_flags(run.train_source)
  if not hasattr(method, "classify") and not hasattr(method, "clean_scores"):
    raise ValueError(f"the noisy_labels monitor needs {type(method).__name__} to define classify(params, state, "
                     "images) or clean_scores(state); use the knn or linear evaluation for this method.")
  if hasattr(method, "classify"):
    if "encode:classify" not in run.cache:
      run.cache["encode:classify"] = features.make_encode(run, specs, "classify")
    logits, labels = features.extract_features(run, run.cache["encode:classify"], state, run.test_source)
    result["eval/head_top1"] = 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels))
  if hasattr(method, "clean_scores"):
    scores = method.clean_scores(parallel.to_host(state["method_state"]))
    if scores is not None:
      result["eval/noise_auc"] = noise_auc(scores, flags)
  return result
