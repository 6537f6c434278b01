"""BYOL on CIFAR-10: the paper's recipe (Grill et al. 2020, Sec. 3.3; it pretrains on ImageNet only) on ResNet-18
with the CIFAR stem, as the SimCLR CIFAR-10 setting of this repo.

Projector and predictor Linear(4096)-BN-ReLU-Linear(256); tau 0.996 -> 1 cosine; LARS lr 0.2 x B/256, weight decay
1.5e-6, 10 warm-up epochs then cosine, 1000 epochs, batch 512; asymmetric views (blur p 1.0 / 0.1, solarize p 0 / 0.2).

  python -m cl_jax.main --config=configs/byol_cifar10.py --workdir=$HOME/runs/byol_cifar10
  python -m cl_jax.main --config=configs/byol_cifar10.py:batch=256,epochs=800 --workdir=...
  python -m cl_jax.main --config=configs/byol_cifar10.py:runlocal --workdir=/tmp/byol_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=512, epochs=1000, base_momentum=0.996)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="byol", proj_hidden=4096, proj_dim=256, pred_hidden=4096, base_momentum=a.base_momentum)
  c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, scale=(0.08, 1.0), jitter_strength=0.5,
                                                         jitter=(0.8, 0.8, 0.4, 0.2),
                                                         grayscale_p=0.2, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="lars", lr=0.2, lr_scaling="linear", base_batch=256, momentum=0.9, weight_decay=1.5e-6,
                 warmup_epochs=10, schedule="cosine", exclude_bias_and_norm=True)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    c.method.update(dict(proj_hidden=64, proj_dim=32, pred_hidden=64))
    local_shapes(c)
    c.eval.batch_size, c.eval.every = 128, 0
    c.optim.warmup_epochs = 0
  return c
