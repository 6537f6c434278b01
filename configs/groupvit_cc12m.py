"""GroupViT on Conceptual 12M in webdataset tar shards (Xu et al., CVPR 2022; the official
configs/group_vit_gcc_yfcc_30e.yml and default.yml of NVlabs/GroupViT, trained there on CC3M + CC12M + YFCC14M).

GroupViT-S (embed 384, 6 heads, depths (6, 3, 3), 64 then 8 groups, patch 16, Gumbel hard assignment), the
12-layer 256-wide text Transformer over CLIP's BPE (77 tokens), joint space 256, temperatures from 0.07. AdamW lr
1.6e-3 at batch 4096 (the official linear scaling by batch / 4096), weight decay 0.05, 2 warm-up epochs then cosine
to 4e-5, gradient norm clipped at 5, 30 epochs; one random crop (scale 0.08-1), flip and colour jitter 0.4 (the
official DeiT augmentation also has RandAugment and random erasing, which cl_jax does not have).

The multi-label loss (method.multi_label=3) needs each image's nouns: the official code POS-tags captions with
NLTK on the host; cl_jax takes multi-hot `nouns` from the batch (the embedded scenes have them), and webdataset
shards do not, so this recipe trains with the CLIP loss only (multi_label=0) until the shards carry nouns.
`runlocal` runs the full loss on the embedded scenes.

  img2dataset --url_list cc12m.tsv --input_format tsv --url_col url --caption_col caption \
      --output_format webdataset --output_folder /data/cc12m --image_size 256 --resize_mode center_crop
  wget https://github.com/openai/CLIP/raw/main/clip/bpe_simple_vocab_16e6.txt.gz -P /data
  python -m cl_jax.main --config=configs/groupvit_cc12m.py:shards=/data/cc12m/{00000..01242}.tar,merges=/data/bpe_simple_vocab_16e6.txt.gz \
      --workdir=$HOME/runs/groupvit_cc12m
  python -m cl_jax.main --config=configs/groupvit_cc12m.py:runlocal --workdir=/tmp/groupvit_cc12m_local
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import LOCAL_LANGUAGE_EVAL, LOCAL_TEXT, local_shapes, run_fields, web_captions
from cl_jax.data.augment import group

CROP = dict(views=1, scale=(0.08, 1.0), flip_p=0.5, jitter_strength=0.4, jitter_p=1.0, grayscale_p=0.0,
            blur_p=(0.0,))
GROUPVIT_S = dict(name="groupvit", width=384, depths=(6, 3, 3), num_heads=6, num_group_tokens=(64, 8, 0),
                  num_output_groups=(64, 8), patch_size=16, gumbel_tau=1.0, hard_assignment=True, dtype="bfloat16")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=4096, epochs=30, shards="/data/cc12m/{00000..01242}.tar",
                merges="/data/bpe_simple_vocab_16e6.txt.gz")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="groupvit", embed_dim=256, multi_label=0, multi_label_weight=1.0,
                  prompt_template="a photo of a {}.", dense_assignment="hard")
  c.model = dict(GROUPVIT_S)
  c.text_model = dict(width=256, depth=12, heads=4, mlp_ratio=4, act="quick_gelu", dtype="bfloat16")
  web_captions(c, a.shards, a.merges)
  c.augment = ml_collections.ConfigDict({"global": group(size=224, **CROP)})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="adamw", lr=1.6e-3, lr_scaling="linear", base_batch=4096, b1=0.9, b2=0.999, eps=1e-8,
                 weight_decay=0.05, warmup_epochs=2, schedule="cosine", end_lr=4e-5, clip_norm=5.0,
                 exclude_bias_and_norm=True)
  c.eval = dict(every=5000, batch_size=1024, monitors=("retrieval",), retrieval_examples=0)
  run_fields(c)
  if a.runlocal:
    c.method.update(embed_dim=32, multi_label=3)
    c.model = dict(GROUPVIT_S, width=32, depths=(1, 1, 1), num_heads=2, num_group_tokens=(8, 2, 0),
                   num_output_groups=(8, 2), patch_size=4, dtype="float32")
    c.text_model = dict(LOCAL_TEXT)
    local_shapes(c, text=dict(tokenizer="shapes", context_length=32, source="caption"))
    c.dataset = "shapes_scenes"
    c.augment = ml_collections.ConfigDict({"global": group(size=32, **dict(CROP, scale=(0.8, 1.0)))})
    c.eval = dict(LOCAL_LANGUAGE_EVAL)
    c.optim.update(warmup_epochs=0, lr_scaling="none")
  return c
