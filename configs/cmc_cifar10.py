"""CMC on CIFAR-10: the paper has no CIFAR recipe; this scales the official ImageNet one (train_CMC.py) to 32 px:
two ResNet-18 halves (width 0.5) with the CIFAR stem, one on L and one on ab of Lab, linear 128-d embeddings,
a memory bank per view of the 50,000 training images (momentum 0.5), NCE with K = 4096 noise rows (the official
16,384 is a third of the split here) and temperature 0.07, SGD lr 0.03 (momentum 0.9, weight decay 1e-4), batch
128, 240 epochs with lr x 0.1 at 120, 160, 200; one crop per image: random resized crop (0.2, 1), flip, no colour
jitter.

  python -m cl_jax.main --config=configs/cmc_cifar10.py --workdir=$HOME/runs/cmc_cifar10
  python -m cl_jax.main --config=configs/cmc_cifar10.py:runlocal --workdir=/tmp/cmc_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=128, epochs=240)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="cmc", views=("L", "ab"), graph="core", loss="nce", temperature=0.07, num_negatives=4096,
                  bank_momentum=0.5, proj_dim=128, bank_size=50_000)
  c.model = dict(name="resnet18", width=0.5, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=1, scale=(0.2, 1.0), jitter_p=0.0,
                                                         grayscale_p=0.0, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.03, lr_scaling="none", momentum=0.9, weight_decay=1e-4, warmup_epochs=0,
                 schedule="step", decay_epochs=(120, 160, 200), decay_factor=0.1, exclude_bias_and_norm=False)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    local_shapes(c)
    c.method.update(dict(bank_size=256, num_negatives=64))
    c.eval.batch_size, c.eval.every = 128, 0
    c.optim.decay_epochs = (1, 2)
  return c
