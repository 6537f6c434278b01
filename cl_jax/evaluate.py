"""Offline evaluation of a trained workdir (its latest checkpoint):

  python -m cl_jax.evaluate --workdir=/tmp/cl_jax_quickstart --protocol=linear          # --nofast: with augmentation
  python -m cl_jax.evaluate --workdir=/tmp/cl_jax_quickstart --protocol=knn --config.eval.knn_k=20
  python -m cl_jax.evaluate --workdir=/tmp/cl_jax_quickstart --protocol=tsne            # PNGs in <workdir>/eval/
  python -m cl_jax.evaluate --workdir=/tmp/cl_jax_quickstart --protocol=attributes  # shape/colour/size/... kNN
  python -m cl_jax.evaluate --workdir=/tmp/h_clip --protocol=zeroshot     # language-image runs (clip, siglip, unicl)
  python -m cl_jax.evaluate --workdir=/tmp/h_clip --protocol=retrieval    # image<->text recall@1/5/10
  python -m cl_jax.evaluate --workdir=/tmp/q_fdt --protocol=fdt_tokens    # FDT: what the discrete tokens fire for
  python -m cl_jax.evaluate --workdir=/tmp/q_scenes --protocol=segmentation  # dense methods on shapes_scenes: mIoU

linear and knn append {"step", "eval/<protocol>_top1", "eval/<protocol>_top5"} to <workdir>/metrics.jsonl;
attributes appends eval/attr_<name> per attribute of the embedded shapes; zeroshot appends eval/zeroshot_top1/_top5
(and _top1_unseen/_seen/_seen_colours with held-out pairs), retrieval eval/{i2t,t2i}_r{1,5,10}.
`--config.eval.<name>=value` overrides the run's config.eval for this evaluation (names in EVAL_OPTIONS);
`--num_test=N` evaluates on the first N test examples instead of the run's data.num_test (the embedded data draws
any number, deterministically: a larger split shrinks the sampling noise of a small subset such as held-out pairs).
"""
from __future__ import annotations

import sys
from typing import Any, Callable

import ml_collections
from absl import app, flags, logging
from ml_collections import config_dict, config_flags

from cl_jax.registry import Registry

# config.eval fields that may be overridden on the command line, and their types (this module imports no JAX
# before a bad --protocol fails). Their defaults are declared by the evaluators (cl_jax.eval.monitors.EVAL_SCHEMA).
EVAL_OPTIONS: dict[str, type] = {
    "linear_fast": bool, "linear_epochs": int, "linear_lr": float, "linear_batch_size": int,
    "linear_weight_decay": float, "linear_seed": int, "knn_k": int, "knn_temperature": float,
    "knn_train_examples": int, "tsne_points": int, "retrieval_queries": int, "retrieval_k": int,
    "batch_size": int, "image_size": int, "crop_frac": float, "retrieval_examples": int,
    "seg_background": str, "seg_threshold": float, "seg_logit_scale": float, "seg_examples": int,
    "seg_png_examples": int,
}


Protocol = Callable[..., tuple[dict[str, float], str]]   # (run, state, specs, workdir, step) -> (metrics, line)
PROTOCOLS: Registry[Protocol] = Registry("protocol")


@PROTOCOLS.register("linear")
def _linear(run, state, specs, workdir, step) -> tuple[dict[str, float], str]:
  """Linear probe on frozen features (cl_jax.eval.linear); fast mode by default on CPU."""
  del workdir
  import jax  # pylint: disable=g-import-not-at-top
  from cl_jax.eval import linear, settings  # pylint: disable=g-import-not-at-top

  e = settings.read(run.config, linear.SCHEMA)
  fast = jax.default_backend() == "cpu" if e.linear_fast is None else bool(e.linear_fast)
  epochs = e.linear_epochs or (100 if fast else 90)
  lr, batch = e.linear_lr, e.linear_batch_size
  acc = linear.linear_eval(run, state, specs, fast=fast, epochs=epochs, lr=lr, batch_size=batch,
                           seed=e.linear_seed, weight_decay=e.linear_weight_decay)
  line = (f"step {step}: linear top-1 {acc['top1']:.2f}% (top-5 {acc['top5']:.2f}%) | "
          f"{'fast (precomputed features)' if fast else 'full (augmented)'}, {epochs} epochs, lr {lr:g}, batch {batch}")
  return {"eval/linear_top1": acc["top1"], "eval/linear_top5": acc["top5"]}, line


