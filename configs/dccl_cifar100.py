"""DCCL on CIFAR-100 as generalized category discovery (Pu, Zhong & Sebe, CVPR 2023; official TPCD/DCCL
G0_CUB200.py run with --dataset_name cifar100): classes 0-79 old with half of their training examples labelled,
classes 80-99 new (GCD's split, Vaze et al. 2022: train_classes=range(80), prop_train_labels=0.5); every other
example unlabelled. Scored by the discovery monitor (eval/cluster_acc_all/old/new on the training split).

The official hyperparameters (G0_CUB200.py argparse defaults; its README leaves per-dataset changes to the paper):
batch 128, 200 epochs, SGD lr 0.1 (momentum 0.9, weight decay 5e-5), 5 warm-up epochs then cosine to 1e-3 x lr;
loss 0.65 InfoNCE (temperature 1.0) + 0.35 SupCon on the labelled views (0.07 / 0.07) on a DINO head
(768 -> 2048 -> 2048 -> 256 -> 65,536, weight-normalised); concept loss at temperature 0.05 on the backbone
features, memory momentum 0.1, weight 0.04 -> 0.4 over the first 100 epochs; concepts by semi-supervised Infomap
every epoch (k 15, similarity >= 0.6, clusters of <= 4 outliers, same-label edges at the best neighbour similarity).
GCD's 'imagenet' transform: resize to 256, random 224 crop (here a fixed-area (224/256)^2 square crop), flip,
no colour jitter (torchvision ColorJitter() without arguments is the identity); evaluation: centre crop 0.875, 224.
max_concepts 4096 caps the concept memory (the state has a fixed shape; epoch/concepts_dropped counts the rest).

Backbone: the official starts from DINO's ImageNet ViT-B/16 and trains only its last block (grad_from_block=11).
cl_jax loads no pretrained weights, so arch=vit_base (default) trains the whole ViT-B/16 from scratch at 224 px:
not the paper's setting, expect far below its 75.3 / 76.8 / 70.2 (All / Old / New). arch=resnet18: a CIFAR-stem
ResNet-18 at 32 px, the from-scratch alternative.

  python -m cl_jax.main --config=configs/dccl_cifar100.py --workdir=$HOME/runs/dccl_cifar100
  python -m cl_jax.main --config=configs/dccl_cifar100.py:arch=resnet18 --workdir=$HOME/runs/dccl_cifar100_r18
  python -m cl_jax.main --config=configs/dccl_cifar100.py --config.method.concept_weight=0 --workdir=...   # GCD
  python -m cl_jax.main --config=configs/dccl_cifar100.py:runlocal --workdir=/tmp/dccl_cifar100_local

cifar100 must be prepared once: `tfds build cifar100 --file_format=array_record` (runlocal uses the embedded data);
the Infomap clustering needs `pip install 'cl_jax[dccl]'` (without it: semi-supervised k-means, K estimated).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group

_ARCHS = ("vit_base", "resnet18")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, arch="vit_base", batch=128, epochs=200)
  if a.arch not in _ARCHS:
    raise ValueError(f"Unknown DCCL arch '{a.arch}'; use one of: {', '.join(_ARCHS)}.")
  vit = a.arch == "vit_base"
  size = 224 if vit else 32
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="dccl", sup_weight=0.35, temperature=1.0, supcon_temperature=0.07,
                  supcon_base_temperature=0.07, head_hidden=2048, head_bottleneck=256, head_out=65536, head_layers=3,
                  concept_weight=0.4, concept_ramp_from=0.1, concept_ramp_epochs=100, concept_temperature=0.05,
                  memory_momentum=0.1, knn_k=15, min_sim=0.6, min_size=4, max_sim=True, markov_time=1.0,
                  clustering="auto",
                  max_concepts=4096)
  if vit:
    c.model = dict(name="vit_base", patch_size=16, dtype="float32")
  else:
    c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar100"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1,
                discovery="old=0-79,labelled=0.5")
  crop = (224 / 256) ** 2
  c.augment = ml_collections.ConfigDict({"global": group(size=size, views=2, scale=(crop, crop), ratio=(1.0, 1.0),
                                                         jitter_strength=0.0, jitter_p=0.0, grayscale_p=0.0,
                                                         blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.1, lr_scaling="none", momentum=0.9, weight_decay=5e-5, warmup_epochs=5,
                 schedule="cosine", end_lr=1e-4, exclude_bias_and_norm=False)
  c.eval = dict(every=30 * 390, knn_k=200, knn_temperature=0.07, batch_size=512, image_size=size,
                crop_frac=0.875 if vit else 1.0, monitors=("knn", "discovery"))
  run_fields(c)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", width=1.0, stem="imagenet", bn="sync", dtype="float32")
    c.method.update(dict(head_hidden=64, head_bottleneck=32, head_out=128, max_concepts=64))
    local_shapes(c, discovery="old=0-4,labelled=0.5")
    c.augment["global"].size = 32
    c.eval.update(dict(batch_size=128, every=0, image_size=32, crop_frac=1.0))
    c.optim.warmup_epochs = 0
  return c
