"""SupCon on ImageNet (Khosla et al. 2020, Sec. 4): ResNet-50, the 2048-2048-128 'mlp' head, temperature 0.1,
batch 6144, 700 epochs, LARS. The official PyTorch code gives no ImageNet command, so the lr follows its CIFAR
command (0.5 at batch 1024) scaled linearly (3.0 at 6144), with 10 warm-up epochs and cosine decay; weight decay
1e-4 (excluding biases and norms, as LARS recipes do); augmentation: SimCLR's (crop (0.08, 1), flip, jitter
(0.8, 0.8, 0.8, 0.2) x 1.0 p 0.8, grayscale 0.2, blur 0.5), the paper's "SimAugment".

  python -m cl_jax.main --config=configs/supcon_imagenet.py --workdir=gs://bucket/supcon_r50
  python -m cl_jax.main --config=configs/supcon_imagenet.py:runlocal --workdir=/tmp/supcon_in_local

imagenet2012 must be prepared by tfds as ArrayRecord (see README, "Real data"); runlocal uses the embedded data.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=6144, epochs=700)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="supcon", temperature=0.1, base_temperature=0.07, proj_hidden=2048, proj_dim=128,
                  use_labels=True)
  c.model = dict(name="resnet50", width=1.0, stem="imagenet", bn="sync", dtype="bfloat16")
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=2, scale=(0.08, 1.0), jitter_strength=1.0,
                                                         jitter_p=0.8, grayscale_p=0.2, blur_p=(0.5,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="lars", lr=0.5, lr_scaling="linear", base_batch=1024, momentum=0.9, weight_decay=1e-4,
                 exclude_bias_and_norm=True, warmup_epochs=10, schedule="cosine")
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="imagenet", bn="sync", dtype="float32")
    c.method.proj_hidden = 128
    local_shapes(c, image_size=64)
    c.augment["global"].size = 56
    c.optim.warmup_epochs = 0
    c.eval.update(dict(batch_size=128, every=0, image_size=56, knn_train_examples=256))
  return c
