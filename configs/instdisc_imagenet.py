"""InstDisc on ImageNet (Wu et al. 2018, Sec. 3-4; official lemniscate main.py and README command).

ResNet-50 (the README trains ResNet-18 and -50), linear 128-d L2-normalised embedding, memory bank of the 1,281,167
training images (momentum 0.5) split by rows over devices, NCE with m = 4096 and temperature 0.07, Z estimated once
(Eq. 8), SGD lr 0.03 (momentum 0.9, weight decay 1e-4), batch 256, 200 epochs; one crop per image: scale (0.2, 1),
colour jitter 0.4 always, grayscale 0.2, flip. The official lr is divided by 10 at epochs 120 and 160; cl_jax.optim
has no step schedule, so this config uses cosine.

  python -m cl_jax.main --config=configs/instdisc_imagenet.py --workdir=gs://bucket/instdisc_r50
  python -m cl_jax.main --config=configs/instdisc_imagenet.py:depth=18 --workdir=...
  python -m cl_jax.main --config=configs/instdisc_imagenet.py:runlocal --workdir=/tmp/instdisc_in_local

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
  c.method = dict(name="instdisc", loss="nce", temperature=0.07, num_negatives=4096, bank_momentum=0.5,
                  proj_dim=128, bank_size=1_281_167)
  c.model = dict(name=f"resnet{a.depth}", width=1.0, stem="imagenet", bn="sync", dtype="bfloat16",
                 zero_init_last_bn=False)
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=1, scale=(0.2, 1.0), jitter_strength=0.5,
                                                         jitter=(0.8, 0.8, 0.8, 0.8),
                                                         jitter_p=1.0, grayscale_p=0.2, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.03, lr_scaling="linear", base_batch=256, momentum=0.9, weight_decay=1e-4,
                 warmup_epochs=0, schedule="cosine", exclude_bias_and_norm=False)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="imagenet", bn="sync", dtype="float32")
    local_shapes(c, image_size=64)
    c.augment["global"].size = 56
    c.method.update(dict(bank_size=256, num_negatives=64))
    c.eval.update(dict(batch_size=128, every=0, image_size=56, knn_train_examples=256))
  return c
