"""The fields every recipe in configs/ shares: run bookkeeping, and the `runlocal` switch to the embedded data."""
from __future__ import annotations

from typing import Any

import ml_collections

SHAPES_CAPTIONS = dict(tokenizer="shapes", context_length=24, source="caption")


def run_fields(c: ml_collections.ConfigDict, checkpoint_every: int = 2000) -> None:
  """Logging every 100 steps, a checkpoint every `checkpoint_every` (3 kept), TensorBoard on, no online probe, a
  random init (init_from: the workdir of a cl_jax run whose backbone starts this one)."""
  c.init_from = ""
  c.log_every = 100
  c.checkpoint_every = checkpoint_every
  c.keep_checkpoints = 3
  c.tensorboard = True
  c.online_probe = False


def local_shapes(c: ml_collections.ConfigDict, image_size: int = 32, batch: int = 64, **data: Any) -> None:
  """`runlocal`: 3 steps of batch `batch` on 256 embedded shapes (128 test), logged every step, one checkpoint."""
  c.dataset = "shapes"
  c.data = dict(image_size=image_size, num_train=256, num_test=128, seed=0, worker_count=0, **data)
  c.batch_size, c.total_steps, c.log_every, c.checkpoint_every = batch, 3, 1, 3

# CLIP's text Transformer (Radford et al. 2021, Sec. 2.4: 12 layers, 512 wide, 8 heads) and the runlocal one.
CLIP_TEXT = dict(width=512, depth=12, heads=8, mlp_ratio=4, act="quick_gelu", dtype="bfloat16")
LOCAL_TEXT = dict(width=32, depth=1, heads=2)
LOCAL_LANGUAGE_EVAL = dict(every=0, batch_size=128, monitors=("zeroshot", "retrieval"))


def web_captions(c: ml_collections.ConfigDict, shards: str, merges: str, worker_count: int = 16,
                 holdout_frac: float = 0.001, context_length: int = 77) -> None:
  """Image-caption pairs from webdataset tar `shards` (img2dataset's layout), captions through CLIP's BPE."""
  c.dataset = f"webdataset:{shards}"
  c.data = dict(image_size=224, seed=0, worker_count=worker_count, holdout_frac=holdout_frac, on_bad_image="skip",
                text=dict(tokenizer="bpe", merges_path=merges, context_length=context_length, source="caption"))
