"""CPC v2 on CIFAR-10: the paper has no CIFAR recipe; this scales its ImageNet geometry (a 7x7 grid of 64 px patches
every 32 px of 256 px, Henaff et al. 2020, Sec. 4.1) by 1/8: 8 px patches every 4 px of the 32 px image, each
through a ResNet-18 with the CIFAR stem (total stride 8: one vector per patch) and LayerNorm in place of BatchNorm;
K = 3 rows ahead, predictions in four directions, per-patch colour dropping and flips, Adam lr 4e-4 cosine.

  python -m cl_jax.main --config=configs/cpc_cifar10.py --workdir=$HOME/runs/cpc_cifar10
  python -m cl_jax.main --config=configs/cpc_cifar10.py:runlocal --workdir=/tmp/cpc_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=256, epochs=500)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="cpc_v2", patch_size=8, patch_stride=4, pred_steps=3, context_blocks=5, context_hidden=256,
                  directions=("down", "up", "right", "left"), color_drop_p=1.0, flip_p=0.5)
  c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=32, views=1, scale=(0.5, 1.0), jitter_p=0.0,
                                                         grayscale_p=0.0, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="adamw", lr=4e-4, lr_scaling="none", b1=0.9, b2=0.999, weight_decay=0.0, warmup_epochs=5,
                 schedule="cosine")
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.method.update(dict(patch_size=16, patch_stride=8, pred_steps=2, context_blocks=1, context_hidden=32,
                         directions=("down", "up")))
    c.model = dict(name="resnet_tiny", width=1.0, stem="small", bn="sync", dtype="float32")
    local_shapes(c, batch=32)
    c.eval.update(dict(batch_size=128, every=0))
    c.optim.warmup_epochs = 0
  return c
