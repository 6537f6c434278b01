"""SimSiam on CIFAR-10 (Chen & He 2021, Appendix D; the official CIFAR demo).

ResNet-18 with the CIFAR stem (3x3 conv, no max-pool); 2-layer projector (2048, output BN without affine), predictor
2048-512-2048 at a fixed lr; SGD lr 0.03 x B/256, momentum 0.9, weight decay 5e-4, cosine, batch 512, 800 epochs;
views without blur (crop scale 0.2-1, jitter 0.4/0.4/0.4/0.1 = strength 0.5, grayscale 0.2).

  python -m cl_jax.main --config=configs/simsiam_cifar10.py --workdir=$HOME/runs/simsiam_cifar10
  python -m cl_jax.main --config=configs/simsiam_cifar10.py:batch=256,epochs=200 --workdir=...
  python -m cl_jax.main --config=configs/simsiam_cifar10.py:runlocal --workdir=/tmp/simsiam_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=512, epochs=800)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="simsiam", proj_layers=2, proj_hidden=2048, proj_dim=2048, pred_hidden=512)
  c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=2, scale=(0.2, 1.0), jitter_strength=0.5,
                                                         grayscale_p=0.2, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.03, lr_scaling="linear", base_batch=256, momentum=0.9, weight_decay=5e-4,
                 warmup_epochs=0, schedule="cosine", exclude_bias_and_norm=False, constant_lr=("predictor",))
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    c.method.update(dict(proj_hidden=64, proj_dim=64, pred_hidden=16))
    local_shapes(c)
    c.eval.batch_size, c.eval.every = 128, 0
  return c
