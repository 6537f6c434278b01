"""The embedded procedural dataset `shapes_scenes`: 1 to 4 overlapping shapes on a textured background.

A multi-object variant of cl_jax/data/shapes.py for open-vocabulary segmentation: it reuses that
module's classes, palette, per-object sampling, antialiased rasterisation and background textures.
Example `i` of split `s` with seed `k` is drawn from its own generator `np.random.default_rng([k,
split_id, i])` (a redraw, when an object would be mostly hidden, from `[k, split_id, i, attempt]`),
and pixel work is elementwise exactly-rounded float32, so an example is bit-identical alone or in
any batch. Objects are painted in order (later ones over earlier ones); `mask` / `instance` give
the visible object of each pixel (the topmost with coverage > 0.5).

  python -m cl_jax.data.scenes --out scenes.png   # images, then the same with their masks overlaid
"""
from __future__ import annotations

import argparse
import re
from typing import Sequence

import numpy as np

from cl_jax.data import shapes
from cl_jax.data.shapes import (BACKGROUND_NAMES, CLASS_NAMES, COLOR_NAMES, SIZE_NAMES, SPLITS,
                                held_out_ids)

MAX_OBJECTS = 4
MIN_SIZE, MAX_SIZE = 32, 224
DEFAULT_NUM_EXAMPLES: dict[str, int] = {"train": 10_000, "test": 2_000}
# Scene captions: {objects} names every object (drawing order), {background} the texture.
CAPTION_TEMPLATES: tuple[str, ...] = (
    "{objects} on a {background} background",
    "a photo of {objects} on a {background} background",
    "a {background} background with {objects}",
    "an image showing {objects}",
    "{objects}, {background} background",
    "there is {objects} on a {background} backdrop",
)
# How one object is named; caption template k uses OBJECT_TEMPLATES[k % len(OBJECT_TEMPLATES)].
OBJECT_TEMPLATES: tuple[str, ...] = ("{color} {shape}", "{size} {color} {shape}")
COUNT_NAMES: tuple[str, ...] = ("one", "two", "three", "four")

_SCALE = 0.55          # object radius = the shapes radius of its size class times this
_WINDOW_SIZE_CLASS = 0  # raster window of shapes' smallest size class: holds any scaled object
_MIN_VISIBLE = 0.3     # an object keeps at least this fraction of its own pixels visible
_MAX_TRIES = 1000      # redraws of one object (held out / low contrast) or one scene (hidden object)
_CHUNK = 256           # examples rendered at once (bounds the [chunk, 4, S, S] coverage array)
_OBJ_FLOATS = ("cy", "cx", "radius", "cos", "sin")
_BG_FLOATS = ("period", "tcos", "tsin", "phase_a", "phase_b", "knob")


def _fmt(x: object) -> str:
  return repr(x) if isinstance(x, str) else str(x)


def _check_size(image_size: object) -> None:
  if (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
      or not MIN_SIZE <= image_size <= MAX_SIZE):
    raise ValueError(f"shapes_scenes image_size must be an int in [{MIN_SIZE}, {MAX_SIZE}], got "
                     f"{_fmt(image_size)}; pass e.g. image_size=64.")


