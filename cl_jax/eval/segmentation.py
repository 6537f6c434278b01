"""Open-vocabulary semantic segmentation: per-location embeddings against class-prompt text embeddings -> masks.

A method with a dense readout (`encode_dense(params, state, images) -> [b, h, w, D]`, L2-normalised joint-space
embeddings per patch or pixel; CLIP's per-patch readout is the baseline every dense method is compared with)
labels each pixel with the class whose prompt embedding (zeroshot.class_embeddings: the prompt ensemble) is the
most similar, after bilinear upsampling of the class scores to the mask's resolution (as MaskCLIP, Zhou et al.
2022, Sec. 3.2, and GroupViT's evaluation upsample the logits). Background (label 0), by config.eval.seg_background:

  "prompt"     background prompts are extra classes and a pixel they win is background (LSeg's "other" label;
               shapes_scenes: one prompt per background texture, "a {texture} background")
  "threshold"  a pixel is background when its top class probability, softmax(seg_logit_scale x cosine), is below
               seg_threshold (GroupViT's background threshold on the class probabilities)
  "none"       every pixel gets a class (datasets without background)
  "auto"       "prompt" where the source names its backgrounds, else "threshold"

Scores: mIoU over the classes (and background) present in ground truth or prediction (the PASCAL VOC
convention: per class TP / (TP + FP + FN) accumulated over the split), the same over the object classes alone
(background excluded), pixel accuracy, and with held-out classes
mIoU over the held-out / the seen classes; with held-out (class, colour) pairs the pixel accuracy on objects of
held-out pairs and of seen pairs. The training monitor "segmentation" and `python -m cl_jax.evaluate
--protocol=segmentation`, which also writes a PNG of images, ground-truth and predicted masks side by side.
"""
from __future__ import annotations

import os
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.data import augment
from cl_jax.eval import features, settings, zeroshot
from cl_jax.run_state import Run, TrainState
from cl_jax.schema import Field

BACKGROUND_MODES = ("auto", "prompt", "threshold", "none")
IGNORE = 255  # ground-truth label of pixels outside the evaluated label set
SCHEMA = {"seg_background": Field("auto", choices=BACKGROUND_MODES),
          "seg_threshold": Field(0.5, low=0, high=1, open_low=True),
          "seg_logit_scale": Field(100.0, low=0, open_low=True),
          "seg_examples": Field(500, low=1),
          "seg_class_names": Field(()),
          "seg_background_prompts": Field(()),
          "seg_png_examples": Field(8, low=0)}


def confusion_matrix(pred: np.ndarray, gt: np.ndarray, num_labels: int) -> np.ndarray:
  """[num_labels, num_labels] pixel counts, rows = ground truth, columns = prediction; IGNORE pixels skipped."""
  gt, pred = np.asarray(gt).reshape(-1).astype(np.int64), np.asarray(pred).reshape(-1).astype(np.int64)
  keep = gt != IGNORE
  return np.bincount(gt[keep] * num_labels + pred[keep], minlength=num_labels ** 2).reshape(num_labels, num_labels)


def class_iou(conf: np.ndarray) -> np.ndarray:
  """Per-label IoU TP / (TP + FP + FN) in %, NaN for a label absent from both ground truth and prediction."""
  tp = np.diag(conf).astype(np.float64)
  union = conf.sum(axis=0) + conf.sum(axis=1) - tp
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, 100.0 * tp / union, np.nan)


def mean_iou(conf: np.ndarray, labels: Sequence[int] | None = None) -> float:
  """Mean IoU (%) over `labels` (default: all) that occur; NaN when none does."""
  iou = class_iou(conf)
  iou = iou if labels is None else iou[list(labels)]
  return float(np.nanmean(iou)) if np.isfinite(iou).any() else float("nan")


def pixel_accuracy(conf: np.ndarray) -> float:
  """Correct pixels / evaluated pixels, in %."""
  total = conf.sum()
  return 100.0 * float(np.trace(conf)) / float(total) if total else float("nan")


def label_map(scores: jax.Array, out_hw: tuple[int, int], mode: str, num_classes: int, threshold: float,
              logit_scale: float) -> jax.Array:
  """Cosine scores [b, h, w, K] (K = classes, then background prompts) -> int32 labels [b, H, W], 0 = background,
  c + 1 = class c. Scores are bilinearly upsampled to out_hw first."""
  b, _, _, k = scores.shape
  scores = jax.image.resize(scores, (b, *out_hw, k), method="linear", antialias=False)
  cls = scores[..., :num_classes]
  best = jnp.argmax(cls, axis=-1).astype(jnp.int32) + 1
  if mode == "prompt":
    return jnp.where(jnp.max(scores[..., num_classes:], axis=-1) > jnp.max(cls, axis=-1), 0, best)
  if mode == "threshold":
    prob = jax.nn.softmax(logit_scale * cls, axis=-1)
    return jnp.where(jnp.max(prob, axis=-1) < threshold, 0, best)
  return best


