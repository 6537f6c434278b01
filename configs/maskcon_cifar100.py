"""MaskCon on CIFAR-100 with its 20 superclasses as the coarse labels (Feng & Patras, CVPR 2023; official
MrChenFeng/MaskCon_CVPR2023 main.py, whose argparse defaults are its CIFAR-100 run), scored by Recall@K on the 100
fine classes of the test split (eval monitor fine_recall, the official `retrieval`).

The official hyperparameters: ResNet-18 with the CIFAR stem (3x3/1 conv, no max-pool, ModelBase for figsize <= 64),
head Linear(512, 512)-ReLU-Linear(512, 256), queue K = 8192 with the coarse labels, key momentum 0.99, T1 = 0.1
(--t0), T2 = 0.05 (--t), w = 0.5; SGD lr 0.02 (momentum 0.9, weight decay 5e-4 on every parameter), batch 128,
200 epochs, 5 warm-up epochs then cosine to 0 (utils.adjust_learning_rate). Views: key 'weak' = random resized
crop (0.2, 1) + flip; query 'strong' = the same + AutoAugment's CIFAR10Policy, which cl_jax does not have: here
colour jitter (0.4, 0.4, 0.4, 0.1) p 0.8 and grayscale 0.2 stand in for it. The official model starts from
torchvision's ImageNet-pretrained ResNet-18; cl_jax trains it from scratch, so expect below the paper's figures.

  python -m cl_jax.main --config=configs/maskcon_cifar100.py --workdir=$HOME/runs/maskcon_cifar100
  python -m cl_jax.main --config=configs/maskcon_cifar100.py:runlocal --workdir=/tmp/maskcon_cifar100_local

cifar100 must be prepared once: `tfds build cifar100 --file_format=array_record` (runlocal uses the embedded shapes
with their 3 coarse groups).
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=128, epochs=200)
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="maskcon", temperature=0.1, soft_temperature=0.05, w=0.5, momentum=0.99, queue_size=8192,
                  proj_dim=256, proj_hidden=512)
  c.model = dict(name="resnet18", width=1.0, stem="cifar", bn="sync", dtype="float32")
  c.dataset = "cifar100"
  c.data = dict(image_size=32, data_dir=None, seed=0, worker_count=4, on_bad_image="skip", holdout_frac=0.1,
                coarse_labels="cifar100")
  weak = dict(size=32, views=1, scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,))
  c.augment = ml_collections.ConfigDict({"key": group(**weak),
                                         "query": group(**{**weak, "jitter_strength": 1.0,
                                                           "jitter": (0.4, 0.4, 0.4, 0.1), "jitter_p": 0.8,
                                                           "grayscale_p": 0.2})})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="sgd", lr=0.02, lr_scaling="none", momentum=0.9, weight_decay=5e-4, warmup_epochs=5,
                 schedule="cosine", exclude_bias_and_norm=False)
  c.eval = dict(every=10 * 390, knn_k=200, knn_temperature=0.07, batch_size=1000, monitors=("knn", "fine_recall"))
  run_fields(c)
  if a.runlocal:
    c.model.name = "resnet_tiny"
    c.method.queue_size = 512
    local_shapes(c, coarse_labels="shapes")
    c.eval.batch_size, c.eval.every = 128, 0
    c.optim.warmup_epochs = 0
  return c
