"""SupCon on CIFAR-10 (Khosla et al. 2020; official HobbitLong/SupContrast README pretraining command:
`main_supcon.py --batch_size 1024 --learning_rate 0.5 --temp 0.1 --cosine`, 96.0% after linear evaluation).

ResNet-50 with the CIFAR stem, the 'mlp' head (2048-2048-128, no BN), temperature 0.1 (base 0.07), SGD lr 0.5
(momentum 0.9, weight decay 1e-4), batch 1024, 1000 epochs cosine, 10 warm-up epochs (the official --warm, on
by default for batch > 256); augmentation: random resized crop (0.2, 1), flip, ColorJitter(0.4, 0.4, 0.4, 0.1)
with p 0.8, grayscale 0.2.

  python -m cl_jax.main --config=configs/supcon_cifar10.py --workdir=$HOME/runs/supcon_cifar10
  python -m cl_jax.main --config=configs/supcon_cifar10.py:runlocal --workdir=/tmp/supcon_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=1024, epochs=1000)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="supcon", temperature=0.1, base_temperature=0.07, proj_hidden=2048, proj_dim=128,
                  use_labels=True)
  c.model = dict(name="resnet50", width=1.0, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, scale=(0.2, 1.0), jitter_strength=1.0,
                                                         jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8,
                                                         grayscale_p=0.2, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.5, lr_scaling="none", momentum=0.9, weight_decay=1e-4, warmup_epochs=10,
                 schedule="cosine", exclude_bias_and_norm=False)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    c.method.proj_hidden = 128
    local_shapes(c)
    c.eval.batch_size, c.eval.every = 128, 0
    c.optim.warmup_epochs = 0
  return c
