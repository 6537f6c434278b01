"""SimSiam on ImageNet (Chen & He 2021, Sec. 4 and Appendix A; official main_simsiam.py with --fix-pred-lr).

ResNet-50 with synchronised BN; 3-layer projector (2048, BN on every layer, the output BN without affine) and a
2048-512-2048 predictor whose lr stays fixed at the base lr (Sec. 4.2, `optim.constant_lr`); SGD lr 0.05 x B/256,
momentum 0.9, weight decay 1e-4 on all parameters, cosine, no warm-up, batch 512, 100 epochs; MoCo v2 views
(crop scale 0.2-1, jitter 0.4/0.4/0.4/0.1 = strength 0.5, grayscale 0.2, blur p 0.5).

  python -m cl_jax.main --config=configs/simsiam_imagenet.py --workdir=gs://bucket/simsiam_r50
  python -m cl_jax.main --config=configs/simsiam_imagenet.py:epochs=200,batch=256 --workdir=...
  python -m cl_jax.main --config=configs/simsiam_imagenet.py:runlocal --workdir=/tmp/simsiam_in_local

imagenet2012 must be prepared by tfds as ArrayRecord (see README, "Real data"); runlocal uses the embedded data.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=512, epochs=100, depth=50)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="simsiam", proj_layers=3, proj_hidden=2048, proj_dim=2048, pred_hidden=512)
  c.model = dict(name=f"resnet{a.depth}", width=1.0, stem="imagenet", bn="sync", dtype="bfloat16")
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=2, scale=(0.2, 1.0), jitter_strength=0.5,
                                                         grayscale_p=0.2, blur_p=(0.5,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.05, lr_scaling="linear", base_batch=256, momentum=0.9, weight_decay=1e-4,
                 warmup_epochs=0, schedule="cosine", exclude_bias_and_norm=False, constant_lr=("predictor",))
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="imagenet", bn="sync", dtype="float32")
    local_shapes(c, image_size=64)
    c.augment["global"].size = 56
    c.method.update(dict(proj_hidden=64, proj_dim=64, pred_hidden=16))
    c.eval.update(dict(batch_size=128, every=0, image_size=56, knn_train_examples=256))
  return c