def _check_count(name: str, value: object, low: int, example: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    kind = "a positive" if low else "a non-negative"
    raise ValueError(f"{name} must be {kind} int, got {_fmt(value)}; pass e.g. {name}={example}.")


def held_out_class_ids(classes: Sequence[object] | None) -> tuple[int, ...]:
  """Class names or ids kept out of the train split -> sorted unique class ids (one-line errors)."""
  if isinstance(classes, str):
    classes = (classes,)
  out = set()
  for c in classes or ():
    if isinstance(c, (int, np.integer)) and not isinstance(c, bool) and 0 <= c < len(CLASS_NAMES):
      out.add(int(c))
    elif isinstance(c, str) and c in CLASS_NAMES:
      out.add(CLASS_NAMES.index(c))
    else:
      raise ValueError(f"unknown held-out class {_fmt(c)}; use class names from "
                       f"{', '.join(CLASS_NAMES)}, e.g. held_out_classes=('star', 'ring').")
  if len(out) >= len(CLASS_NAMES):
    raise ValueError("held_out_classes holds out every class; keep at least one for training.")
  return tuple(sorted(out))


# ------------------------------------------------------------------ per-example parameters

def _sample_scene(rng: np.random.Generator, s: int, held_pairs: set, held_classes: set) -> dict:
  """All random choices of one scene: count, template, then each object (shapes' sampler)."""
  num, template = int(rng.random() * MAX_OBJECTS) + 1, int(rng.random() * len(CAPTION_TEMPLATES))
  bg, objects = None, []
  for _ in range(num):
    for _ in range(_MAX_TRIES):  # redraw held-out objects and colours lost on the background
      e = shapes._sample_example(rng, s)  # pylint: disable=protected-access
      if (e["label"], e["color"]) in held_pairs or e["label"] in held_classes:
        continue
      if bg is None or shapes._segment_distance(  # pylint: disable=protected-access
          e["rgb"], bg["c1"], bg["c2"]) >= shapes._MIN_CONTRAST:  # pylint: disable=protected-access
        break
    else:
      raise RuntimeError("could not draw an allowed object; hold out fewer pairs or classes.")
    bg = e if bg is None else bg  # the first object's background (chosen to contrast with it)
    radius = e["radius"] * _SCALE
    u = rng.random(2).tolist()
    margin = radius + 0.5
    objects.append(dict(label=e["label"], color=e["color"], size=e["size"], radius=radius,
                        cy=margin + u[0] * (s - 2 * margin), cx=margin + u[1] * (s - 2 * margin),
                        cos=e["cos"], sin=e["sin"], rgb=e["rgb"]))
  return dict(objects=objects, bg=bg, template=template)


def _coverage(scenes: list[dict], s: int) -> np.ndarray:
  """Antialiased coverage of every object slot, [N, MAX_OBJECTS, S, S] float32 (0 for padding)."""
  objs = [o for sc in scenes for o in sc["objects"]]
  p = {k: np.array([o[k] for o in objs], np.float32) for k in _OBJ_FLOATS}
  p["label"] = np.array([o["label"] for o in objs], np.int64)
  p["size"] = np.full(len(objs), _WINDOW_SIZE_CLASS, np.int64)
  flat = shapes._render_alpha(p, s)  # pylint: disable=protected-access
  alpha = np.zeros((len(scenes), MAX_OBJECTS, s, s), np.float32)
  rows = [(n, k) for n, sc in enumerate(scenes) for k in range(len(sc["objects"]))]
  if rows:
    alpha[tuple(np.array(rows).T)] = flat
  return alpha


def _texture(scenes: list[dict], s: int) -> np.ndarray:
  """Background blend weight t, [N, S, S] float32 (shapes' textures of each scene's background)."""
  bgs = [sc["bg"] for sc in scenes]
  p = {k: np.array([b[k] for b in bgs], np.float32) for k in _BG_FLOATS}
  p["background"] = np.array([b["background"] for b in bgs], np.int32)
  p["label"] = p["background"]
  return shapes._render_background(p, bgs, s)  # pylint: disable=protected-access


def _pad(values: list, fill: float, dtype) -> np.ndarray:
  return np.array(values + [fill] * (MAX_OBJECTS - len(values)), dtype)


def _render(scenes: list[dict], s: int) -> dict[str, np.ndarray]:
  """Image, instance map and per-object visible / full pixel counts of each scene."""
  n = len(scenes)
  alpha, t = _coverage(scenes, s), _texture(scenes, s)
  rgb = np.array([_pad([o["rgb"] for o in sc["objects"]], [0.0] * 3, np.float32) for sc in scenes],
                 np.float32).reshape(n, MAX_OBJECTS, 3)
  image = np.empty((n, s, s, 3), np.uint8)
  for c in range(3):
    c1, c2 = (np.array([sc["bg"][key][c] for sc in scenes], np.float32)[:, None, None]
              for key in ("c1", "c2"))
    px = c1 + t * (c2 - c1)
    for k in range(MAX_OBJECTS):  # painter's order; a padded slot (alpha 0) leaves px unchanged
      px = px + alpha[:, k] * (rgb[:, k, c, None, None] - px)
    image[..., c] = np.clip(np.rint(px), 0, 255)
  inside = alpha > 0.5
  instance = np.zeros((n, s, s), np.uint8)
  for k in range(MAX_OBJECTS):
    instance = np.where(inside[:, k], np.uint8(k + 1), instance)
  visible = np.stack([(instance == k + 1).sum(axis=(1, 2)) for k in range(MAX_OBJECTS)], axis=1)
  return dict(image=image, instance=instance, visible=visible, full=inside.sum(axis=(2, 3)))


def _boxes(instance: np.ndarray) -> np.ndarray:
  """(x0, y0, x1, y1) pixel edges of each instance's visible pixels, [N, MAX_OBJECTS, 4]; -1 if none."""
  n, s = instance.shape[:2]
  out = np.full((n, MAX_OBJECTS, 4), -1, np.float32)
  for k in range(MAX_OBJECTS):
    m = instance == k + 1
    rows, cols = m.any(axis=2), m.any(axis=1)
    box = np.stack([cols.argmax(1), rows.argmax(1), s - cols[:, ::-1].argmax(1),
                    s - rows[:, ::-1].argmax(1)], axis=1).astype(np.float32)
    out[:, k] = np.where(rows.any(axis=1)[:, None], box, -1)
  return out


# ------------------------------------------------------------------ public API

def _article(phrase: str) -> str:
  return ("an " if phrase[0] in "aeiou" else "a ") + phrase


def caption(objects: Sequence[tuple[int, int, int]], background: int, template_index: int) -> str:
  """English caption naming every (class, colour, size) object of a scene, in drawing order."""
  if not 0 <= int(template_index) < len(CAPTION_TEMPLATES):
    raise ValueError(f"template_index must be in [0, {len(CAPTION_TEMPLATES)}), got "
                     f"{template_index}; pick one of the scenes CAPTION_TEMPLATES indices.")
  obj = OBJECT_TEMPLATES[int(template_index) % len(OBJECT_TEMPLATES)]
  names = [_article(obj.format(shape=CLASS_NAMES[c], color=COLOR_NAMES[k], size=SIZE_NAMES[z]))
           for c, k, z in objects]
  listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
  return CAPTION_TEMPLATES[int(template_index)].format(objects=listed,
                                                       background=BACKGROUND_NAMES[int(background)])


def vocabulary_words() -> tuple[str, ...]:
  """Literal words of the scene caption templates (for a word-level tokenizer's vocabulary)."""
  text = " ".join(CAPTION_TEMPLATES).replace("{objects}", " ").replace("{background}", " ")
  return tuple(sorted(set(re.findall(r"[\w'-]+", text)) | {"a", "an", "and"}))


def generate(num: int, *, split: str = "train", seed: int = 0, image_size: int = 64,
             start: int = 0, held_out_pairs: Sequence[Sequence[object]] = (),
             held_out_classes: Sequence[object] = ()) -> dict[str, np.ndarray]:
  """Scenes start .. start+num-1 of a split: image, mask, instance, boxes, objects, label, caption.

  In the train split no object is a held-out (class, colour) pair or of a held-out class (such an
  object is redrawn from the example's own generator); the test split keeps them.
  """
  _check_size(image_size)
  shapes._check_args(split, seed, image_size)  # pylint: disable=protected-access
  _check_count("num", num, 0, 1000)
  _check_count("start", start, 0, 0)
  s, train = int(image_size), split == "train"
  pairs = set(held_out_ids(held_out_pairs)) if train else set()
  classes = set(held_out_class_ids(held_out_classes)) if train else set()
  parts = []
  for lo in range(start, start + num, _CHUNK):
    index = list(range(lo, min(lo + _CHUNK, start + num)))
    attempt = [0] * len(index)
    scenes = [None] * len(index)
    rendered: dict[str, np.ndarray] = {}
    todo = list(range(len(index)))
    while todo:  # redraw scenes where an object is mostly hidden, from [seed, split, i, attempt]
      for j in todo:
        key = [int(seed), SPLITS[split], index[j]] + ([attempt[j]] if attempt[j] else [])
        scenes[j] = _sample_scene(np.random.default_rng(key), s, pairs, classes)
      got = _render([scenes[j] for j in todo], s)
      for key, value in got.items():
        rendered.setdefault(key, np.zeros((len(index),) + value.shape[1:], value.dtype))[todo] = value
      real = np.arange(MAX_OBJECTS)[None] < np.array([len(scenes[j]["objects"]) for j in todo])[:, None]
      ok = ~real | ((got["visible"] >= _MIN_VISIBLE * got["full"]) & (got["visible"] > 0))
      todo = [j for j, good in zip(todo, ok.all(axis=1)) if not good]
      for j in todo:
        attempt[j] += 1
        if attempt[j] > _MAX_TRIES:
          raise RuntimeError(f"scene {index[j]} keeps hiding an object; this is a bug, report it.")
    parts.append(_assemble(scenes, rendered, index))
  if not parts:
    parts.append(_assemble([], _render([], s), []))
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _assemble(scenes: list[dict], r: dict[str, np.ndarray], index: list[int]) -> dict[str, np.ndarray]:
  """Per-example arrays (and captions) from sampled scenes and their render."""
  n, s = len(scenes), r["instance"].shape[1]
  objs = [sc["objects"] for sc in scenes]
  classes = np.array([_pad([o["label"] for o in ob], -1, np.int32) for ob in objs], np.int32)
  classes = classes.reshape(n, MAX_OBJECTS)
  nouns = np.zeros((n, len(CLASS_NAMES)), np.int32)
  for j, ob in enumerate(objs):
    nouns[j, [o["label"] for o in ob]] = 1
  largest = np.argmax(np.where(classes >= 0, r["visible"], -1), axis=1) if n else np.zeros(0, int)
  lookup = np.concatenate([np.zeros((n, 1), np.int32), classes + 1], axis=1)
  caps = np.empty(n, dtype=object)
  for j, sc in enumerate(scenes):
    caps[j] = caption([(o["label"], o["color"], o["size"]) for o in sc["objects"]],
                      sc["bg"]["background"], sc["template"])
  return {
      "image": r["image"],
      "mask": np.take_along_axis(lookup, r["instance"].reshape(n, s * s).astype(np.int64),
                                 axis=1).reshape(r["instance"].shape).astype(np.uint8),
      "instance": r["instance"],
      "boxes": _boxes(r["instance"]),
      "classes": classes,
      "colors": np.array([_pad([o["color"] for o in ob], -1, np.int32) for ob in objs],
                         np.int32).reshape(n, MAX_OBJECTS),
      "sizes": np.array([_pad([o["size"] for o in ob], -1, np.int32) for ob in objs],
                        np.int32).reshape(n, MAX_OBJECTS),
      "num_objects": np.array([len(ob) for ob in objs], np.int32),
      "label": classes[np.arange(n), largest].astype(np.int32),
      "nouns": nouns,
      "background": np.array([sc["bg"]["background"] for sc in scenes], np.int32),
      "template": np.array([sc["template"] for sc in scenes], np.int32),
      "index": np.array(index, np.int32),
      "caption": caps,
  }


class ScenesSource(shapes.ShapesSource):
  """Grain-compatible random-access source of `shapes_scenes`, generated eagerly in memory.

  `label` is the class of the largest visible object (for kNN / linear probes), `nouns` the
  multi-hot classes present (multi-label prompts), `captions_of(i)` the caption under every
  template, generated one first; `held_out_pairs` / `held_out_classes` are kept out of train.
  `__len__`, `attribute_values` and `get_with_captions` are ShapesSource's.
  """

  name = "shapes_scenes"
  has_labels = True
  has_masks = True
  num_classes = len(CLASS_NAMES)
  class_names = CLASS_NAMES
  _KEYS = ("image", "mask", "instance", "boxes", "classes", "colors", "sizes", "num_objects",
           "label", "nouns", "background", "index")
  _INT32 = ("mask", "instance")  # stored as uint8 (memory), returned as int32
  attributes: dict[str, tuple[str, tuple[str, ...]]] = {
      "shape": ("label", CLASS_NAMES), "background": ("background", BACKGROUND_NAMES),
      "count": ("num_objects", ("zero",) + COUNT_NAMES)}

  def __init__(self, split: str = "train", *, num_examples: int | None = None,
               image_size: int = 64, seed: int = 0,
               held_out_pairs: Sequence[Sequence[object]] = (),
               held_out_classes: Sequence[object] = ()):  # pylint: disable=super-init-not-called
    _check_size(image_size)
    shapes._check_args(split, seed, image_size)  # pylint: disable=protected-access
    num_examples = DEFAULT_NUM_EXAMPLES[split] if num_examples is None else num_examples
    _check_count("num_examples", num_examples, 1, 1000)
    self.split, self.seed, self.image_size = split, int(seed), int(image_size)
    self.held_out_pairs: tuple[tuple[int, int], ...] = held_out_ids(held_out_pairs)
    self.held_out_classes: tuple[int, ...] = held_out_class_ids(held_out_classes)
    data = generate(int(num_examples), split=split, seed=seed, image_size=image_size,
                    held_out_pairs=self.held_out_pairs, held_out_classes=self.held_out_classes)
    self.captions: list[str] = list(data.pop("caption"))
    self.arrays: dict[str, np.ndarray] = data

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"index {i} out of range for a ScenesSource of {n} examples.")
    return {k: np.asarray(self.arrays[k][i], np.int32 if k in self._INT32 else None)
            for k in self._KEYS}

  def captions_of(self, i: int) -> list[str]:
    """Example i's caption under each template, starting at its generated one (= captions[i])."""
    a = self.arrays
    num = int(a["num_objects"][i])
    objs = [(int(a["classes"][i, k]), int(a["colors"][i, k]), int(a["sizes"][i, k]))
            for k in range(num)]
    first, n = int(a["template"][i]), len(CAPTION_TEMPLATES)
    return [caption(objs, int(a["background"][i]), (first + j) % n) for j in range(n)]

  def __repr__(self) -> str:
    held = f", held_out_pairs={len(self.held_out_pairs)}" if self.held_out_pairs else ""
    if self.held_out_classes:
      held += f", held_out_classes={tuple(CLASS_NAMES[c] for c in self.held_out_classes)}"
    return (f"ScenesSource(split={self.split!r}, num_examples={len(self)}, "
            f"image_size={self.image_size}, seed={self.seed}{held})")


