"""SimCLR v1 on ImageNet (Chen et al. 2020, Sec. 2.3 and Appendix B.1).

ResNet-50, batch 4096, LARS lr 0.3 x B/256, weight decay 1e-6, temperature 0.1, 10 warm-up epochs + cosine,
100 epochs, 2-layer projection head (2048 -> 128), full colour distortion (s=1) and blur (p=0.5).

  python -m cl_jax.main --config=configs/simclr_imagenet.py --workdir=gs://bucket/simclr_r50
  python -m cl_jax.main --config=configs/simclr_imagenet.py:epochs=800,batch=4096 --workdir=...
  python -m cl_jax.main --config=configs/simclr_imagenet.py:runlocal --workdir=/tmp/simclr_in_local

imagenet2012 must be prepared by tfds as ArrayRecord (see README, "Real data"); runlocal uses the embedded data.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=4096, epochs=100, depth=50, width=1.0)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="simclr", version=1, temperature=0.1, proj_hidden=2048, proj_dim=128)
  c.model = dict(name=f"resnet{a.depth}", width=a.width, stem="imagenet", bn="sync", dtype="bfloat16")
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=2, jitter_strength=1.0, blur_p=(0.5,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="lars", lr=0.3, lr_scaling="linear", base_batch=256, momentum=0.9, weight_decay=1e-6,
                 warmup_epochs=10, schedule="cosine", exclude_bias_and_norm=True)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="imagenet", bn="sync", dtype="float32")
    local_shapes(c, image_size=64)
    c.augment["global"].size = 56
    c.method.proj_hidden = 64
    c.eval.update(dict(batch_size=128, every=0, image_size=56, knn_train_examples=256))
    c.optim.warmup_epochs = 0
  return c
