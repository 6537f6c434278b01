"""InvaSpread at ImageNet scale: the paper's method and loss (Ye et al. 2019, Eq. 3-6, temperature 0.1, linear
128-d embedding) with the ImageNet setting of the instance-discrimination line it compares to (Wu et al. 2018):
ResNet-50, SGD lr 0.03 x B/256, weight decay 1e-4, 200 epochs, cosine. The paper itself trains on CIFAR-10, STL-10
and fine-grained sets, so this recipe is a transposition, not a reproduced number. Batch 256 images (512 views).

  python -m cl_jax.main --config=configs/invaspread_imagenet.py --workdir=gs://bucket/invaspread_r50
  python -m cl_jax.main --config=configs/invaspread_imagenet.py:runlocal --workdir=/tmp/invaspread_in_local

imagenet2012 must be prepared by tfds as ArrayRecord (see README, "Real data"); runlocal uses the embedded data.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=256, epochs=200, depth=50)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="invaspread", temperature=0.1, proj_dim=128)
  c.model = dict(name=f"resnet{a.depth}", width=1.0, stem="imagenet", bn="sync", dtype="bfloat16",
                 zero_init_last_bn=False)
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=2, scale=(0.2, 1.0), jitter_strength=0.5,
                                                         jitter=(0.8, 0.8, 0.8, 0.8),
                                                         jitter_p=1.0, grayscale_p=0.2, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.03, lr_scaling="linear", base_batch=256, momentum=0.9, weight_decay=1e-4,
                 warmup_epochs=0, schedule="cosine", exclude_bias_and_norm=False)
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="imagenet", bn="sync", dtype="float32")
    local_shapes(c, image_size=64)
    c.augment["global"].size = 56
    c.eval.update(dict(batch_size=128, every=0, image_size=56, knn_train_examples=256))
  return c
