"""SwAV on ImageNet (Caron et al. 2020; official scripts swav_800ep_pretrain.sh and swav_200ep_bs256_pretrain.sh).

Default, the 800-epoch batch-4096 recipe: LARS (trust 0.001, weight decay 1e-6 on every parameter), lr 4.8 with
10 warm-up epochs then cosine to 0.0048, K = 3000 prototypes, temperature 0.1, Sinkhorn epsilon 0.05 with 3
iterations, prototypes frozen for the first 313 iterations, 2 x 224 px crops (scale 0.14-1) + 6 x 96 px
(0.05-0.14), SimCLR colour distortion (s = 1) and blur p 0.5 on every crop. No queue: the official code trims
queue_length to a multiple of the global batch, and 3840 < 4096 leaves none. Differences: the official warm-up
starts at lr 0.3, here at 0.

`:bs256` is the 200-epoch batch-256 recipe: lr 0.6 to 0.0006, no warm-up, queue of 3840 projections per global
crop from epoch 15 on, prototypes frozen for 5005 iterations.

  python -m cl_jax.main --config=configs/swav_imagenet.py --workdir=$HOME/runs/swav_imagenet
  python -m cl_jax.main --config=configs/swav_imagenet.py:bs256 --workdir=$HOME/runs/swav_bs256
  python -m cl_jax.main --config=configs/swav_imagenet.py:runlocal --workdir=/tmp/swav_local
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group

IMAGENET_TRAIN_EXAMPLES = 1_281_167


def crops(global_size: int, local_size: int, local_views: int, global_scale: tuple[float, float],
          local_scale: tuple[float, float]) -> ml_collections.ConfigDict:
  """SwAV's multi-crop (Sec. 3.2; official MultiCropDataset): RandomResizedCrop, flip, colour distortion s = 1
  (ColorJitter(0.8, 0.8, 0.8, 0.2) p 0.8, grayscale p 0.2), Gaussian blur p 0.5, the same on every crop."""
  common = dict(jitter_strength=1.0, jitter=(0.8, 0.8, 0.8, 0.2), grayscale_p=0.2, blur_p=(0.5,),
                blur_sigma=(0.1, 2.0))
  return ml_collections.ConfigDict({
      "global": group(size=global_size, views=2, scale=global_scale, role="global", **common),
      "local": group(size=local_size, views=local_views, scale=local_scale, role="local", **common)})


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, bs256=False, batch=0, epochs=0)
  batch = a.batch or (256 if a.bs256 else 4096)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="swav", proj_hidden=2048, proj_dim=128, num_prototypes=3000, temperature=0.1,
                  epsilon=0.05, sinkhorn_iters=3, queue_length=3840 if a.bs256 else 0, queue_start_epoch=15)
  c.model = dict(name="resnet50", width=1.0, stem="imagenet", bn="sync", dtype="bfloat16")
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = crops(224, 96, 6, (0.14, 1.0), (0.05, 0.14))
  c.batch_size = batch
  c.num_epochs = a.epochs or (200 if a.bs256 else 800)
  c.total_steps = 0
  lr = 0.6 if a.bs256 else 4.8
  c.optim = dict(name="lars", lr=lr, lr_scaling="none", momentum=0.9, trust_coefficient=0.001, weight_decay=1e-6,
                 exclude_bias_and_norm=False, warmup_epochs=0 if a.bs256 else 10, schedule="cosine",
                 end_lr=lr / 1000, frozen=("prototypes",), frozen_steps=5005 if a.bs256 else 313)
  c.eval = dict(every=5000, knn_k=20, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="cifar", bn="sync", dtype="float32")
    c.method.update(dict(proj_hidden=64, proj_dim=32, num_prototypes=50, queue_length=128, queue_start_epoch=0))
    local_shapes(c)
    c.augment["global"].size, c.augment["local"].size, c.augment["local"].views = 32, 16, 2
    c.eval.update(dict(batch_size=128, every=0, image_size=32, crop_frac=1.0, knn_train_examples=256))
    c.optim.update(dict(warmup_epochs=0, frozen_steps=1))
  return c