def check_dense(run: Run) -> None:
  """One line when the run's method or its test split cannot be evaluated by segmentation."""
  zeroshot.check_language_image(run, "segmentation")
  if not hasattr(run.method, "encode_dense"):
    raise ValueError(f"segmentation needs a method with a dense readout (encode_dense), not "
                     f"{run.config.method.name}; remove 'segmentation' from config.eval.monitors.")
  source = run.test_source
  if source is None or not getattr(source, "has_masks", False):
    raise ValueError(f"segmentation needs per-pixel masks; dataset '{run.config.dataset}' has none. Use "
                     "dataset='shapes_scenes' or a tfds segmentation dataset with data.mask_key.")


def eval_classes(run: Run) -> tuple[list[str], list[int]]:
  """(names of the evaluated classes, their ids in the source): config.eval.seg_class_names, else all."""
  names = list(run.test_source.class_names)
  wanted = settings.read(run.config, SCHEMA).seg_class_names
  wanted = [wanted] if isinstance(wanted, str) else list(wanted or ())
  if not wanted:
    return names, list(range(len(names)))
  unknown = [w for w in wanted if w not in names]
  if unknown:
    raise ValueError(f"eval.seg_class_names has unknown class {unknown[0]!r}; the dataset's classes are "
                     f"{', '.join(names)}.")
  return wanted, [names.index(w) for w in wanted]


def background_mode(run: Run) -> str:
  """The resolved config.eval.seg_background ("auto": prompts where the source names its backgrounds)."""
  mode = settings.read(run.config, SCHEMA).seg_background
  if mode == "auto":
    return "prompt" if background_prompts(run) else "threshold"
  return mode


def background_prompts(run: Run) -> list[str]:
  """config.eval.seg_background_prompts, else one per background the source names ("a {name} background")."""
  prompts = settings.read(run.config, SCHEMA).seg_background_prompts
  if prompts:
    return [prompts] if isinstance(prompts, str) else list(prompts)
  named = getattr(run.test_source, "attributes", {}).get("background")
  return [f"a {n} background" for n in named[1]] if named else []


def _predict_fn(run: Run, specs: Any, mode: str, num_classes: int, out_hw: tuple[int, int]):
  """jit(shard_map) of (params, method state, uint8 images, prompt embeddings [K, D]) -> labels [b, H, W]."""
  e = settings.read(run.config, SCHEMA)
  size = features.image_size(run.config)

  def per_device(params, method_state, images, prompts):
    dense = run.method.encode_dense(params, method_state, augment.eval_preprocess(images, size, 1.0))
    scores = jnp.einsum("bhwd,kd->bhwk", dense, prompts)
    return label_map(scores, out_hw, mode, num_classes, float(e.seg_threshold), float(e.seg_logit_scale))

  return jax.jit(jax.shard_map(per_device, mesh=run.mesh,
                               in_specs=(P(), specs["method_state"], P(parallel.DATA), P()),
                               out_specs=P(parallel.DATA)))


def _gt_labels(masks: np.ndarray, class_ids: Sequence[int], num_source_classes: int) -> np.ndarray:
  """Source masks (0 background, c + 1 class c) -> evaluated labels (0, j + 1 for class_ids[j], IGNORE else)."""
  lookup = np.full(num_source_classes + 1, IGNORE, np.int64)
  lookup[0] = 0
  lookup[np.asarray(class_ids) + 1] = np.arange(1, len(class_ids) + 1)
  return lookup[masks]


def pair_pixels(data: dict[str, np.ndarray], pairs: Sequence[tuple[int, int]]) -> np.ndarray:
  """bool [n, H, W]: pixels of objects whose (class, colour) is one of `pairs` (from instance masks)."""
  inst, classes, colors = data["instance"], data["classes"], data["colors"]
  held = np.zeros(classes.shape, bool)
  for label, color in pairs:
    held |= (classes == label) & (colors == color)
  held = np.concatenate([np.zeros((len(held), 1), bool), held], axis=1)   # instance 0 = background
  return np.take_along_axis(held, inst.reshape(len(inst), -1), axis=1).reshape(inst.shape)


