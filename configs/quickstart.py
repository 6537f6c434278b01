"""Quick start: self-supervised pretraining on the embedded `shapes` data, on a laptop CPU in minutes.

  python -m cl_jax.main --config=configs/quickstart.py --workdir=/tmp/cl_jax_quickstart
  python -m cl_jax.main --config=configs/quickstart.py:method=simclr,runlocal --workdir=/tmp/cl_jax_q

Arguments: method=<name> (one per file in configs/quickstart_methods/), runlocal (a few steps, for smoke tests), steps=N, batch=N.
"""
from __future__ import annotations

import os

import ml_collections

from cl_jax.config_args import load_sibling, parse_arg
from cl_jax.data.augment import group

_METHODS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quickstart_methods")


def method_names() -> list[str]:
  """Methods with quick-start settings: one file each in configs/quickstart_methods/."""
  return sorted(f[:-3] for f in os.listdir(_METHODS_DIR) if f.endswith(".py") and not f.startswith("_"))


def apply_method(c: ml_collections.ConfigDict, name: str) -> None:
  """Applies the method's settings for the embedded data (method, and where it needs them augment/optim/...)."""
  if name not in method_names():
    raise ValueError(f"quickstart has no settings for method '{name}'; known: {', '.join(method_names())}.")
  load_sibling(__file__, f"quickstart_methods.{name}").apply(c)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, method="simclr", runlocal=False, steps=0, batch=256)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = ml_collections.ConfigDict()
  # zero_init_last_bn=False: with every residual branch zeroed at init this tiny net starts as a strided 1x1
  # subsampler and learns more slowly here (measured: 10.0 -> 15.9 vs 17.5 -> 23.1 kNN top-1 in 300-400 steps).
  c.model = dict(name="resnet_tiny", width=1.0, stem="imagenet", bn="sync", dtype="float32",
                 zero_init_last_bn=False)
  c.dataset = "shapes"
  # on_bad_image, holdout_frac: for --config.dataset=folder:/path (data.sources.FIELDS lists every source's fields);
  # render="mask": white shapes on black, the diagnostic where shape, size and position are the only signal.
  # label_noise ("symmetric:0.4"), coarse_labels ("shapes"), discovery ("old=0-4,labelled=0.5"): the label
  # regimes of cl_jax/data/label_regimes.py, for the training split only ("": the labels as they are).
  c.data = dict(image_size=32, num_train=10_000, num_test=2_000, seed=0, worker_count=0, on_bad_image="skip",
                holdout_frac=0.1, render="color", label_noise="", coarse_labels="", discovery="")
  # Milder than the ImageNet recipe (as SimCLR's CIFAR recipe: s=0.5, no blur): with a tiny net and few steps,
  # stronger views (scale 0.25, s=1, blur) left instance discrimination at ~3% accuracy and kNN flat.
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, scale=(0.5, 1.0), jitter_strength=0.5,
                                                         grayscale_p=0.2, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = 15   # 585 steps at batch 256: ~3 minutes for SimCLR on 2 CPU cores
  c.total_steps = a.steps
  # momentum, nesterov: read by sgd and lars only (--config.optim.name=sgd --config.optim.momentum=0.0).
  c.optim = dict(name="adamw", lr=4e-3, lr_scaling="none", weight_decay=1e-4, warmup_epochs=1, schedule="cosine",
                 b1=0.9, b2=0.999, momentum=0.9, nesterov=False)
  c.eval = dict(every=0, knn_k=200, knn_temperature=0.07, knn_train_examples=0, batch_size=500, monitors=("knn",))
  c.log_every = 20
  c.checkpoint_every = 200
  c.keep_checkpoints = 2
  c.best_metric = ""   # e.g. "eval/knn_top1": also keep the best checkpoint by it in checkpoints_best/
  c.tensorboard = True
  c.online_probe = False
  c.init_from = ""   # the workdir of a cl_jax run whose backbone starts this one (cl_jax/init_from.py)
  # num_devices 0: all; contrastive_impl "ring" rotates keys instead of gathering them (cl_jax/losses/ring.py);
  # a multi-host peer silent for peer_timeout_seconds ends the run with one line naming it (cl_jax/peers.py).
  c.parallel = dict(num_devices=0, shard_state=False, contrastive_impl="gather", peer_timeout_seconds=60.0)
  apply_method(c, a.method)   # after the defaults: a method may change augment, optim, eval ...
  if a.runlocal:
    c.data.num_train, c.data.num_test = 512, 256
    c.batch_size, c.total_steps, c.log_every, c.checkpoint_every = 64, 3, 1, 2
    c.eval.batch_size = 128
    c.optim.warmup_epochs = 0
  return c
