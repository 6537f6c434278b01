"""SwAV on CIFAR-10: the paper has no CIFAR recipe; this follows solo-learn's (scripts/pretrain/cifar/swav.yaml):
ResNet-18 with the CIFAR stem, batch 256, LARS (trust 0.02, biases and norms excluded) lr 0.6 cosine to 0.0006,
10 warm-up epochs, weight decay 1e-6, 1000 epochs, K = 3000, temperature 0.1, epsilon 0.05, queue 3840 from epoch
50, prototypes frozen for the first 2 epochs, two 32 px crops (no multi-crop), SimCLR's colour distortion
(ColorJitter(0.8, 0.8, 0.8, 0.2) x 0.5 at 32 px as SimCLR's CIFAR recipe, p 0.8), grayscale 0.2, no blur.

  python -m cl_jax.main --config=configs/swav_cifar10.py --workdir=$HOME/runs/swav_cifar10
  python -m cl_jax.main --config=configs/swav_cifar10.py:runlocal --workdir=/tmp/swav_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group

CIFAR10_TRAIN_EXAMPLES = 50_000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=256, epochs=1000)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="swav", proj_hidden=2048, proj_dim=128, num_prototypes=3000, temperature=0.1,
                  epsilon=0.05, sinkhorn_iters=3, queue_length=3840, queue_start_epoch=50)
  c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, scale=(0.08, 1.0), jitter_strength=0.5,
                                                         grayscale_p=0.2, blur_p=(0.0,), role="global")})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="lars", lr=0.6, lr_scaling="none", momentum=0.9, trust_coefficient=0.02, weight_decay=1e-6,
                 exclude_bias_and_norm=True, warmup_epochs=10, schedule="cosine", end_lr=0.0006,
                 frozen=("prototypes",), frozen_steps=2 * (CIFAR10_TRAIN_EXAMPLES // a.batch))
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    c.method.update(dict(proj_hidden=64, proj_dim=32, num_prototypes=50, queue_length=0))
    local_shapes(c)
    c.eval.batch_size, c.eval.every = 128, 0
    c.optim.update(dict(warmup_epochs=0, frozen_steps=1))
  return c
