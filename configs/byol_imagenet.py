"""BYOL on ImageNet (Grill et al. 2020, Sec. 3.3 and Appendix B/C): the batch-4096 recipe.

ResNet-50; projector and predictor Linear(4096)-BN-ReLU-Linear(256); target EMA with tau from 0.996 to 1 on a cosine;
LARS lr 0.2 x B/256 (biases and BN excluded from weight decay and adaptation), weight decay 1.5e-6, 10 warm-up
epochs then cosine, 1000 epochs; asymmetric views (blur p 1.0 / 0.1, solarize p 0 / 0.2, App. B Table 6).
Colour jitter ColorJitter(0.4, 0.4, 0.2, 0.1) with p 0.8, grayscale p 0.2 (Table 6).

  python -m cl_jax.main --config=configs/byol_imagenet.py --workdir=gs://bucket/byol_r50
  python -m cl_jax.main --config=configs/byol_imagenet.py:epochs=300,batch=4096 --workdir=...
  python -m cl_jax.main --config=configs/byol_imagenet.py:runlocal --workdir=/tmp/byol_in_local

imagenet2012 must be prepared by tfds as ArrayRecord (see README, "Real data"); runlocal uses the embedded data.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=4096, epochs=1000, depth=50, width=1.0)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="byol", proj_hidden=4096, proj_dim=256, pred_hidden=4096, base_momentum=0.996)
  c.model = dict(name=f"resnet{a.depth}", width=a.width, stem="imagenet", bn="sync", dtype="bfloat16")
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=2, scale=(0.08, 1.0), jitter_strength=0.5,
                                                         jitter=(0.8, 0.8, 0.4, 0.2),
                                                         grayscale_p=0.2, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="lars", lr=0.2, lr_scaling="linear", base_batch=256, momentum=0.9, weight_decay=1.5e-6,
                 warmup_epochs=10, schedule="cosine", exclude_bias_and_norm=True)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="imagenet", bn="sync", dtype="float32")
    local_shapes(c, image_size=64)
    c.augment["global"].size = 56
    c.method.update(dict(proj_hidden=64, proj_dim=32, pred_hidden=64))
    c.eval.update(dict(batch_size=128, every=0, image_size=56, knn_train_examples=256))
    c.optim.warmup_epochs = 0
  return c
