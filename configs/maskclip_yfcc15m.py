"""MaskCLIP on YFCC-15M in webdataset tar shards (Dong et al. CVPR 2023, arXiv 2208.12262): ViT-B/16 + CLIP's text
Transformer, L = L_CLIP + L_MSD (+ the text-side term with text_msd=True).

The paper's setting: ViT-B/16 image tower (224 px, 14 x 14 patches), CLIP's 12-layer 512-wide text Transformer over
CLIP's BPE (77 tokens), YFCC-15M (the filtered subset of Radford et al.), an EMA mean teacher and a small decoder.
Choices of ours where the paper's numbers could not be checked (no official code was released): SLIP's YFCC-15M
schedule (batch 4096, 25 epochs, AdamW lr 5e-4, betas (0.9, 0.98), weight decay 0.5, 1 warm-up epoch, cosine),
BEiT's block-wise masking of 40% of the patches (blocks >= 16 patches), a 2-block decoder at the tower's width,
an 8192-way head, temperatures 0.1 / 0.04 with a centre, teacher momentum 0.999 -> 1 (cosine); one random square
crop per image (scale 0.5-1, as SLIP), no flip or colour jitter.

Shards and the BPE merges are prepared as in configs/clip_cc12m.py (img2dataset to /data/yfcc15m, then wget).

  python -m cl_jax.main --config=configs/maskclip_yfcc15m.py:shards=/data/yfcc15m/{00000..01499}.tar,merges=/data/bpe_simple_vocab_16e6.txt.gz \
      --workdir=$HOME/runs/maskclip_yfcc15m
  python -m cl_jax.main --config=configs/maskclip_yfcc15m.py:runlocal --workdir=/tmp/maskclip_yfcc15m_local

Zero-shot needs a labelled test split; point `data.test_shards` at held-out shards for retrieval, and evaluate
ImageNet zero-shot offline with a workdir whose config names an ImageNet tfds test split.
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import (CLIP_TEXT, LOCAL_LANGUAGE_EVAL, LOCAL_TEXT, SHAPES_CAPTIONS, local_shapes,
                                  run_fields, web_captions)
from cl_jax.data.augment import group

CROP = dict(views=1, scale=(0.5, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,))
MASKCLIP = dict(name="maskclip", embed_dim=512, image_projection=True, msd_weight=1.0, msd_loss="ce",
                mask_ratio=0.4, mask_min_patches=16, mask_min_aspect=0.3, head_dim=8192, student_temp=0.1,
                teacher_temp=0.04, center_momentum=0.9, decoder_depth=2, momentum=0.999, final_momentum=1.0,
                contrastive_view="full", text_msd=False, text_msd_weight=1.0, text_mask_ratio=0.15,
                text_decoder_depth=1)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=4096, epochs=25, text_msd=False,
                shards="/data/yfcc15m/{00000..01499}.tar", merges="/data/bpe_simple_vocab_16e6.txt.gz")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(MASKCLIP, text_msd=a.text_msd)
  c.model = dict(name="vit_base", patch_size=16, posemb="learn", bn="sync", dtype="bfloat16")
  c.text_model = dict(CLIP_TEXT)
  web_captions(c, a.shards, a.merges)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, **CROP)})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="adamw", lr=5e-4, lr_scaling="none", b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.5,
                 warmup_epochs=1, schedule="cosine", exclude_bias_and_norm=True)
  c.eval = dict(every=5000, batch_size=1024, monitors=("retrieval",), retrieval_examples=0)
  run_fields(c)
  if a.runlocal:
    c.model = dict(name="vit_micro", patch_size=8, posemb="learn", bn="sync", dtype="float32")
    c.method.update(embed_dim=32, head_dim=64, decoder_depth=1, mask_min_patches=2, momentum=0.99)
    c.text_model = dict(LOCAL_TEXT)
    local_shapes(c, text=SHAPES_CAPTIONS)
    c.augment = ml_collections.ConfigDict({"global": group(size=32, **CROP)})
    c.eval = dict(LOCAL_LANGUAGE_EVAL)
    c.optim.warmup_epochs = 0
  return c