@PROTOCOLS.register("knn")
def _knn(run, state, specs, workdir, step) -> tuple[dict[str, float], str]:
  """Weighted kNN of test features against the train split (Wu et al. 2018), as the training monitor."""
  del workdir
  from cl_jax.eval import features, knn, monitors, settings  # pylint: disable=g-import-not-at-top

  acc = monitors.evaluate_knn(run, features.make_encode(run, specs), state)
  e = settings.read(run.config, knn.SCHEMA)
  line = (f"step {step}: kNN top-1 {acc['eval/knn_top1']:.2f}% (top-5 {acc['eval/knn_top5']:.2f}%) | "
          f"k={e.knn_k}, T={e.knn_temperature:g}")
  return acc, line


@PROTOCOLS.register("attributes")
def _attributes(run, state, specs, workdir, step) -> tuple[dict[str, float], str]:
  """kNN top-1 per attribute of the embedded shapes (shape, colour, size, position, background): shortcut check."""
  del workdir
  from cl_jax.eval import attributes, knn, settings  # pylint: disable=g-import-not-at-top

  m = attributes.evaluate_attributes(run, state, specs)
  base = attributes.chance(run.test_source)
  e = settings.read(run.config, knn.SCHEMA)
  line = (f"step {step}: kNN top-1 by attribute: "
          + ", ".join(f"{n} {m[f'eval/attr_{n}']:.2f}% (chance {base[n]:.1f})" for n in run.test_source.attributes)
          + f" | k={e.knn_k}, T={e.knn_temperature:g}")
  return m, line


@PROTOCOLS.register("tsne")
def _tsne(run, state, specs, workdir, step) -> tuple[dict[str, float], str]:
  """t-SNE/UMAP and nearest-neighbour retrieval PNGs under <workdir>/eval/ (no metrics row)."""
  from cl_jax.eval import embedding_plot, settings  # pylint: disable=g-import-not-at-top

  e = settings.read(run.config, embedding_plot.SCHEMA)
  out = embedding_plot.embedding_plots(run, state, specs, workdir, step, max_points=e.tsne_points,
                                       num_queries=e.retrieval_queries, k=e.retrieval_k)
  line = (f"step {step}: wrote {out['tsne']} and {out['retrieval']} | retrieval precision@"
          f"{e.retrieval_k} {out['retrieval_precision']:.1f}%")
  return {}, line


# The zero-shot line's held-out-pair parts (metric, wording), in order.
ZEROSHOT_PARTS = (("eval/zeroshot_top1_unseen", "unseen compositions"),
                  ("eval/zeroshot_top1_seen", "seen compositions"),
                  ("eval/zeroshot_top1_seen_colours", "their shapes in seen colours"))


@PROTOCOLS.register("zeroshot")
def _zeroshot(run, state, specs, workdir, step) -> tuple[dict[str, float], str]:
  """Zero-shot classification of the test split (CLIP Sec. 3.1): class names x prompt templates."""
  del workdir
  from cl_jax.eval import zeroshot  # pylint: disable=g-import-not-at-top

  m = zeroshot.evaluate_zeroshot(run, state, specs)
  line = (f"step {step}: zero-shot top-1 {m['eval/zeroshot_top1']:.2f}% (top-5 {m['eval/zeroshot_top5']:.2f}%)"
          + "".join(f", {name} {m[k]:.2f}%" for k, name in ZEROSHOT_PARTS if k in m)
          + f" | {len(zeroshot.default_templates(run))} prompt templates")
  return m, line


