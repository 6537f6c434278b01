"""SimCLR on CIFAR-10 (Chen et al. 2020, Appendix B.9; official README's CIFAR-10 command).

ResNet-18 with the CIFAR stem, colour-jitter strength 0.5, no blur, LARS lr 1.0 x B/256, weight decay 1e-4,
temperature 0.5, 10 warm-up epochs then cosine, 1000 epochs.

  python -m cl_jax.main --config=configs/simclr_cifar10.py --workdir=$HOME/runs/simclr_cifar10
  python -m cl_jax.main --config=configs/simclr_cifar10.py:batch=1024,epochs=500 --workdir=...
  python -m cl_jax.main --config=configs/simclr_cifar10.py:runlocal --workdir=/tmp/simclr_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=512, epochs=1000, temperature=0.5)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="simclr", version=1, temperature=a.temperature, proj_hidden=512, proj_dim=128)
  c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, jitter_strength=0.5, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="lars", lr=1.0, lr_scaling="linear", base_batch=256, momentum=0.9, weight_decay=1e-4,
                 warmup_epochs=10, schedule="cosine", exclude_bias_and_norm=True)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    local_shapes(c)
    c.eval.batch_size, c.eval.every = 128, 0
    c.optim.warmup_epochs = 0
  return c
