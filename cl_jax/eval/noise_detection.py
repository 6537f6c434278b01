"""Learning with noisy labels' evaluation (TCL, Huang et al. 2023, Sec. 4): clean-test accuracy of the method's own
classifier head, and how well its per-example cleanness scores pick out the flipped training labels (ROC-AUC
against the regime's true flags: 50 is chance, 100 perfect).

A method opts in by defining `classify(params, state, images) -> logits` (per device, inference mode) and/or
`clean_scores(state) -> [num_train] P(clean)` (host side, on the method state fetched to the host, index order; None
while it has none yet, e.g. during a warm-up). With eval.noisy_linear_epochs > 0 a linear probe on the frozen
features is fitted to the noisy training labels (all a user of noisy data has) and scored on the clean test labels:
eval/linear_noisy_top1, what the representation keeps under the noise. (`--protocol=linear` and kNN fit the clean
training labels: label_regimes.truth.)"""
from __future__ import annotations

from typing import Any

import numpy as np
import sklearn.metrics

from cl_jax import parallel
from cl_jax.data import label_regimes
from cl_jax.eval import features, linear, settings
from cl_jax.run_state import Run, TrainState
from cl_jax.schema import Field

SCHEMA = {"noisy_linear_epochs": Field(0, low=0)}   # 0: no noisy-label linear probe (it extracts the training split)


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
  epochs = int(settings.read(run.config, SCHEMA).noisy_linear_epochs)
  if not hasattr(method, "classify") and not hasattr(method, "clean_scores") and not epochs:
    raise ValueError(f"the noisy_labels monitor needs {type(method).__name__} to define classify(params, state, "
                     "images) or clean_scores(state); or set eval.noisy_linear_epochs (e.g. 20) for a linear probe "
                     "on the noisy labels.")
  if hasattr(method, "classify"):
    if "encode:classify" not in run.cache:
      run.cache["encode:classify"] = features.make_encode(run, specs, "classify")
    logits, labels = features.extract_features(run, run.cache["encode:classify"], state, run.test_source)
    result["eval/head_top1"] = 100.0 * float(np.mean(np.argmax(logits, axis=1) == labels))
  if hasattr(method, "clean_scores"):
    scores = method.clean_scores(parallel.to_host(state["method_state"]))
    if scores is not None:
      result["eval/noise_auc"] = noise_auc(scores, flags)
  if epochs:
    result["eval/linear_noisy_top1"] = noisy_linear_probe(run, state, specs, epochs)
  return result


def noisy_linear_probe(run: Run, state: TrainState, specs: Any, epochs: int) -> float:
  """Clean-test top-1 (%) of a linear probe (fast mode, eval.linear_* settings) fitted to the frozen features of
  the training split with its noisy labels, the batch's "label" (TCL, Huang et al. 2023, Sec. 4)."""
  if "encode" not in run.cache:   # the features encoder the knn monitor compiles too
    run.cache["encode"] = features.make_encode(run, specs)
  encode = run.cache["encode"]
  train = features.extract(run, encode, state, run.train_source, ("label",))
  test_feats, test_labels = features.extract_features(run, encode, state, run.test_source)
  e = settings.read(run.config, linear.SCHEMA)
  return linear.train_linear_classifier(train["features"], train["label"], test_feats, test_labels,
                                        features.num_classes(run), epochs=epochs, lr=float(e.linear_lr),
                                        batch_size=int(e.linear_batch_size),
                                        weight_decay=float(e.linear_weight_decay), seed=int(e.linear_seed))["top1"]
