"""MoCo v1 on CIFAR-10: the paper's method (He et al. 2020, Alg. 1) with the CIFAR-10 settings of the official
MoCo CIFAR demo (ResNet-18 CIFAR stem, K = 4096, m = 0.99, SGD lr 0.06 at batch 512, wd 5e-4, 200 epochs).

MoCo v1 parts: linear 128-d head, temperature 0.07, colour jitter always applied, no blur. Per-device BN with
Shuffle BN across devices. The schedule is cosine, as the demo's default.

  python -m cl_jax.main --config=configs/moco_v1_cifar10.py --workdir=$HOME/runs/moco_v1_cifar10
  python -m cl_jax.main --config=configs/moco_v1_cifar10.py:runlocal --workdir=/tmp/moco_v1_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=512, epochs=200)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="moco_v1", temperature=0.07, momentum=0.99, queue_size=4096, proj_dim=128, shuffle_bn=True)
  c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="local", dtype="float32", zero_init_last_bn=False)
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, scale=(0.2, 1.0), jitter_strength=0.5,
                                                         jitter=(0.8, 0.8, 0.8, 0.8),
                                                         jitter_p=1.0, grayscale_p=0.2, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.06, lr_scaling="linear", base_batch=512, momentum=0.9, weight_decay=5e-4,
                 warmup_epochs=0, schedule="cosine", exclude_bias_and_norm=False)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    local_shapes(c)
    c.method.queue_size = 256
    c.eval.batch_size, c.eval.every = 128, 0
  return c
