"""CLIP on Conceptual 12M in webdataset tar shards (Radford et al. 2021; open_clip's CC12M recipe).

CLIP's modified ResNet-50 (attention pooling; it ends in the 1024-d joint space, so no extra image projection),
the 12-layer 512-wide text Transformer over CLIP's BPE (77 tokens), one random square crop per image, AdamW
(beta2 0.98 as CLIP's large runs for stability) lr 1e-3 at batch 4096 with 10k warm-up steps then cosine, weight
decay 0.1 (not on gains, biases or the logit scale), 32 epochs; learnable temperature from 0.07, clipped at 100.

  img2dataset --url_list cc12m.tsv --input_format tsv --url_col url --caption_col caption \
      --output_format webdataset --output_folder /data/cc12m --image_size 256 --resize_mode center_crop
  wget https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz -P /data
  python -m cl_jax.main --config=configs/clip_cc12m.py:shards=/data/cc12m/{00000..01242}.tar,merges=/data/bpe_simple_vocab_16e6.txt.gz \
      --workdir=$HOME/runs/clip_cc12m
  python -m cl_jax.main --config=configs/clip_cc12m.py:runlocal --workdir=/tmp/clip_cc12m_local

Zero-shot needs a labelled test split; point `data.test_shards` at held-out shards for retrieval, and evaluate
ImageNet zero-shot offline with a workdir whose config names an ImageNet tfds test split.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import (CLIP_TEXT, LOCAL_LANGUAGE_EVAL, LOCAL_TEXT, SHAPES_CAPTIONS, local_shapes,
                                  run_fields, web_captions)
from cl_jax.data.augment import group

CROP = dict(views=1, scale=(0.9, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,))


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=4096, epochs=32, shards="/data/cc12m/{00000..01242}.tar",
                merges="/data/bpe_simple_vocab_16e6.txt.gz")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="clip", embed_dim=1024, image_projection=False)
  c.model = dict(name="clip_rn50", output_dim=1024, bn="sync", dtype="bfloat16")
  c.text_model = dict(CLIP_TEXT)
  web_captions(c, a.shards, a.merges)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, **CROP)})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="adamw", lr=1e-3, lr_scaling="none", b1=0.9, b2=0.98, eps=1e-6, weight_decay=0.1,
                 warmup_steps=10_000, schedule="cosine", exclude_bias_and_norm=True)
  c.eval = dict(every=5000, batch_size=1024, monitors=("retrieval",), retrieval_examples=0)
  run_fields(c)
  if a.runlocal:
    c.model = dict(name="clip_resnet_tiny", output_dim=64, bn="sync", dtype="float32")
    c.method.embed_dim = 64
    c.text_model = dict(LOCAL_TEXT)
    local_shapes(c, text=SHAPES_CAPTIONS)
    c.augment = ml_collections.ConfigDict({"global": group(size=32, **CROP)})
    c.eval = dict(LOCAL_LANGUAGE_EVAL)
    c.optim.warmup_steps = 0
  return c
