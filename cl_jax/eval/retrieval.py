"""Image-to-text and text-to-image retrieval recall@K on the test split's captions.

The training monitor "retrieval" (cl_jax/eval/monitors.py); `python -m cl_jax.evaluate --protocol=retrieval`
runs it on a trained workdir. Each test image is paired with its first caption (`source.captions_of(i)[0]`, the
caption the data source evaluates with), or with the `tokens` of its batch row when the source has no captions.
A text counts as correct for an image when its token row equals the image's own (identical captions are
interchangeable). `config.eval.retrieval_examples` caps the number of pairs (0, the default: the whole split).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from cl_jax.eval import settings
from cl_jax.eval.zeroshot import check_language_image, embed_split, embed_texts
from cl_jax.run_state import Run, TrainState
from cl_jax.schema import Field

KS = (1, 5, 10)
SCHEMA = {"retrieval_examples": Field(0, low=0)}   # config.eval fields


def retrieval_recall(image_emb: np.ndarray, text_emb: np.ndarray, match: np.ndarray,
                     ks: Sequence[int] = KS) -> dict[str, float]:
  """Recall@K (%) both ways (as CLIP Sec. 3.1.5 / Table 13): i2t = images with a matching text among their top-K
  texts; t2i = texts with a matching image among their top-K images. `match` [n_images, n_texts] bool."""
  sims = image_emb @ text_emb.T
  out = {}
  for name, s, m in (("i2t", sims, match), ("t2i", sims.T, match.T)):
    order = np.argsort(-s, axis=1, kind="stable")
    ranked = np.take_along_axis(m, order, axis=1)
    for k in ks:
      out[f"{name}_r{k}"] = 100.0 * float(ranked[:, :k].any(axis=1).mean()) if len(s) else 0.0
  return out


def caption_tokens(run: Run, source: Any, n: int, fallback: np.ndarray | None) -> np.ndarray:
  """Token rows of the first caption of examples 0..n-1, or the batch tokens when the source has no captions."""
  if hasattr(source, "captions_of"):
    return run.method.tokenizer.encode([source.captions_of(i)[0] for i in range(n)])
  if fallback is None:
    raise ValueError(f"retrieval needs captions but the test split of '{run.config.dataset}' has none; set "
                     "config.data.text or remove 'retrieval' from config.eval.monitors.")
  return fallback[:n]


def evaluate_retrieval(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """eval/i2t_r1/r5/r10 and eval/t2i_r1/r5/r10 on (test image, its caption) pairs."""
  check_language_image(run, "retrieval")
  source = run.test_source
  if source is None:
    raise ValueError(f"retrieval needs a test split; dataset '{run.config.dataset}' has none. Remove "
                     "'retrieval' from config.eval.monitors.")
  limit = settings.read(run.config, SCHEMA).retrieval_examples or None
  data = embed_split(run, state, specs, source, ("label", "color"), max_examples=None)
  images = data["embedding"][:limit]
  fallback = None
  if not hasattr(source, "captions_of"):
    fallback = embed_split(run, state, specs, source, ("tokens",), max_examples=limit).get("tokens")
  tokens = caption_tokens(run, source, len(images), fallback)
  _, text_id = np.unique(tokens, axis=0, return_inverse=True)
  text_id = text_id.reshape(-1)
  match = text_id[:, None] == text_id[None, :]
  recall = retrieval_recall(images, embed_texts(run, state, tokens), match)
  return {f"eval/{k}": v for k, v in recall.items()}
