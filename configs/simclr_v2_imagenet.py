"""SimCLR v2 on ImageNet (Chen et al. 2020b, "Big Self-Supervised Models are Strong Semi-Supervised Learners", Sec. 2-3).

3-layer projection head with BN (hidden = backbone width, out 128), LARS lr 0.075 x sqrt(B) (square-root
scaling), weight decay 1e-4, temperature 0.1, batch 4096, 10 warm-up epochs + cosine, 800 epochs; deeper and wider
ResNets through `depth` and `width` (the paper's largest is ResNet-152 3x with selective kernels; SK is not
implemented here).

  python -m cl_jax.main --config=configs/simclr_v2_imagenet.py --workdir=gs://bucket/simclr_v2_r50
  python -m cl_jax.main --config=configs/simclr_v2_imagenet.py:depth=152,width=3 --workdir=...
  python -m cl_jax.main --config=configs/simclr_v2_imagenet.py:runlocal --workdir=/tmp/simclr_v2_local
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=4096, epochs=800, depth=50, width=1.0)
  c = ml_collections.ConfigDict()
  c.seed = 0
  hidden = int(2048 * a.width) if a.depth >= 50 else int(512 * a.width)
  c.method = dict(name="simclr", version=2, temperature=0.1, proj_hidden=hidden, proj_dim=128)
  c.model = dict(name=f"resnet{a.depth}", width=a.width, stem="imagenet", bn="sync", dtype="bfloat16")
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=2, jitter_strength=1.0, blur_p=(0.5,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  # 0.075 x sqrt(B) = 0.075 x sqrt(256) x sqrt(B/256) = 1.2 x sqrt(B/256).
  c.optim = dict(name="lars", lr=1.2, lr_scaling="sqrt", base_batch=256, momentum=0.9, weight_decay=1e-4,
                 warmup_epochs=10, schedule="cosine", exclude_bias_and_norm=True)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="cifar", bn="sync", dtype="float32")
    local_shapes(c)
    c.augment["global"].size = 32
    c.method.proj_hidden = 64
    c.eval.update(dict(batch_size=128, every=0, image_size=32, crop_frac=1.0, knn_train_examples=256))
    c.optim.warmup_epochs = 0
  return c
