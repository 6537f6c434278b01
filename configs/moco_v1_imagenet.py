"""MoCo v1 on ImageNet (He et al. 2020, Sec. 3.3 and 4.1; official moco main_moco.py defaults).

ResNet-50 with per-device BN and Shuffle BN, linear 128-d head, temperature 0.07, queue K = 65,536, key momentum
0.999, SGD lr 0.03 x B/256 (momentum 0.9, weight decay 1e-4), batch 256, 200 epochs; augmentation: crop scale
(0.2, 1), colour jitter 0.4 always applied, grayscale 0.2, no blur. The lr is divided by 10 at epochs 120
and 160 (at 60% and 80% of the epochs when `:epochs=N` changes them).
Colour jitter as the official v1 code: ColorJitter(0.4, 0.4, 0.4, 0.4), always applied.

  python -m cl_jax.main --config=configs/moco_v1_imagenet.py --workdir=gs://bucket/moco_v1_r50
  python -m cl_jax.main --config=configs/moco_v1_imagenet.py:epochs=800 --workdir=...
  python -m cl_jax.main --config=configs/moco_v1_imagenet.py:runlocal --workdir=/tmp/moco_v1_in_local

imagenet2012 must be prepared by tfds as ArrayRecord (see README, "Real data"); runlocal uses the embedded data.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=256, epochs=200, depth=50)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="moco_v1", temperature=0.07, momentum=0.999, queue_size=65536, proj_dim=128,
                  shuffle_bn=True)
  c.model = dict(name=f"resnet{a.depth}", width=1.0, stem="imagenet", bn="local", dtype="bfloat16",
                 zero_init_last_bn=False)
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=2, scale=(0.2, 1.0), jitter_strength=0.5,
                                                         jitter=(0.8, 0.8, 0.8, 0.8),
                                                         jitter_p=1.0, grayscale_p=0.2, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.03, lr_scaling="linear", base_batch=256, momentum=0.9, weight_decay=1e-4,
                 warmup_epochs=0, schedule="step", decay_epochs=(0.6 * a.epochs, 0.8 * a.epochs),
                 exclude_bias_and_norm=False)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="imagenet", bn="local", dtype="float32")
    local_shapes(c, image_size=64)
    c.augment["global"].size = 56
    c.method.queue_size = 256
    c.eval.update(dict(batch_size=128, every=0, image_size=56, knn_train_examples=256))
  return c