@PROTOCOLS.register("retrieval")
def _retrieval(run, state, specs, workdir, step) -> tuple[dict[str, float], str]:
  """Image-to-text and text-to-image recall@1/5/10 on the test split's captions."""
  del workdir
  from cl_jax.eval import retrieval  # pylint: disable=g-import-not-at-top

  m = retrieval.evaluate_retrieval(run, state, specs)
  line = (f"step {step}: " + ", ".join(f"{d} R@{k} {m[f'eval/{d}_r{k}']:.2f}%" for d in ("i2t", "t2i")
                                       for k in retrieval.KS))
  return m, line


@PROTOCOLS.register("fdt_tokens")
def _fdt_tokens(run, state, specs, workdir, step) -> tuple[dict[str, float], str]:
  """FDT runs: dictionary entries active on the test split, and the words / attributes the frequent ones fire for
  (a table printed and written with a PNG under <workdir>/eval/)."""
  from cl_jax.eval import fdt_tokens  # pylint: disable=g-import-not-at-top

  return fdt_tokens.report(run, state, specs, workdir, step)


@PROTOCOLS.register("segmentation")
def _segmentation(run, state, specs, workdir, step) -> tuple[dict[str, float], str]:
  """Open-vocabulary segmentation of the test split (mIoU, pixel accuracy, held-out classes / pairs) and a PNG of
  images, ground-truth and predicted masks under <workdir>/eval/."""
  import os  # pylint: disable=g-import-not-at-top

  from cl_jax.eval import monitors, segmentation, settings  # pylint: disable=g-import-not-at-top

  seg: dict = {}
  m = segmentation.evaluate_segmentation(run, state, specs, out=seg)
  num = settings.read(run.config, segmentation.SCHEMA).seg_png_examples
  png = segmentation.write_png(os.path.join(workdir, "eval", f"segmentation_{step}.png"), run, seg, num) if num else ""
  line = (f"step {step}: " + ", ".join(f"{monitors.EVAL_NAMES[k]} {v:.2f}%" for k, v in m.items())
          + f" | {len(seg['names'])} classes, background by {seg['mode']}, {len(seg['pred'])} images"
          + (f" | wrote {png}" if png else ""))
  return m, line


def _monitor_protocol(name: str, doc: str) -> Protocol:
  """A protocol that runs the training monitor `name` and prints its figures on one line."""
  def protocol(run, state, specs, workdir, step) -> tuple[dict[str, float], str]:
    del workdir
    from cl_jax.eval import monitors  # pylint: disable=g-import-not-at-top

    m = monitors.get_monitor(name)(run, state, specs)
    return m, f"step {step}: " + ", ".join(f"{monitors.EVAL_NAMES.get(k, k)} {v:.2f}%" for k, v in m.items())
  protocol.__doc__ = doc
  return protocol


for _name, _doc in (("fine_recall", "Recall@1/2/5/10 on fine labels of the test split (MaskCon's protocol)."),
                    ("noisy_labels", "Clean-test accuracy of the classifier head and noise-detection ROC-AUC (TCL)."),
                    ("discovery", "Clustering accuracy All/Old/New on the training split (GCD's protocol).")):
  PROTOCOLS.register(_name)(_monitor_protocol(_name, _doc))


def check_labels(config: ml_collections.ConfigDict, protocol: str) -> None:
  """Fails in one line, before anything is compiled, when the run's dataset has no labels to evaluate with."""
  from cl_jax.data import sources  # pylint: disable=g-import-not-at-top

  data_cfg = config.data.copy_and_resolve_references()
  with data_cfg.unlocked():
    data_cfg.dataset = config.dataset
  if not sources.get_source(data_cfg, "train").has_labels:
    raise ValueError(f"the {protocol} protocol needs labels; dataset '{config.dataset}' has none (a flat folder?), "
                     "evaluate a run trained on class folders (root/<class>/*.jpg), shapes or a tfds dataset.")


