"""MoCo v3 on CIFAR-10: the paper's ResNet recipe (Chen, Xie, He 2021, Sec. 4 and Appendix; it pretrains on ImageNet
only) on ResNet-18 with the CIFAR stem, as the SimCLR CIFAR-10 setting of this repo.

2-layer projector and a predictor without output BN (4096 hidden, 256 out, official ResNet heads); temperature 1.0;
momentum encoder m from 0.996 to 1 on a cosine (the official 1000-epoch value); LARS lr 0.3 x B/256, weight decay
1.5e-6, 10 warm-up epochs then cosine, batch 512, 1000 epochs; BYOL's asymmetric views.

  python -m cl_jax.main --config=configs/moco_v3_cifar10.py --workdir=$HOME/runs/moco_v3_cifar10
  python -m cl_jax.main --config=configs/moco_v3_cifar10.py:batch=1024,epochs=500 --workdir=...
  python -m cl_jax.main --config=configs/moco_v3_cifar10.py:runlocal --workdir=/tmp/moco_v3_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=512, epochs=1000, temperature=1.0)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="moco_v3", mlp_dim=4096, dim=256, proj_layers=2, pred_last_bn=False,
                  temperature=a.temperature, base_momentum=0.996)
  c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, scale=(0.08, 1.0), jitter_strength=0.5,
                                                         jitter=(0.8, 0.8, 0.4, 0.2),
                                                         grayscale_p=0.2, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="lars", lr=0.3, lr_scaling="linear", base_batch=256, momentum=0.9, weight_decay=1.5e-6,
                 warmup_epochs=10, schedule="cosine", exclude_bias_and_norm=True)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    c.method.update(dict(mlp_dim=64, dim=32))
    local_shapes(c)
    c.eval.batch_size, c.eval.every = 128, 0
    c.optim.warmup_epochs = 0
  return c