def segment_split(run: Run, state: TrainState, specs: Any) -> dict[str, Any]:
  """Predicted and ground-truth label maps of the first seg_examples test images, with the evaluated classes."""
  check_dense(run)
  e = settings.read(run.config, SCHEMA)
  names, ids = eval_classes(run)
  mode = background_mode(run)
  prompts = zeroshot.class_embeddings(run, state, names, zeroshot.default_templates(run))
  bg = background_prompts(run) if mode == "prompt" else []
  if mode == "prompt" and not bg:
    raise ValueError("eval.seg_background='prompt' needs background prompts; set eval.seg_background_prompts, "
                     "e.g. ('background',), or use seg_background='threshold'.")
  if bg:
    prompts = np.concatenate([prompts, zeroshot.class_embeddings(run, state, bg, ("{}",))])
  source = run.test_source
  out_hw = tuple(np.asarray(source[0]["mask"]).shape[:2])
  key = ("segment", mode, tuple(names), len(prompts), out_hw)
  if run.cache.get("segment_key") != key:
    run.cache["segment_key"], run.cache["segment"] = key, _predict_fn(run, specs, mode, len(names), out_hw)
  fn, prompts = run.cache["segment"], jnp.asarray(prompts, jnp.float32)
  encode = lambda st, images: fn(st["params"], st["method_state"], images, prompts)  # noqa: E731
  data = features.extract(run, encode, state, source, ("mask", "instance", "classes", "colors"), e.seg_examples)
  data = {k: v[:e.seg_examples] for k, v in data.items()}
  data["pred"] = data.pop("features")
  data["gt"] = _gt_labels(data["mask"], ids, len(source.class_names))
  return {**data, "names": names, "ids": ids, "mode": mode}


def evaluate_segmentation(run: Run, state: TrainState, specs: Any, out: dict | None = None) -> dict[str, float]:
  """eval/miou, eval/miou_objects (the classes alone, background excluded), eval/pixel_acc, and with held-out
  classes eval/miou_unseen / _seen, with held-out pairs eval/pixel_acc_unseen_pairs / _seen_pairs (all %). `out`,
  when given, receives the label maps. Where background covers most pixels (89% of shapes_scenes at 32 px), an
  all-background map scores that share / (classes + 1) in eval/miou (8.1 there) and 0 in eval/miou_objects."""
  seg = segment_split(run, state, specs)
  if out is not None:
    out.update(seg)
  k = len(seg["names"]) + 1
  conf = confusion_matrix(seg["pred"], seg["gt"], k)
  result = {"eval/miou": mean_iou(conf), "eval/miou_objects": mean_iou(conf, range(1, k)),
            "eval/pixel_acc": pixel_accuracy(conf)}
  source = run.test_source
  held = [seg["ids"].index(c) + 1 for c in getattr(source, "held_out_classes", ()) or () if c in seg["ids"]]
  if held:
    seen = [j for j in range(1, k) if j not in held]
    result["eval/miou_unseen"] = mean_iou(conf, held)
    result["eval/miou_seen"] = mean_iou(conf, seen)
  pairs = tuple(getattr(source, "held_out_pairs", ()) or ())
  if pairs and all(f in seg for f in ("instance", "classes", "colors")):
    unseen = pair_pixels(seg, pairs)
    objects = seg["instance"] > 0
    for name, where in (("unseen", unseen), ("seen", objects & ~unseen)):
      if where.any():
        hit = (seg["pred"] == seg["gt"])[where & (seg["gt"] != IGNORE)]
        result[f"eval/pixel_acc_{name}_pairs"] = 100.0 * float(hit.mean()) if hit.size else float("nan")
  return result


def write_png(path: str, run: Run, seg: dict[str, Any], num: int) -> str:
  """Images, ground-truth masks and predicted masks in three rows (class colours as data/scenes.py), with a
  legend; returns the path."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

  from cl_jax.data import scenes  # pylint: disable=g-import-not-at-top

  loader_rows = [run.test_source[i]["image"] for i in range(min(num, len(seg["pred"])))]
  num = len(loader_rows)
  if not num:
    raise ValueError("eval.seg_png_examples is 0: nothing to draw.")
  ids = np.asarray(seg["ids"])
  to_source = np.concatenate([[0], ids + 1])   # evaluated label -> source mask value (0 background)
  gt = np.where(seg["gt"][:num] == IGNORE, 0, seg["gt"][:num])
  size = loader_rows[0].shape[0]
  zoom = max(1, 128 // size)
  tile, pad, legend = size * zoom, 2, 16
  width = max(num * (tile + pad), 4 + 80 * min(5, len(ids)))
  rows_of_legend = -(-len(ids) // 5)
  canvas = Image.new("RGB", (width, 3 * (tile + pad) + rows_of_legend * legend + pad), (255, 255, 255))
  for j, image in enumerate(loader_rows):
    tiles = (image, scenes.overlay(image, to_source[gt[j]]), scenes.overlay(image, to_source[seg["pred"][j]]))
    for row, arr in enumerate(tiles):
      canvas.paste(Image.fromarray(arr).resize((tile, tile), Image.NEAREST), (j * (tile + pad), row * (tile + pad)))
  draw = ImageDraw.Draw(canvas)
  for j, (c, name) in enumerate(zip(ids, seg["names"])):
    x, y = 4 + (j % 5) * 80, 3 * (tile + pad) + pad + (j // 5) * legend
    draw.rectangle([x, y + 2, x + 10, y + 12], fill=scenes.CLASS_COLORS[int(c) % len(scenes.CLASS_COLORS)])
    draw.text((x + 14, y), str(name), fill=(0, 0, 0))
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  canvas.save(path)
  return path
