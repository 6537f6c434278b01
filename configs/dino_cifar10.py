"""DINO on CIFAR-10 (Caron et al. 2021): the paper has no CIFAR recipe, so this is the official ResNet-50
command (README: SGD lr 0.03 x B/256, weight decay 1e-4 constant, global crops scale 0.14-1, local crops
0.05-0.14, teacher temperature 0.04) moved to 32 px images and ResNet-18 with the CIFAR stem.

2 global 32 px crops + 8 local 16 px crops (DINO's 224/96 size ratio), head 2048-2048-256 -> out_dim (65,536 by
default, weight-normalised with g fixed to 1, frozen in the first epoch), teacher momentum 0.996 -> 1 (cosine),
centre momentum 0.9, student temperature 0.1, gradient clipping 3.0, 10 warm-up epochs then cosine to 1e-6.

  python -m cl_jax.main --config=configs/dino_cifar10.py --workdir=$HOME/runs/dino_cifar10
  python -m cl_jax.main --config=configs/dino_cifar10.py:batch=256,epochs=400,out_dim=4096 --workdir=...
  python -m cl_jax.main --config=configs/dino_cifar10.py:runlocal --workdir=/tmp/dino_cifar10_local

cifar10 must be prepared once: `tfds build cifar10 --file_format=array_record` (runlocal uses the embedded data).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import load_sibling, parse_arg
from cl_jax.config_recipe import local_shapes, run_fields

crops = load_sibling(__file__, "dino_imagenet").crops

CIFAR10_TRAIN_EXAMPLES = 50_000


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=512, epochs=800, out_dim=65536)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="dino", out_dim=a.out_dim, hidden_dim=2048, bottleneck_dim=256, num_layers=3,
                  use_bn_in_head=False, norm_last_layer=True, momentum=0.996, student_temp=0.1,
                  warmup_teacher_temp=0.04, teacher_temp=0.04, warmup_teacher_temp_epochs=0, center_momentum=0.9,
                  encode_with="teacher")
  c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar10"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1)
  c.augment = crops(32, 16, 8, (0.14, 1.0), (0.05, 0.14))
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.03, lr_scaling="linear", base_batch=256, momentum=0.9,
                 weight_decay_schedule=(1e-4, 1e-4), warmup_epochs=10, schedule="cosine", end_lr=1e-6,
                 exclude_bias_and_norm=True, clip_norm=3.0, clip_mode="per_param", frozen=("last_layer",),
                 frozen_steps=CIFAR10_TRAIN_EXAMPLES // a.batch)   # freeze_last_layer=1 epoch
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1000)
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    c.method.update(dict(out_dim=256, hidden_dim=64, bottleneck_dim=32))
    c.augment["local"].views = 2
    local_shapes(c)
    c.eval.batch_size, c.eval.every = 128, 0
    c.optim.update(dict(warmup_epochs=0, frozen_steps=1))
  return c