# One overlay colour per class (index = class id); background stays the image.
CLASS_COLORS = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200), (245, 130, 48),
                 (145, 30, 180), (70, 240, 240), (240, 50, 230), (170, 110, 40), (128, 128, 128))


def overlay(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """uint8 [H, W, 3]: `image` with each pixel of class mask value m > 0 (class m - 1) tinted in its class colour."""
  palette = np.array([(0, 0, 0), *CLASS_COLORS], np.float32)
  im = np.asarray(image).astype(np.float32)
  m = np.asarray(mask).astype(np.int64) % len(palette)
  return np.where(m[..., None] > 0, 0.35 * im + 0.65 * palette[m], im).astype(np.uint8)


def grid_png(path: str, num: int = 8, image_size: int = 64, split: str = "train",
             seed: int = 0) -> None:
  """Write `num` scenes in a row, the same with their class masks overlaid below, and a legend."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

  data = generate(num, split=split, seed=seed, image_size=image_size)
  zoom = max(1, 128 // image_size)
  tile, pad, legend = image_size * zoom, 2, 16
  width = max(num * (tile + pad), 10 + len(CLASS_NAMES) * 80 // 2)
  canvas = Image.new("RGB", (width, 2 * (tile + pad) + 2 * legend + pad), (255, 255, 255))
  for j in range(num):
    for row, arr in enumerate((data["image"][j], overlay(data["image"][j], data["mask"][j]))):
      tile_im = Image.fromarray(arr).resize((tile, tile), Image.NEAREST)
      canvas.paste(tile_im, (j * (tile + pad), row * (tile + pad)))
  draw = ImageDraw.Draw(canvas)
  y0 = 2 * (tile + pad) + pad
  for c, name in enumerate(CLASS_NAMES):  # legend: two lines of five classes
    x, y = 4 + (c % 5) * 80, y0 + (c // 5) * legend
    draw.rectangle([x, y + 2, x + 10, y + 12], fill=CLASS_COLORS[c])
    draw.text((x + 14, y), name, fill=(0, 0, 0))
  canvas.save(path)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Write a PNG grid of the shapes_scenes dataset.")
  parser.add_argument("--out", default="scenes.png")
  parser.add_argument("--num", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=64)
  parser.add_argument("--split", default="train")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  grid_png(args.out, args.num, args.image_size, args.split, args.seed)
  print(f"wrote {args.out}")
