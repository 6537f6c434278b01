"""DINO on ImageNet (Caron et al. 2021, Sec. 3-4, App. B; official facebookresearch/dino main_dino.py).

arch=vit_small (default): ViT-S/16, batch 1024, AdamW lr 0.0005 x B/256 (10 warm-up epochs, cosine to 1e-6),
weight decay 0.04 -> 0.4 (cosine), gradient clipping 3.0, teacher momentum 0.996 -> 1 (cosine), teacher temperature
0.04 -> 0.07 over the first 30 epochs, student temperature 0.1, centre momentum 0.9, head 2048-2048-256 ->
65,536 (weight-normalised, g fixed to 1), last layer frozen in the first epoch, multi-crop 2 x 224 px
(scale 0.25-1) + 10 x 96 px (scale 0.05-0.25), the released ViT-S/16 arguments.
arch=resnet50: the official README's ResNet-50 command: SGD (momentum 0.9) lr 0.03 x B/256, weight decay 1e-4
constant, global crops scale 0.14-1, 8 local crops (code default) scale 0.05-0.14, teacher temperature 0.04
(code default, no warm-up), batch 512 (8 GPUs x 64), other settings as above.

Differences from the official code: bilinear instead of bicubic crops, no stochastic depth (drop_path 0.1) in the ViT.

  python -m cl_jax.main --config=configs/dino_imagenet.py --workdir=gs://bucket/dino_vits16
  python -m cl_jax.main --config=configs/dino_imagenet.py:arch=resnet50 --workdir=gs://bucket/dino_r50
  python -m cl_jax.main --config=configs/dino_imagenet.py:epochs=300,batch=1024 --workdir=...
  python -m cl_jax.main --config=configs/dino_imagenet.py:runlocal --workdir=/tmp/dino_in_local

imagenet2012 must be prepared by tfds as ArrayRecord (see README, "Real data"); runlocal uses the embedded data.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group

IMAGENET_TRAIN_EXAMPLES = 1_281_167
_ARCHS = ("vit_small", "resnet50")


def crops(global_size: int, local_size: int, local_views: int, global_scale: tuple[float, float],
          local_scale: tuple[float, float]) -> ml_collections.ConfigDict:
  """DINO's DataAugmentationDINO: global crop 1 blur p 1.0; global crop 2 blur p 0.1 + solarize p 0.2; local
  crops blur p 0.5; jitter (p 0.8, ColorJitter(0.4, 0.4, 0.2, 0.1)), grayscale p 0.2, flip. The roles, not the
  names, send the global crops to the teacher."""
  common = dict(jitter_strength=0.5, jitter=(0.8, 0.8, 0.4, 0.2), grayscale_p=0.2, blur_sigma=(0.1, 2.0))
  return ml_collections.ConfigDict({
      "global": group(size=global_size, views=2, scale=global_scale, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2),
                      role="global", **common),
      "local": group(size=local_size, views=local_views, scale=local_scale, blur_p=(0.5,), solarize_p=(0.0,),
                     role="local", **common),
  })


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, arch="vit_small", batch=0, epochs=100, out_dim=65536)
  if a.arch not in _ARCHS:
    raise ValueError(f"Unknown DINO arch '{a.arch}'; use one of: {', '.join(_ARCHS)}.")
  vit = a.arch == "vit_small"
  batch = a.batch or (1024 if vit else 512)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="dino", out_dim=a.out_dim, hidden_dim=2048, bottleneck_dim=256, num_layers=3,
                  use_bn_in_head=False, norm_last_layer=True, momentum=0.996, student_temp=0.1,
                  warmup_teacher_temp=0.04, teacher_temp=0.07 if vit else 0.04,
                  warmup_teacher_temp_epochs=30 if vit else 0, center_momentum=0.9, encode_with="teacher")
  if vit:
    c.model = dict(name="vit_small", patch_size=16, dtype="bfloat16")
    c.augment = crops(224, 96, 10, (0.25, 1.0), (0.05, 0.25))
  else:
    c.model = dict(name="resnet50", width=1.0, stem="imagenet", bn="sync", dtype="bfloat16")
    c.augment = crops(224, 96, 8, (0.14, 1.0), (0.05, 0.14))
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.batch_size = batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // batch
  if vit:
    c.optim = dict(name="adamw", lr=0.0005, lr_scaling="linear", base_batch=256, b1=0.9, b2=0.999,
                   weight_decay_schedule=(0.04, 0.4))
  else:
    c.optim = dict(name="sgd", lr=0.03, lr_scaling="linear", base_batch=256, momentum=0.9,
                   weight_decay_schedule=(1e-4, 1e-4))
  c.optim.update(dict(warmup_epochs=10, schedule="cosine", end_lr=1e-6, exclude_bias_and_norm=True,
                      clip_norm=3.0, clip_mode="per_param",   # utils.clip_gradients
                      frozen=("last_layer",), frozen_steps=steps_per_epoch))   # freeze_last_layer=1
  c.eval = dict(every=5000, knn_k=20, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model = (dict(name="vit_micro", patch_size=8, dtype="float32") if vit else
               dict(name="resnet_tiny", width=1.0, stem="cifar", bn="sync", dtype="float32"))
    c.method.update(dict(out_dim=256, hidden_dim=64, bottleneck_dim=32))
    local_shapes(c)
    c.augment["global"].size, c.augment["local"].size, c.augment["local"].views = 32, 16, 2
    c.eval.update(dict(batch_size=128, every=0, image_size=32, crop_frac=1.0, knn_train_examples=256))
    c.optim.update(dict(warmup_epochs=0, frozen_steps=1))
  return c
