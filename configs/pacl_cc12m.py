"""PACL on Conceptual 12M in webdataset tar shards (Mukhoti et al., CVPR 2023; the paper trains on CC3M + CC12M +
YFCC15M): the patch-aligned contrastive loss training only the vision embedder on frozen CLIP ViT-B/16 towers.

The towers come from a CLIP checkpoint in cl_jax's layout (`init=`: a CLIP run such as configs/clip_cc12m.py with a
ViT-B/16 tower, or a published CLIP converted with `python -m cl_jax.convert`), frozen (method.freeze_towers and
optim.frozen); the embedder (a linear map plus a two-layer GELU MLP per patch, Sec. 3.3) maps ViT-B/16's patch
tokens into the 512-d text space. No official code was released: the optimizer below (AdamW lr 5e-4, weight decay
0.05 on the embedder only, 1 warm-up epoch then cosine, batch 4096, 10 epochs) and the identity text embedder are
our choices, not checked against the paper's appendix. One random square crop per image (scale 0.9-1), as
clip_cc12m.py.

  python -m cl_jax.main --config=configs/pacl_cc12m.py:shards=/data/cc12m/{00000..01242}.tar,merges=/data/bpe_simple_vocab_16e6.txt.gz,init=$HOME/runs/clip_vitb16 \\
      --workdir=$HOME/runs/pacl_cc12m
  python -m cl_jax.main --config=configs/pacl_cc12m.py:runlocal --workdir=/tmp/pacl_cc12m_local
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import CLIP_TEXT, LOCAL_TEXT, run_fields, web_captions
from cl_jax.data.augment import group

CROP = dict(views=1, scale=(0.9, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=4096, epochs=10, shards="/data/cc12m/{00000..01242}.tar",
                merges="/data/bpe_simple_vocab_16e6.txt.gz", init="")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="pacl", embed_dim=512, freeze_towers=True)
  c.model = dict(name="vit_base", patch_size=16, dtype="bfloat16")
  c.text_model = dict(CLIP_TEXT)
  web_captions(c, a.shards, a.merges)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, **CROP)})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="adamw", lr=5e-4, lr_scaling="none", b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.05,
                 warmup_epochs=1, schedule="cosine", exclude_bias_and_norm=True, frozen=("backbone", "text"))
  c.eval = dict(every=5000, batch_size=1024, monitors=("retrieval",), retrieval_examples=0)
  run_fields(c)
  c.init_from = a.init
  if a.runlocal:   # the embedded scenes, towers trained with the embedder (no CLIP run to start from), 3 steps
    c.method = dict(name="pacl", embed_dim=32, freeze_towers=False)
    c.model = dict(name="vit_micro", patch_size=4)
    c.text_model = dict(LOCAL_TEXT)
    c.dataset = "shapes_scenes"
    c.data = dict(image_size=32, num_train=256, num_test=128, seed=0, worker_count=0,
                  text=dict(tokenizer="shapes", context_length=24, source="caption"))
    c.augment = ml_collections.ConfigDict({"global": group(size=32, **dict(CROP, scale=(0.8, 1.0)))})
    c.batch_size, c.total_steps, c.log_every, c.checkpoint_every = 64, 3, 1, 3
    c.optim = dict(c.optim.to_dict(), warmup_epochs=0, frozen=())
    c.eval = dict(every=0, batch_size=128, monitors=("zeroshot", "segmentation"))
  return c
