"""Evaluation monitors the loop runs at step 0, every eval.every steps and at the end, and the config.eval schema.

A monitor is fn(run, state, specs) -> {"eval/...": %}; config.eval.monitors picks them by name. `validate_eval`
checks config.eval once at start-up against the fields every evaluator declares (each module's SCHEMA).
"""
from __future__ import annotations

from typing import Any, Callable

import ml_collections

from cl_jax.eval import (clustering, embedding_plot, features, fine_retrieval, knn, linear, noise_detection,
                         retrieval, segmentation, settings, zeroshot)
from cl_jax.registry import Registry
from cl_jax.run_state import Run, TrainState
from cl_jax.schema import Field, validate

Monitor = Callable[[Run, TrainState, Any], dict[str, float]]
MONITORS: Registry[Monitor] = Registry("eval monitor")

# config.eval fields of the loop's monitoring: every=0 evaluates at step 0 and the end only, -1 never.
SCHEMA = {"every": Field(0, low=-1), "monitors": Field(("knn",))}
# Every config.eval field, by the evaluator that declares it (attributes and the plots read knn's too).
EVAL_SCHEMA = {**SCHEMA, **features.SCHEMA, **knn.SCHEMA, **linear.SCHEMA, **embedding_plot.SCHEMA,
               **zeroshot.SCHEMA, **retrieval.SCHEMA, **segmentation.SCHEMA, **noise_detection.SCHEMA}

# Progress-line names of the monitors' metrics.
EVAL_NAMES = {"eval/knn_top1": "kNN top-1", "eval/knn_top5": "kNN top-5",
              "eval/knn_top1_student": "student kNN top-1", "eval/knn_top5_student": "student kNN top-5",
              "eval/knn_top1_teacher": "teacher kNN top-1", "eval/knn_top5_teacher": "teacher kNN top-5",
              "eval/zeroshot_top1": "zero-shot top-1",
              "eval/zeroshot_top5": "zero-shot top-5", "eval/zeroshot_top1_seen": "zero-shot top-1 (seen pairs)",
              "eval/zeroshot_top1_unseen": "zero-shot top-1 (held-out pairs)",
              "eval/zeroshot_top1_seen_colours": "zero-shot top-1 (held-out pairs' shapes, seen colours)",
              **{f"eval/{d}_r{k}": f"{d.replace('2', '->')} R@{k}" for d in ("i2t", "t2i") for k in retrieval.KS},
              **{f"eval/recall_at_{k}": f"fine R@{k}" for k in fine_retrieval.KS},
              "eval/head_top1": "head top-1 (clean test)", "eval/noise_auc": "noise-detection AUC",
              "eval/linear_noisy_top1": "linear probe on noisy labels (clean test)",
              **{f"eval/cluster_acc_{p}": f"clustering acc. ({p})" for p in ("all", "old", "new")},
              "eval/miou": "mIoU", "eval/miou_objects": "mIoU (objects)", "eval/pixel_acc": "pixel acc.",
              "eval/miou_unseen": "mIoU (held-out classes)",
              "eval/miou_seen": "mIoU (seen classes)", "eval/pixel_acc_unseen_pairs": "pixel acc. (held-out pairs)",
              "eval/pixel_acc_seen_pairs": "pixel acc. (seen pairs)"}


def validate_eval(config: ml_collections.ConfigDict) -> dict[str, Any]:
  """config.eval over every evaluator's declared defaults (None: the default); an unknown field, a value out of
  range or an unknown monitor fails with one line."""
  section = dict(config.get("eval", None) or {})
  values = validate("eval", {k: v for k, v in section.items() if v is not None or k not in EVAL_SCHEMA},
                    EVAL_SCHEMA, ignore=())
  if isinstance(values["monitors"], str):
    raise ValueError(f"eval.monitors={values['monitors']!r}: must be a tuple of names, e.g. ('knn',).")
  for name in values["monitors"]:
    get_monitor(name)
  return values


def needs_test_split(train_source: Any) -> bool:
  """Whether a test split is built: labels (kNN, zero-shot) or captions (retrieval) give the monitors work."""
  return bool(train_source.has_labels) or hasattr(train_source, "captions_of")


def get_monitor(name: str) -> Monitor:
  """The monitor registered as `name` (one line listing the known ones if there is none)."""
  return MONITORS.get(name)


def evaluate_knn(run: Run, encode: features.Encode, state: TrainState) -> dict[str, float]:
  """kNN top-1/top-5 (%) of test-split features against the train split as memory."""
  e = settings.read(run.config, knn.SCHEMA)
  memory, memory_labels = features.extract_features(run, encode, state, run.train_source, e.knn_train_examples)
  queries, query_labels = features.extract_features(run, encode, state, run.test_source)
  acc = knn.knn_accuracy(queries, query_labels, memory, memory_labels, features.num_classes(run),
                         k=e.knn_k, temperature=e.knn_temperature)
  return {"eval/knn_top1": acc["top1"], "eval/knn_top5": acc["top5"]}


@MONITORS.register("knn")
def knn_monitor(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """Weighted kNN (Wu et al. 2018) of test features against train features (the spine's monitor)."""
  if "encode" not in run.cache:
    run.cache["encode"] = features.make_encode(run, specs)
  result = evaluate_knn(run, run.cache["encode"], state)
  # A method with a second network worth evaluating names it: {suffix: method fn}, e.g. DINO's student next to
  # its teacher ({"student": "encode_student"} -> eval/knn_top1_student).
  for suffix, fn in getattr(run.method, "knn_also", {}).items():
    key = f"encode:{fn}"
    if key not in run.cache:
      run.cache[key] = features.make_encode(run, specs, fn)
    result.update({f"{k}_{suffix}": v for k, v in evaluate_knn(run, run.cache[key], state).items()})
  return result


@MONITORS.register("zeroshot")
def zeroshot_monitor(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """Zero-shot top-1/top-5 (CLIP, Radford et al. 2021, Sec. 3.1) of the test split, as a training monitor."""
  return zeroshot.evaluate_zeroshot(run, state, specs)


@MONITORS.register("retrieval")
def retrieval_monitor(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """Retrieval recall@1/5/10 both ways on the test split's captions, as a training monitor."""
  return retrieval.evaluate_retrieval(run, state, specs)


@MONITORS.register("fine_recall")
def fine_recall_monitor(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """Recall@1/2/5/10 of test images retrieving test images of their fine label (MaskCon's protocol)."""
  return fine_retrieval.evaluate_fine_recall(run, state, specs)


@MONITORS.register("noisy_labels")
def noisy_labels_monitor(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """Clean-test accuracy of the method's classifier head and the noise-detection ROC-AUC of its cleanness scores."""
  return noise_detection.evaluate_noisy_labels(run, state, specs)


@MONITORS.register("discovery")
def discovery_monitor(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """Clustering accuracy (All / Old / New) of semi-supervised k-means on the training split (GCD's protocol)."""
  return clustering.evaluate_discovery(run, state, specs)


@MONITORS.register("segmentation")
def segmentation_monitor(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """Open-vocabulary segmentation of the test split's masks against class prompts: mIoU, pixel accuracy, held-out
  classes and pairs (cl_jax/eval/segmentation.py)."""
  return segmentation.evaluate_segmentation(run, state, specs)
