"""Zero-shot classification with a language-image model: class names x prompt templates -> a text classifier.

The training monitor "zeroshot" (cl_jax/eval/monitors.py, config.eval.monitors); `python -m cl_jax.evaluate
--protocol=zeroshot` runs it on a trained workdir. Works on the embedded test split and on any labelled source
with `class_names` (tfds classification datasets included). Prompt templates: config.eval.prompt_templates, else
the shapes-worded ones for `shapes` and CLIP's 7-template ensemble otherwise (cl_jax/data/tokenizer.py).
"""
from __future__ import annotations

from typing import Any, Sequence

import jax
import numpy as np

from cl_jax.data.tokenizer import CLIP_PROMPT_TEMPLATES, SHAPES_PROMPT_TEMPLATES
from cl_jax.eval import features, settings
from cl_jax.run_state import Run, TrainState
from cl_jax.schema import Field

# config.eval fields: prompt_templates=None means config.data.text.templates, else the defaults below.
SCHEMA = {"prompt_templates": Field(None)}


def check_language_image(run: Run, what: str) -> None:
  """Fails in one line when the run's method has no text tower."""
  if not all(hasattr(run.method, a) for a in ("encode_text", "encode_image_embedding", "tokenizer")):
    raise ValueError(f"{what} needs a language-image method (clip, siglip, unicl), not {run.config.method.name}; "
                     f"remove '{what}' from config.eval.monitors.")


def embed_texts(run: Run, state: TrainState, tokens: np.ndarray, chunk: int = 256) -> np.ndarray:
  """Normalised text embeddings [N, D] of token rows, in fixed-size chunks (one compile per run).

  Its own loop, not features.extract: token rows come from prompts or captions, not from a source's batches."""
  if "text_embedding" not in run.cache:
    run.cache["text_embedding"] = jax.jit(run.method.encode_text)
  fn = run.cache["text_embedding"]
  out = []
  for start in range(0, len(tokens), chunk):
    rows = tokens[start:start + chunk]
    padded = np.pad(rows, ((0, chunk - len(rows)), (0, 0)))
    out.append(np.asarray(fn(state["params"], state["method_state"], padded))[:len(rows)])
  return np.concatenate(out) if out else np.zeros((0, run.method.embed_dim), np.float32)


def embed_split(run: Run, state: TrainState, specs: Any, source: Any,
                fields: Sequence[str] = ("label",), max_examples: int | None = None) -> dict[str, np.ndarray]:
  """{"embedding": normalised image embeddings [n, D], and each of `fields` the source has} over a split, in
  order, gathered to every host; cached for the current step so the zero-shot and retrieval monitors share it."""
  step = int(jax.device_get(state["step"]))
  key = ("split_embeddings", id(source), step, tuple(fields), max_examples)
  cached = run.cache.get("split_embeddings")
  if cached is not None and cached[0] == key:
    return cached[1]
  if "image_embedding" not in run.cache:
    run.cache["image_embedding"] = features.make_encode(run, specs, "encode_image_embedding")
  out = features.extract(run, run.cache["image_embedding"], state, source, fields, max_examples)
  out["embedding"] = out.pop("features")
  result = {k: v[:max_examples or None] for k, v in out.items()}
  run.cache["split_embeddings"] = (key, result)
  return result


def default_templates(run: Run) -> tuple[str, ...]:
  """config.eval.prompt_templates, else config.data.text.templates (the training prompts), else shapes-worded
  prompts for `shapes` / `shapes_scenes` and CLIP's 7 templates otherwise."""
  text = run.config.data.get("text", None) or {}
  templates = settings.read(run.config, SCHEMA).prompt_templates or text.get("templates", None)
  if templates:
    return (templates,) if isinstance(templates, str) else tuple(templates)
  name = getattr(run.test_source, "name", run.config.dataset)
  return SHAPES_PROMPT_TEMPLATES if str(name).startswith("shapes") else CLIP_PROMPT_TEMPLATES


def class_embeddings(run: Run, state: TrainState, class_names: Sequence[str],
                     templates: Sequence[str]) -> np.ndarray:
  """CLIP's prompt ensemble (Radford et al. 2021, Sec. 3.1.4): per class, the mean of the normalised
  embeddings of its prompts, renormalised -> [C, D]."""
  names = [str(c).replace("_", " ") for c in class_names]
  prompts = [t.format(c) for c in names for t in templates]
  emb = embed_texts(run, state, run.method.tokenizer.encode(prompts))
  emb = emb.reshape(len(names), len(templates), -1).mean(axis=1)
  return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def zeroshot_accuracy(image_emb: np.ndarray, labels: np.ndarray, class_emb: np.ndarray,
                      ks: Sequence[int] = (1, 5)) -> dict[int, float]:
  """Top-k accuracy (%) of argmax_c <image, class_c> (CLIP Sec. 3.1.2): {k: accuracy}."""
  scores = image_emb @ class_emb.T
  order = np.argsort(-scores, axis=1, kind="stable")
  out = {}
  for k in ks:
    hit = (order[:, :min(k, scores.shape[1])] == labels[:, None]).any(axis=1)
    out[k] = 100.0 * float(hit.mean()) if len(hit) else 0.0
  return out


def evaluate_zeroshot(run: Run, state: TrainState, specs: Any) -> dict[str, float]:
  """eval/zeroshot_top1, _top5 on the test split; with held-out (label, colour) pairs also _top1_unseen / _seen /
  _seen_colours (composition_masks)."""
  check_language_image(run, "zeroshot")
  source = run.test_source
  class_names = getattr(source, "class_names", None)
  if source is None or not class_names:
    raise ValueError(f"zeroshot needs a labelled test split with class names; dataset '{run.config.dataset}' has "
                     "none. Remove 'zeroshot' from config.eval.monitors.")
  data = embed_split(run, state, specs, source, ("label", "color"))
  classes = class_embeddings(run, state, class_names, default_templates(run))
  acc = zeroshot_accuracy(data["embedding"], data["label"], classes)
  result = {"eval/zeroshot_top1": acc[1], "eval/zeroshot_top5": acc[5]}
  held = tuple(getattr(source, "held_out_pairs", ()) or ())
  if held and "color" in data:
    for name, mask in composition_masks(data["label"], data["color"], held).items():
      if mask.any():
        result[f"eval/zeroshot_top1_{name}"] = zeroshot_accuracy(data["embedding"][mask], data["label"][mask],
                                                                 classes, ks=(1,))[1]
  return result


def composition_masks(labels: np.ndarray, colors: np.ndarray,
                      held: Sequence[tuple[int, int]]) -> dict[str, np.ndarray]:
  """Test-example masks for held-out (label, colour) pairs: "unseen" (a held-out pair), "seen" (every other), and
  "seen_colours" (a held-out pair's class in a colour it was trained with: the control that shares the unseen
  subset's classes, so unseen - seen_colours is the composition gap without the per-class difficulty)."""
  unseen = np.zeros(len(labels), bool)
  for label, color in held:
    unseen |= (labels == label) & (colors == color)
  same_classes = np.isin(labels, [label for label, _ in held])
  return {"unseen": unseen, "seen": ~unseen, "seen_colours": same_classes & ~unseen}

