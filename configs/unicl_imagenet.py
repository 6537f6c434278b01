"""UniCL on ImageNet-1K image-label data plus image-text captions (Yang et al. 2022; official configs).

ResNet-50 image tower (the paper's IN-1K ablations also use ResNet-50 besides Swin), 12-layer 512-wide text
Transformer over CLIP's BPE (77 tokens), 512-d joint space; AdamW lr 5e-4 at batch 4096, weight decay 0.1,
5 warm-up epochs then cosine, gradient clipping at 5, 32 epochs (the official defaults). Label texts are prompt
templates filled with the class name (CLIP's templates); UniCL's loss treats all pairs of one class as positives.

`text=mixed` (default) needs one dataset carrying both labels and captions (e.g. a tfds dataset with
`data.caption_key`, or a captions folder arranged by class); `text=label_prompt` is pure image-label UniCL on
ImageNet (the paper's Table 2 setting, where it reduces to a cross-modal supervised contrastive loss).

  python -m cl_jax.main --config=configs/unicl_imagenet.py:text=label_prompt,merges=/data/bpe_simple_vocab_16e6.txt.gz \
      --workdir=$HOME/runs/unicl_in1k
  python -m cl_jax.main --config=configs/unicl_imagenet.py:runlocal --workdir=/tmp/unicl_local
"""
from __future__ import annotations

import ml_collections

from cl_jax.config_args import parse_arg
from cl_jax.config_recipe import CLIP_TEXT, LOCAL_LANGUAGE_EVAL, LOCAL_TEXT, local_shapes, run_fields
from cl_jax.data.augment import group


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = parse_arg(arg, runlocal=False, batch=4096, epochs=32, text="mixed", dataset="imagenet2012",
                merges="/data/bpe_simple_vocab_16e6.txt.gz")
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.method = dict(name="unicl", embed_dim=512)
  c.model = dict(name="resnet50", bn="sync", dtype="bfloat16")
  c.text_model = dict(CLIP_TEXT)
  c.dataset = a.dataset
  c.data = dict(image_size=224, seed=0, worker_count=16, data_dir=None, caption_key=None, class_folders=False,
                on_bad_image="skip", holdout_frac=0.1,
                text=dict(tokenizer="bpe", merges_path=a.merges, context_length=77, source=a.text))
  c.augment = ml_collections.ConfigDict({"global": group(size=224, views=1, scale=(0.08, 1.0), jitter_strength=0.5,
                                                         grayscale_p=0.0, blur_p=(0.0,))})
  c.batch_size = a.batch
  c.num_epochs = a.epochs
  c.total_steps = 0
  c.optim = dict(name="adamw", lr=5e-4, lr_scaling="none", b1=0.9, b2=0.999, eps=1e-8, weight_decay=0.1,
                 warmup_epochs=5, schedule="cosine", exclude_bias_and_norm=True, clip_norm=5.0)
  c.eval = dict(every=5000, batch_size=1024, monitors=("zeroshot",))
  run_fields(c)
  if a.runlocal:
    c.model = dict(name="resnet_tiny", bn="sync", dtype="float32")
    c.method.embed_dim = 32
    c.text_model = dict(LOCAL_TEXT)
    local_shapes(c, text=dict(tokenizer="shapes", context_length=24, source="mixed"))
    c.augment = ml_collections.ConfigDict({"global": group(size=32, views=1, scale=(0.6, 1.0), flip_p=0.0,
                                                           jitter_p=0.0, grayscale_p=0.0, blur_p=(0.0,))})
    c.eval = dict(LOCAL_LANGUAGE_EVAL)
    c.optim.warmup_epochs = 0
  return c
