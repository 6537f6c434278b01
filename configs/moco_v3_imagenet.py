"""MoCo v3 on ImageNet (Chen, Xie, He 2021, Sec. 4-5 and Appendix; official README recipes). `arch=vit_small|resnet50`.

ViT-S/16 (default): batch 1024, AdamW lr 1.5e-4 x B/256, weight decay 0.1 (on all parameters), 40 warm-up epochs then
cosine, 300 epochs, temperature 0.2, a frozen random patch projection (Sec. 4.2: `model.frozen_patch_embed` and
`optim.frozen`), 3-layer projector and 2-layer predictor (4096 hidden, 256 out, output BN on both).
ResNet-50: batch 4096, LARS (biases and BN excluded), temperature 1.0, 10 warm-up epochs, lr 0.6 x B/256 and weight
decay 1e-6 for 100 epochs (lr 0.3, weight decay 1.5e-6 for longer runs; momentum from 0.996 at 1000 epochs),
2-layer projector and a predictor without output BN (official code).
Both: momentum encoder m from 0.99 to 1 on a cosine, BYOL's asymmetric views (blur p 1.0 / 0.1, solarize p 0 / 0.2,
crop scale 0.08-1); colour jitter ColorJitter(0.4, 0.4, 0.2, 0.1). ViT: fixed 2-D sin-cos position embeddings
(model.posemb="sincos2d") as the official code.

  python -m cl_jax.main --config=configs/moco_v3_imagenet.py --workdir=gs://bucket/moco_v3_vits
  python -m cl_jax.main --config=configs/moco_v3_imagenet.py:arch=resnet50,epochs=100 --workdir=...
  python -m cl_jax.main --config=configs/moco_v3_imagenet.py:runlocal --workdir=/tmp/moco_v3_in_local

imagenet2012 must be prepared by tfds as ArrayRecord (see README, "Real data"); runlocal uses the embedded data.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group

_ARCHS = ("vit_small", "vit_base", "resnet50")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, arch="vit_small", batch=0, epochs=0)
  if a.arch not in _ARCHS:
    raise ValueError(f"Unknown arch '{a.arch}' for moco_v3_imagenet; use one of: {', '.join(_ARCHS)}.")
  vit = a.arch.startswith("vit")
  epochs = a.epochs or (300 if vit else 100)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="moco_v3", mlp_dim=4096, dim=256, proj_layers=3 if vit else 2, pred_last_bn=vit,
                  temperature=0.2 if vit else 1.0, base_momentum=0.996 if epochs >= 1000 else 0.99)
  if vit:
    c.model = dict(name=a.arch, patch_size=16, frozen_patch_embed=True, posemb="sincos2d", bn="sync",
                   dtype="bfloat16")
    c.optim = dict(name="adamw", lr=1.5e-4, lr_scaling="linear", base_batch=256, weight_decay=0.1,
                   warmup_epochs=40, schedule="cosine", exclude_bias_and_norm=False, frozen=("patch_embed",))
  else:
    c.model = dict(name=a.arch, width=1.0, stem="imagenet", bn="sync", dtype="bfloat16")
    c.optim = dict(name="lars", lr=0.6 if epochs <= 100 else 0.3, lr_scaling="linear", base_batch=256,
                   momentum=0.9, weight_decay=1e-6 if epochs <= 100 else 1.5e-6, warmup_epochs=10,
                   schedule="cosine", exclude_bias_and_norm=True)
  c.dataset = "imagenet2012"
  c.data = dict(image_size=256, data_dir=None, seed=0, worker_count=16, on_bad_image="skip", holdout_frac=0.1)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=2, scale=(0.08, 1.0), jitter_strength=0.5,
                                                         jitter=(0.8, 0.8, 0.4, 0.2),
                                                         grayscale_p=0.2, blur_p=(1.0, 0.1), solarize_p=(0.0, 0.2))})
  c.batch_size = a.batch or (1024 if vit else 4096)
  c.num_epochs = epochs
  c.total_steps = 0
  c.eval = dict(every=5000, knn_k=200, knn_temperature=0.07, batch_size=1024, image_size=224, crop_frac=0.875,
                knn_train_examples=100_000)
  run_fields(c, checkpoint_every=1000)
  if a.runlocal:
    c.model.update(dict(name="vit_micro", patch_size=8) if vit else dict(name="resnet_tiny"))
    c.model.dtype = "float32"
    local_shapes(c, image_size=64)
    c.augment["global"].size = 56
    c.method.update(dict(mlp_dim=64, dim=32))
    c.eval.update(dict(batch_size=128, every=0, image_size=56, knn_train_examples=256))
    c.optim.warmup_epochs = 0
  return c