def run_protocol(protocol: str, run: Any, state: Any, specs: Any, step: int, workdir: str,
                 stream: Any = None, name_test_split: bool = False) -> dict[str, float]:
  """Runs `protocol` on a loaded run, appends its metrics to <workdir>/metrics.jsonl and prints one line (ending
  with the test split's size when `name_test_split`)."""
  from cl_jax import reporting  # pylint: disable=g-import-not-at-top

  metrics, line = PROTOCOLS.get(protocol)(run, state, specs, workdir, step)
  if name_test_split and run.test_source is not None:
    line += f" | test split: {len(run.test_source)} examples"
  reporter = reporting.Reporter(workdir, run.total_steps, tensorboard=False, stream=stream)
  try:
    if metrics:
      reporter.write(step, metrics)
    reporter.say(line)
  finally:
    reporter.close()
  return metrics


CHECKPOINTS = ("latest", "best")


def evaluate(workdir: str, protocol: str, overrides: ml_collections.ConfigDict | None = None,
             fast: bool | None = None, stream: Any = None, checkpoint: str = "latest",
             num_test: int | None = None) -> dict[str, float]:
  """Loads the latest (or the best-metric) checkpoint of `workdir` (config.eval overridden by `overrides.eval`,
  the test split cut to its first `num_test` examples when given) and runs `protocol`."""
  PROTOCOLS.get(protocol)
  if checkpoint not in CHECKPOINTS:
    raise ValueError(f"Unknown --checkpoint={checkpoint!r}; use one of: {', '.join(CHECKPOINTS)}.")
  if num_test is not None and (isinstance(num_test, bool) or not isinstance(num_test, int) or num_test < 1):
    raise ValueError(f"--num_test={num_test}: must be a whole number >= 1 (test examples to evaluate on); "
                     "leave it out for the run's own test split.")
  from cl_jax import train, workdir as workdir_lib  # pylint: disable=g-import-not-at-top

  config = workdir_lib.load_config(workdir)
  with config.unlocked():
    for name, value in (overrides.eval.items() if overrides is not None else ()):
      if value is not None:
        config.eval[name] = value
    if fast is not None:
      config.eval.linear_fast = bool(fast)
    if num_test is not None:
      config.data.num_test = num_test
  check_labels(config, protocol)
  run, state, specs, step = train.load_run(workdir, config, best=checkpoint == "best")
  return run_protocol(protocol, run, state, specs, step, workdir, stream, name_test_split=num_test is not None)


def define_flags() -> None:
  """The command-line flags (defined only when run as a program, so importing this module defines none)."""
  config_flags.DEFINE_config_dict(
      "config", ml_collections.ConfigDict({"eval": {k: config_dict.placeholder(t) for k, t in
                                                    EVAL_OPTIONS.items()}}),
      "Overrides of the run's evaluation settings, e.g. --config.eval.linear_epochs=50.")
  flags.DEFINE_string("workdir", None, "Workdir of a trained run (config.json + checkpoints/).")
  flags.DEFINE_string("protocol", "linear", f"Evaluation protocol: {', '.join(PROTOCOLS.names())}.")
  flags.DEFINE_bool("fast", None, "linear: train on precomputed centre-crop features (default on CPU); "
                    "--nofast trains on random-resized crops each epoch.")
  flags.DEFINE_string("checkpoint", "latest", "latest | best (the best-metric checkpoint kept in "
                      "checkpoints_best/ when the run set config.best_metric).")
  flags.DEFINE_integer("num_test", None, "Evaluate on the first N examples of the test split instead of the run's "
                       "data.num_test (the embedded data draws any number).")
  flags.mark_flags_as_required(["workdir"])


def main(argv: list[str]) -> None:
  """Entry point: evaluates --workdir with --protocol; bad input ends with one `error:` line and exit code 1."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments {argv[1:]}; pass --workdir=... --protocol=...")
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # keep orbax/absl chatter out of the result line
  try:
    PROTOCOLS.get(flags.FLAGS.protocol)       # fail before importing JAX
    from cl_jax import parallel  # pylint: disable=g-import-not-at-top
    parallel.initialize_distributed()
    evaluate(flags.FLAGS.workdir, flags.FLAGS.protocol, flags.FLAGS.config, flags.FLAGS.fast,
             checkpoint=flags.FLAGS.checkpoint, num_test=flags.FLAGS.num_test)
  except (ValueError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  define_flags()
  app.run(main)
