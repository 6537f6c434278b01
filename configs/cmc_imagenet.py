"""CMC on ImageNet (Tian et al. 2020, Sec. 4.1-4.2; official HobbitLong/CMC train_CMC.py, model resnet50v1).

Two ResNet-50 halves (width 0.5: one on L, one on ab of Lab, each with its own linear 128-d L2-normalised
embedding), a memory bank per view of the 1,281,167 training images (momentum 0.5) split by rows over devices,
NCE with K = 16,384 noise rows and temperature 0.07 (`:softmax` for the official --softmax variant), SGD lr 0.03
(momentum 0.9, weight decay 1e-4), batch 128 (the official default; lr not scaled), 240 epochs with lr x 0.1 at
120, 160 and 200; one crop per image: random resized crop (0.08, 1) for ResNets, flip, no colour jitter (the
channels are the views). Linear evaluation reads both halves' features concatenated.

  python -m cl_jax.main --config=configs/cmc_imagenet.py --workdir=gs://bucket/cmc_r50
  python -m cl_jax.main --config=configs/cmc_imagenet.py:width=1.0 --workdir=...    # resnet50v2: full-width halves
  python -m cl_jax.main --config=configs/cmc_imagenet.py:runlocal --workdir=/tmp/cmc_in_local

imagenet2012 must be prepared by tfds as ArrayRecord (see README, "Real data"); runlocal uses the embedded data.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=128, epochs=240, width=0.5, softmax=False)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="cmc", views=("L", "ab"), graph="core", loss="softmax" if a.softmax else "nce",
                  temperature=0.07, num_negatives=16384, bank_momentum=0.5, proj_dim=128, bank_size=1_281_167)
  c.model = dict(name="resnet50", width=float(a.width), stem="imagenet", bn="sync", dtype="bfloat16",
                 zero_init_last_bn=False)
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=1, scale=(0.08, 1.0), jitter_p=0.0,
                                                         grayscale_p=0.0, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.03, lr_scaling="none", momentum=0.9, weight_decay=1e-4, warmup_epochs=0,
                 schedule="step", decay_epochs=(120, 160, 200), decay_factor=0.1, exclude_bias_and_norm=False)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="imagenet", bn="sync", dtype="float32")
    local_shapes(c, image_size=64)
    c.augment["global"].size = 56
    c.method.update(dict(bank_size=256, num_negatives=64))
    c.optim.decay_epochs = (1, 2)
    c.eval.update(dict(batch_size=128, every=0, image_size=56, knn_train_examples=256))
  return c
