"""CPC v2 on ImageNet (Henaff et al. 2020, Sec. 4.1): a 7x7 grid of 64 px patches every 32 px of a 256 px crop, each
encoded alone by the backbone with LayerNorm in place of BatchNorm, a masked-convolution context network, InfoNCE
against every patch vector of the global batch, per-patch colour dropping and flips, predictions in four directions.

Backbone: ResNet-50 with LayerNorm, the practical default (the paper's ResNet-50 row); the paper's best encoder is
a wider and deeper ResNet-161, not in this library (`:depth=152,width=2` is the nearest). Differences: the paper's
other patch augmentations (random crops and the auto-augment-style spatial and colour ops inside each patch) and
its exact optimiser schedule are not reproduced; Adam lr 4e-4 with a cosine decay here.

  python -m cl_jax.main --config=configs/cpc_v2_imagenet.py --workdir=$HOME/runs/cpc_v2_imagenet
  python -m cl_jax.main --config=configs/cpc_v2_imagenet.py:runlocal --workdir=/tmp/cpc_v2_local
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=512, epochs=200, depth=50, width=1.0)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="cpc_v2", patch_size=64, patch_stride=32, pred_steps=5, context_blocks=5, context_hidden=512,
                  directions=("down", "up", "right", "left"), color_drop_p=1.0, flip_p=0.5)
  c.model = dict(name=f"resnet{a.depth}", width=a.width, stem="imagenet", bn="sync", dtype="bfloat16")
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  # One 256 px crop per image; the colour augmentation is per patch (method.color_drop_p), none on the image.
  c.augment = ml_collections.ConfigDict({"global": group(size=256, views=1, scale=(0.35, 1.0), jitter_p=0.0,
                                                         grayscale_p=0.0, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="adamw", lr=4e-4, lr_scaling="none", b1=0.9, b2=0.999, weight_decay=0.0, warmup_epochs=1,
                 schedule="cosine")
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=512, image_size=256, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.method.update(dict(patch_size=16, patch_stride=8, pred_steps=2, context_blocks=1, context_hidden=32))
    c.model = dict(name="resnet_tiny", width=1.0, stem="small", bn="sync", dtype="float32")
    local_shapes(c, batch=32)
    c.augment["global"].size = 32
    c.eval.update(dict(batch_size=128, every=0, image_size=32, knn_train_examples=256))
    c.optim.warmup_epochs = 0
  return c
