"""SigLIP over web-scale image-text tar shards (Zhai et al. 2023, Sec. 4: a WebLI-like recipe).

ViT-B/16 image tower and a 12-layer 768-wide text Transformer (64 tokens of CLIP's BPE here; the paper uses a
SentencePiece vocabulary), sigmoid loss with t' = log 10 and b = -10, batch 32k (the paper's sweet spot),
Adam(W) lr 1e-3, weight decay 1e-4, beta2 0.95 (the paper's fix for large-batch instability), warm-up then
cosine. The loss rotates texts around the device ring, so no device holds more than a local x local block.

  python -m cl_jax.main --config=configs/siglip_webli_like.py:shards=/data/webli/{00000..09999}.tar,merges=/data/bpe_simple_vocab_16e6.txt.gz \
      --workdir=$HOME/runs/siglip_b16
  python -m cl_jax.main --config=configs/siglip_webli_like.py:runlocal --workdir=/tmp/siglip_local
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import (LOCAL_LANGUAGE_EVAL, LOCAL_TEXT, SHAPES_CAPTIONS, local_shapes, run_fields,
                                  web_captions)
from cl_jax.data.augment import group

CROP = dict(views=1, scale=(0.9, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=32768, epochs=3, shards="/data/webli/{00000..09999}.tar",
                merges="/data/bpe_simple_vocab_16e6.txt.gz")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="siglip", embed_dim=768)
  c.model = dict(name="vit_base", patch_size=16, dtype="bfloat16")
  c.text_model = dict(width=768, depth=12, heads=12, mlp_ratio=4, act="gelu", dtype="bfloat16")
  web_captions(c, a.shards, a.merges, worker_count=32, holdout_frac=0.0005, context_length=64)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, **CROP)})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="adamw", lr=1e-3, lr_scaling="none", b1=0.9, b2=0.95, weight_decay=1e-4,
                 warmup_steps=5000, schedule="cosine", exclude_bias_and_norm=True)
  c.eval = dict(every=10_000, batch_size=2048, monitors=("retrieval",), retrieval_examples=0)
  run_fields(c)
  if a.runlocal:
    c.model = dict(name="vit_micro", patch_size=8, dtype="float32")
    c.method.embed_dim = 32
    c.text_model = dict(LOCAL_TEXT, act="gelu")
    local_shapes(c, text=SHAPES_CAPTIONS)
    c.augment = ml_collections.ConfigDict({"global": group(size=32, **CROP)})
    c.eval = dict(LOCAL_LANGUAGE_EVAL)
    c.optim.warmup_steps = 0
  return c
