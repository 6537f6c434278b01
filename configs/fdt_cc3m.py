"""FDT on Conceptual Captions 3M in webdataset tar shards (Chen et al., CVPR 2023; the official
example/clip_fdt/config_cc3m.yaml and train_solver.py of yuxiaochen1103/FDT).

ViT-B/32 image tower (its 49 patch tokens feed FDT), CLIP's 12-layer 512-wide text Transformer over CLIP's BPE (77
tokens), a dictionary of 16,384 tokens of width 512 (N(0, 1) init), sparsemax over the max-pooled scores, T_sd = 1000
held constant (the official t_decay: org_t 1000, decay weight 1 every 2700 steps, floor 0.01; `sd_decay=` sets a
decay), CLIP's loss on the FDT embeddings with the log logit scale clamped to [3, 6] after each update (official
grad_clip logit_scale_param_value). One view with MoCo v2's augmentation (their MOCOV2_single: crop 0.2-1, jitter
0.8, grayscale 0.2, blur 0.5, flip). AdamW lr 1e-3 peak (betas 0.9, 0.98, eps 1e-8, weight decay 0.1, not on gains,
biases or the logit scale), 2,500 warm-up steps (theirs start at 1e-4, ours at 0) then cosine to 0, batch 1024 (128
x 8 GPUs), 32 epochs (2,705 steps each).

Shards and the BPE merges are prepared as in configs/clip_cc12m.py (img2dataset to /data/cc3m, then wget).

  python -m cl_jax.main --config=configs/fdt_cc3m.py:shards=/data/cc3m/{00000..02769}.tar,merges=/data/bpe_simple_vocab_16e6.txt.gz \
      --workdir=$HOME/runs/fdt_cc3m
  python -m cl_jax.main --config=configs/fdt_cc3m.py:runlocal --workdir=/tmp/fdt_cc3m_local
  python -m cl_jax.evaluate --workdir=$HOME/runs/fdt_cc3m --protocol=fdt_tokens   # what the tokens learnt

Zero-shot needs a labelled test split; point `data.test_shards` at held-out shards for retrieval, and evaluate
ImageNet zero-shot offline with a workdir whose config names an ImageNet tfds test split.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import (CLIP_TEXT, LOCAL_LANGUAGE_EVAL, LOCAL_TEXT, SHAPES_CAPTIONS, local_shapes,
                                  run_fields, web_captions)
from cl_jax.data.augment import group

MOCOV2_SINGLE = dict(views=1, scale=(0.2, 1.0), jitter_strength=0.5, jitter_p=0.8, grayscale_p=0.2, blur_p=(0.5,))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=1024, epochs=32, sd_decay=1.0, shards="/data/cc3m/{00000..02769}.tar",
                merges="/data/bpe_simple_vocab_16e6.txt.gz")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="fdt", embed_dim=512, num_tokens=16384, sd_temperature=1000.0, sd_decay=a.sd_decay,
                  sd_decay_steps=2700, sd_min=0.01, attention="sparsemax", pad_fill="neg_inf",
                  logit_scale_clamp=(3.0, 6.0))
  c.model = dict(name="vit_base", patch_size=32, dtype="bfloat16")
  c.text_model = dict(CLIP_TEXT)
  web_captions(c, a.shards, a.merges)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, **MOCOV2_SINGLE)})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="adamw", lr=1e-3, lr_scaling="none", b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.1,
                 warmup_steps=2500, schedule="cosine", exclude_bias_and_norm=True)
  c.eval = dict(every=5000, batch_size=1024, monitors=("retrieval",), retrieval_examples=0)
  run_fields(c, checkpoint_every=2700)
  if a.runlocal:
    c.method.update(embed_dim=32, num_tokens=64)
    c.model = dict(name="vit_micro", patch_size=8, dtype="float32")
    c.text_model = dict(LOCAL_TEXT)
    local_shapes(c, text=SHAPES_CAPTIONS)
    c.augment = ml_collections.ConfigDict({"global": group(size=32, **MOCOV2_SINGLE)})
    c.eval = dict(LOCAL_LANGUAGE_EVAL)
    c.optim.warmup_steps = 0
  return c
