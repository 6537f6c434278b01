"""InvaSpread on CIFAR-10 (Ye et al. 2019, Sec. 4.1; official Unsupervised_Embedding_Learning demo_seen.py).

ResNet-18 (CIFAR stem), linear 128-d L2-normalised embedding, temperature 0.1, batch 128 images (256 views, both
augmented), SGD lr 0.03 (momentum 0.9, weight decay 5e-4), ~300 epochs; views: scale (0.2, 1), colour jitter 0.4
always, grayscale 0.2, flip. The official lr drops 10x at epoch 120; cl_jax.optim has no step schedule, so this
config uses cosine.

  python -m cl_jax.main --config=configs/invaspread_cifar10.py --workdir=$HOME/runs/invaspread_cifar10
  python -m cl_jax.main --config=configs/invaspread_cifar10.py:runlocal --workdir=/tmp/invaspread_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=128, epochs=300)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="invaspread", temperature=0.1, proj_dim=128)
  c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="sync", dtype="float32", zero_init_last_bn=False)
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  # Colour jitter as the official code: ColorJitter(0.4, 0.4, 0.4, 0.4).
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, scale=(0.2, 1.0), jitter_strength=0.5,
                                                         jitter=(0.8, 0.8, 0.8, 0.8),
                                                         jitter_p=1.0, grayscale_p=0.2, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.03, lr_scaling="none", momentum=0.9, weight_decay=5e-4, warmup_epochs=0,
                 schedule="cosine", exclude_bias_and_norm=False)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.1, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    local_shapes(c)
    c.eval.batch_size, c.eval.every = 128, 0
  return c
