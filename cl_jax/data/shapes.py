"""The embedded procedural dataset `shapes`: a coloured geometric shape on a textured background.

Pure numpy, offline and deterministic: example `i` of split `s` with seed `k` is drawn from its own
generator `np.random.default_rng([k, split_id, i])`, so any subset in any order is reproducible.
Pixel work uses only exactly-rounded float32 arithmetic (no transcendental functions over the pixel
grid, integer supersample counts), so an example is bit-identical whether generated alone or in a
batch. Shapes are rasterised antialiased (supersampled, then box-downsampled) in small windows.

Each example has a shape class (`label`) and four nuisance attributes: colour, size, position (a
3x3 grid region) and background texture, plus rotation, jitter and texture parameters.

  python -m cl_jax.data.shapes --out grid.png     # a classes x examples PNG grid to look at
"""
from __future__ import annotations

import argparse
import math
from typing import Mapping, Sequence

import numpy as np

from cl_jax.data.shape_geometry import SHAPE_FNS

CLASS_NAMES: tuple[str, ...] = ("circle", "triangle", "square", "star", "cross", "ring", "heart",
                                "crescent", "arrow", "L-shape")
COLOR_NAMES: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "white",
                                "black")
SIZE_NAMES: tuple[str, ...] = ("small", "medium", "large")
POSITION_NAMES: tuple[str, ...] = ("top left", "top middle", "top right", "middle left", "center",
                                   "middle right", "bottom left", "bottom middle", "bottom right")
BACKGROUND_NAMES: tuple[str, ...] = ("striped", "checkered", "dotted", "gradient", "noisy")
CAPTION_TEMPLATES: tuple[str, ...] = (
    "a {size} {color} {shape} in the {position} on a {background} background",
    "a photo of a {size} {color} {shape}, {position}, on a {background} background",
    "{color} {shape}, {size}, {position}, {background} background",
    "a {background} background with a {size} {color} {shape} in the {position}",
    "there is a {size} {color} {shape} in the {position} of a {background} image",
    "{background} pattern behind a {color} {shape} of {size} size near the {position}",
    "an image showing one {shape}; it is {color} and {size}, placed {position}",
    "{size} {shape} coloured {color} over a {background} backdrop, {position}",
)
SPLITS: dict[str, int] = {"train": 0, "test": 1}
DEFAULT_NUM_EXAMPLES: dict[str, int] = {"train": 10_000, "test": 2_000}

_PALETTE = ((220, 30, 30), (245, 135, 20), (240, 220, 30), (40, 170, 50), (35, 70, 220),
            (140, 40, 190), (245, 245, 245), (15, 15, 15))
# Shape radius (every shape fits in its unit disc) as a fraction of the image size, per size class.
_SIZE_RANGES = ((0.24, 0.28), (0.3, 0.34), (0.36, 0.4))
_COLOR_JITTER = 20.0       # +- per RGB channel around the palette colour
_MIN_CONTRAST = 110.0      # min RGB distance between shape colour and any background colour
_TEXTURE_CONTRAST = (20.0, 45.0)  # RGB distance between the two background colours (weak texture)
_TEXTURE_PERIODS = (0.14, 0.2, 0.28)  # texture period as a fraction of the image size
_TEXTURE_ANGLES = 4       # texture orientations, evenly spaced over 180 degrees
_NOISE_GRID = 6            # coarse grid of the "noisy" background's smooth component
_MAX_ELEMENTS = 1 << 23    # supersampled pixels rendered per vectorised chunk


def _fmt(x: object) -> str:
  return repr(x) if isinstance(x, str) else str(x)


def _check_args(split: str, seed: int, image_size: int) -> None:
  if split not in SPLITS:
    raise ValueError(f"Unknown split {_fmt(split)}; pass split='train' or split='test'.")
  if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {_fmt(seed)}; pass e.g. seed=0.")
  if (isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer))
      or image_size < 16):
    raise ValueError(f"image_size must be an int >= 16, got {_fmt(image_size)}; "
                     "pass one of 32, 64, 96, 224.")


def _supersample(image_size: int) -> int:
  return 4 if image_size <= 64 else 2


# ------------------------------------------------------------------ shape geometry: cl_jax/data/shape_geometry.py

_SHAPE_FNS = SHAPE_FNS
assert len(_SHAPE_FNS) == len(CLASS_NAMES)


# ------------------------------------------------------------------ per-example parameters

def _segment_distance(p: list[float], a: list[float], b: list[float]) -> float:
  """Distance from colour p to the segment [a, b] (every background pixel lies on it)."""
  ab = [y - x for x, y in zip(a, b)]
  ap = [y - x for x, y in zip(a, p)]
  t = sum(x * y for x, y in zip(ap, ab)) / max(sum(x * x for x in ab), 1e-6)
  t = min(max(t, 0.0), 1.0)
  return math.sqrt(sum((x - t * y) ** 2 for x, y in zip(ap, ab)))


def _sample_example(rng: np.random.Generator, image_size: int) -> dict:
  """All random choices of one example, drawn in a fixed order from its own generator."""
  s = image_size
  z = rng.random(18).tolist()
  label, color = int(z[0] * len(CLASS_NAMES)), int(z[1] * len(COLOR_NAMES))
  size, position = int(z[2] * len(SIZE_NAMES)), int(z[3] * len(POSITION_NAMES))
  background, template = int(z[4] * len(BACKGROUND_NAMES)), int(z[5] * len(CAPTION_TEMPLATES))
  lo, hi = _SIZE_RANGES[size]
  radius = (lo + (hi - lo) * z[6]) * s
  margin = radius + 0.5
  row, col = divmod(position, 3)
  cy = margin + (row + z[7]) / 3 * (s - 2 * margin)
  cx = margin + (col + z[8]) / 3 * (s - 2 * margin)
  angle, tex_angle = 2 * math.pi * z[9], math.pi * int(z[10] * _TEXTURE_ANGLES) / _TEXTURE_ANGLES
  rgb = [min(max(float(c) + _COLOR_JITTER * (2 * j - 1), 0.0), 255.0)
         for c, j in zip(_PALETTE[color], z[15:18])]
  for _ in range(1000):  # resample the background colours until the shape stands out
    w = rng.random(4).tolist()
    d = rng.standard_normal(3).tolist()
    lo_c, hi_c = _TEXTURE_CONTRAST
    scale = (lo_c + (hi_c - lo_c) * w[3]) / max(math.sqrt(sum(x * x for x in d)), 1e-6)
    c1 = [255 * x for x in w[:3]]
    c2 = [min(max(x + scale * y, 0.0), 255.0) for x, y in zip(c1, d)]
    if _segment_distance(rgb, c1, c2) >= _MIN_CONTRAST:
      break
  ex = dict(label=label, color=color, size=size, position=position, background=background,
            template=template, cy=cy, cx=cx, radius=radius, cos=math.cos(angle),
            sin=math.sin(angle), rgb=rgb, c1=c1, c2=c2, tcos=math.cos(tex_angle),
            tsin=math.sin(tex_angle), period=_TEXTURE_PERIODS[int(z[11] * len(_TEXTURE_PERIODS))] * s, phase_a=z[12],
            phase_b=z[13], knob=z[14], noise=None)
  if BACKGROUND_NAMES[background] == "noisy":
    ex["noise"] = (rng.random((_NOISE_GRID, _NOISE_GRID)), rng.random((s, s)))
  return ex


# ------------------------------------------------------------------ rasterisation

def _render_alpha(p: dict[str, np.ndarray], image_size: int) -> np.ndarray:
  """Antialiased shape coverage in [0, 1], [N, S, S] float32, rendered in per-size windows."""
  s, ss = image_size, _supersample(image_size)
  n = len(p["label"])
  alpha = np.zeros((n, s, s), np.float32)
  for size, (_, hi) in enumerate(_SIZE_RANGES):
    w = min(s, math.ceil(2 * hi * s + 3))  # window that holds any shape of this size class
    grid = ((np.arange(w * ss, dtype=np.float32) + 0.5) / ss).astype(np.float32)
    chunk = max(1, _MAX_ELEMENTS // (w * ss) ** 2)
    for label, fn in enumerate(_SHAPE_FNS):
      members = np.flatnonzero((p["size"] == size) & (p["label"] == label))
      for i in range(0, len(members), chunk):
        idx = members[i:i + chunk]
        cy, cx = p["cy"][idx], p["cx"][idx]
        oy = np.clip(np.floor(cy - w / 2), 0, s - w).astype(np.int64)
        ox = np.clip(np.floor(cx - w / 2), 0, s - w).astype(np.int64)
        dy = (oy.astype(np.float32)[:, None] + grid[None, :] - cy[:, None])[:, :, None]
        dx = (ox.astype(np.float32)[:, None] + grid[None, :] - cx[:, None])[:, None, :]
        inv_r = (np.float32(1) / p["radius"][idx])[:, None, None]
        c, sn = p["cos"][idx][:, None, None] * inv_r, p["sin"][idx][:, None, None] * inv_r
        inside = fn(dx * c + dy * sn, dy * c - dx * sn)
        inside = inside.view(np.uint8)
        rows = sum(inside[:, k::ss, :] for k in range(1, ss)) + inside[:, 0::ss, :]
        count = sum(rows[:, :, k::ss] for k in range(1, ss)) + rows[:, :, 0::ss]
        ar = np.arange(w)
        alpha[idx[:, None, None], oy[:, None, None] + ar[None, :, None],
              ox[:, None, None] + ar[None, None, :]] = count.astype(np.float32) / (ss * ss)
  return alpha


def _tri(w: np.ndarray) -> np.ndarray:
  """Triangle wave in [0, 1] with period 1."""
  return np.abs(2 * (w - np.floor(w)) - 1)


def _render_background(p: dict[str, np.ndarray], ex: list[dict], image_size: int) -> np.ndarray:
  """Texture blend weight t in [0, 1], [N, S, S] float32; the colour is c1 + t (c2 - c1)."""
  s = image_size
  n = len(p["label"])
  t = np.zeros((n, s, s), np.float32)
  pix = np.arange(s, dtype=np.float32) + np.float32(0.5)
  y, x = pix[None, :, None], pix[None, None, :]
  for kind, name in enumerate(BACKGROUND_NAMES):
    idx = np.flatnonzero(p["background"] == kind)
    if not len(idx):
      continue
    col = lambda key: p[key][idx][:, None, None]  # noqa: E731
    period, ca, sa = col("period"), col("tcos"), col("tsin")
    a = (x * ca + y * sa) / period + col("phase_a")
    b = (y * ca - x * sa) / period + col("phase_b")
    sharp = period / 2  # about one pixel wide transitions
    if name == "striped":
      out = np.clip((_tri(a) - 0.5) * sharp + 0.5, 0, 1)
    elif name == "checkered":
      sa_, sb_ = (np.clip((_tri(a) - 0.5) * sharp + 0.5, 0, 1),
                  np.clip((_tri(b) - 0.5) * sharp + 0.5, 0, 1))
      out = sa_ * sb_ + (1 - sa_) * (1 - sb_)
    elif name == "dotted":
      da, db = a - np.floor(a) - 0.5, b - np.floor(b) - 0.5
      dist = np.sqrt(da * da + db * db) * period
      out = np.clip((0.2 + 0.15 * col("knob")) * period - dist + 0.5, 0, 1)
    elif name == "gradient":
      out = np.clip(0.5 + (x * ca + y * sa - s / 2) / s * (0.8 + 0.7 * col("knob")), 0, 1)
    else:  # noisy: bilinear value noise on a coarse grid plus per-pixel noise
      coarse = np.stack([ex[i]["noise"][0] for i in idx]).astype(np.float32)
      fine = np.stack([ex[i]["noise"][1] for i in idx]).astype(np.float32)
      g = pix * np.float32((_NOISE_GRID - 1) / s)
      g0 = np.minimum(np.floor(g).astype(np.int64), _NOISE_GRID - 2)
      f = g - g0.astype(np.float32)
      r0, r1 = coarse[:, g0, :], coarse[:, g0 + 1, :]
      rows = r0 + (r1 - r0) * f[None, :, None]
      c0, c1 = rows[:, :, g0], rows[:, :, g0 + 1]
      smooth = c0 + (c1 - c0) * f[None, None, :]
      out = np.clip(0.75 * smooth + 0.25 * fine, 0, 1)
    t[idx] = out
  return t


def _tight_boxes(mask: np.ndarray) -> np.ndarray:
  """(ymin, xmin, ymax, xmax) of the nonzero pixels, as pixel edges / S; zeros if empty."""
  n, s = mask.shape[:2]
  rows, cols = mask.any(axis=2), mask.any(axis=1)
  ymin, xmin = rows.argmax(axis=1), cols.argmax(axis=1)
  ymax, xmax = s - rows[:, ::-1].argmax(axis=1), s - cols[:, ::-1].argmax(axis=1)
  box = np.stack([ymin, xmin, ymax, xmax], axis=1).astype(np.float32) / s
  return np.where(rows.any(axis=1)[:, None], box, 0).astype(np.float32)


# ------------------------------------------------------------------ public API

def caption(attrs: Mapping[str, object], template_index: int = 0) -> str:
  """English caption of an example from its `label`, `color`, `size`, `position`, `background`."""
  if not 0 <= int(template_index) < len(CAPTION_TEMPLATES):
    raise ValueError(f"template_index must be in [0, {len(CAPTION_TEMPLATES)}), got "
                     f"{template_index}; pick one of the CAPTION_TEMPLATES indices.")
  return CAPTION_TEMPLATES[int(template_index)].format(
      shape=CLASS_NAMES[int(attrs["label"])], color=COLOR_NAMES[int(attrs["color"])],
      size=SIZE_NAMES[int(attrs["size"])], position=POSITION_NAMES[int(attrs["position"])],
      background=BACKGROUND_NAMES[int(attrs["background"])])


def held_out_ids(pairs: Sequence[Sequence[object]] | None) -> tuple[tuple[int, int], ...]:
  """(class, colour) pairs given by name or id -> sorted unique (label_id, color_id) tuples."""
  out = set()
  for pair in pairs or ():
    if isinstance(pair, str) or len(pair) != 2:
      raise ValueError(f"held-out pair {pair!r} is not a (class, colour) pair; pass e.g. "
                       "data.held_out_pairs=(('circle', 'red'), ('star', 'blue')).")
    ids = []
    for value, names, what in ((pair[0], CLASS_NAMES, "class"), (pair[1], COLOR_NAMES, "colour")):
      if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        ok = 0 <= int(value) < len(names)
        ids.append(int(value))
      else:
        ok = value in names
        ids.append(names.index(value) if ok else -1)
      if not ok:
        raise ValueError(f"held-out pair {tuple(pair)!r}: unknown {what} {value!r}; use one of "
                         f"{', '.join(names)}.")
    out.add(tuple(ids))
  if len(out) >= len(CLASS_NAMES) * len(COLOR_NAMES):
    raise ValueError("held_out_pairs holds out every (class, colour) pair; keep some for training.")
  return tuple(sorted(out))


def generate(num: int, *, split: str = "train", seed: int = 0, image_size: int = 32,
             start: int = 0, held_out_pairs: Sequence[Sequence[object]] = ()
             ) -> dict[str, np.ndarray]:
  """Examples start .. start+num-1 of a split: image, label, mask, box, attributes, caption, index.

  `held_out_pairs` ((class, colour) names or ids) never occur in the train split: a train example
  drawing one is redrawn from the generator [seed, split, index, attempt] (attempt 1, 2, ...), so
  it stays a function of its index alone. The test split ignores them (it keeps those pairs).
  """
  _check_args(split, seed, image_size)
  for name, value in (("num", num), ("start", start)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
      raise ValueError(f"{name} must be a non-negative int, got {_fmt(value)}; "
                       f"pass e.g. {name}={1000 if name == 'num' else 0}.")
  s = int(image_size)
  held = set(held_out_ids(held_out_pairs)) if split == "train" else set()
  index = np.arange(start, start + num, dtype=np.int64)
  ex = []
  for i in index:
    e = _sample_example(np.random.default_rng([int(seed), SPLITS[split], int(i)]), s)
    attempt = 0
    while (e["label"], e["color"]) in held:
      attempt += 1
      e = _sample_example(np.random.default_rng([int(seed), SPLITS[split], int(i), attempt]), s)
    ex.append(e)
  ints = ("label", "color", "size", "position", "background", "template")
  p = {k: np.array([e[k] for e in ex], np.int32).reshape(num) for k in ints}
  for k in ("cy", "cx", "radius", "cos", "sin", "tcos", "tsin", "period", "phase_a", "phase_b",
            "knob"):
    p[k] = np.array([e[k] for e in ex], np.float32).reshape(num)
  for k in ("rgb", "c1", "c2"):
    p[k] = np.array([e[k] for e in ex], np.float32).reshape(num, 3)

  alpha = _render_alpha(p, s)
  t = _render_background(p, ex, s)
  image = np.empty((num, s, s, 3), np.uint8)
  for k in range(3):  # per channel: broadcasting over a trailing axis of 3 is slow in numpy
    c1, c2, rgb = (p[key][:, k, None, None] for key in ("c1", "c2", "rgb"))
    bg = c1 + t * (c2 - c1)
    image[..., k] = np.clip(np.rint(bg + alpha * (rgb - bg)), 0, 255)
  mask = np.where(alpha >= 0.5, p["label"][:, None, None] + 1, 0).astype(np.uint8)
  out = {
      "image": image,
      "label": p["label"],
      "mask": mask,
      "box": _tight_boxes(mask),
      **{k: p[k] for k in ("color", "size", "position", "background", "template")},
      "index": index.astype(np.int32),
  }
  caps = np.empty(num, dtype=object)
  for i, e in enumerate(ex):
    caps[i] = caption(e, e["template"])
  out["caption"] = caps
  return out


RENDERS = ("color", "mask")


class ShapesSource:
  """Grain-compatible random-access source of the `shapes` dataset, generated eagerly in memory.

  `captions_of(i)` gives example i's caption under every template, its generated caption first
  (the fixed text of evaluation); `held_out_pairs` the (label_id, color_id) pairs kept out of the
  train split (test examples carry `label` and `color` to report them separately).
  """

  name = "shapes"
  has_labels = True
  num_classes = len(CLASS_NAMES)
  class_names = CLASS_NAMES
  _KEYS = ("image", "label", "index", "mask", "box", "color", "size", "position", "background")
  _ATTRS = ("label", "color", "size", "position", "background", "template")
  # Per-example attributes an evaluation can probe (cl_jax.eval.attributes): name -> (array key, value names).
  attributes: dict[str, tuple[str, tuple[str, ...]]] = {
      "shape": ("label", CLASS_NAMES), "color": ("color", COLOR_NAMES), "size": ("size", SIZE_NAMES),
      "position": ("position", POSITION_NAMES), "background": ("background", BACKGROUND_NAMES)}

  def __init__(self, split: str = "train", *, num_examples: int | None = None,
               image_size: int = 32, seed: int = 0,
               held_out_pairs: Sequence[Sequence[object]] = (), render: str = "color"):
    _check_args(split, seed, image_size)
    if render not in RENDERS:
      raise ValueError(f"Unknown shapes render {render!r}; use one of: {', '.join(RENDERS)} (mask: the white "
                       "shape on black, a diagnostic where shape, size and position are the only signal).")
    if num_examples is None:
      num_examples = DEFAULT_NUM_EXAMPLES[split]
    if (isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer))
        or num_examples < 1):
      raise ValueError(f"num_examples must be a positive int or None, got "
                       f"{_fmt(num_examples)}; pass e.g. num_examples=1000.")
    self.split, self.seed, self.image_size = split, int(seed), int(image_size)
    self.held_out_pairs: tuple[tuple[int, int], ...] = held_out_ids(held_out_pairs)
    data = generate(int(num_examples), split=split, seed=seed, image_size=image_size,
                    held_out_pairs=self.held_out_pairs)
    if render == "mask":
      data["image"] = np.repeat(np.where(data["mask"] > 0, 255, 0).astype(np.uint8)[..., None], 3, axis=-1)
    self.render = render
    self.captions: list[str] = list(data.pop("caption"))
    self.arrays: dict[str, np.ndarray] = data

  def __len__(self) -> int:
    return len(self.captions)

  def __getitem__(self, i: int) -> dict[str, np.ndarray]:
    n = len(self)
    if not -n <= i < n:
      raise IndexError(f"index {i} out of range for a ShapesSource of {n} examples.")
    return {k: np.asarray(self.arrays[k][i]) for k in self._KEYS}

  def attribute_values(self, name: str) -> np.ndarray:
    """Every example's value id of attribute `name` (a key of `attributes`), in index order."""
    return self.arrays[self.attributes[name][0]]

  def captions_of(self, i: int) -> list[str]:
    """Example i's caption under each template, starting at its generated one (= captions[i])."""
    a = {k: int(self.arrays[k][i]) for k in self._ATTRS}
    words = dict(shape=CLASS_NAMES[a["label"]], color=COLOR_NAMES[a["color"]],
                 size=SIZE_NAMES[a["size"]], position=POSITION_NAMES[a["position"]],
                 background=BACKGROUND_NAMES[a["background"]])
    k = len(CAPTION_TEMPLATES)
    return [CAPTION_TEMPLATES[(a["template"] + j) % k].format(**words) for j in range(k)]

  def get_with_captions(self, i: int) -> tuple[dict[str, np.ndarray], list[str]]:
    """(source[i], captions_of(i)): the interface the text wrapper (cl_jax/data/captions.py) reads."""
    return self[i], self.captions_of(i)

  def __repr__(self) -> str:
    held = f", held_out_pairs={len(self.held_out_pairs)}" if self.held_out_pairs else ""
    held += f", render={self.render!r}" if self.render != "color" else ""
    return (f"ShapesSource(split={self.split!r}, num_examples={len(self)}, "
            f"image_size={self.image_size}, seed={self.seed}{held})")


def _grid_png(path: str, per_class: int, image_size: int, split: str, seed: int) -> None:
  """Write a classes x examples grid (upscaled, class names on the left) with PIL."""
  from PIL import Image, ImageDraw  # pylint: disable=g-import-not-at-top

  data = generate(max(200, 30 * per_class), split=split, seed=seed, image_size=image_size)
  zoom = max(1, 96 // image_size)
  tile, pad, left = image_size * zoom, 2, 70
  canvas = Image.new("RGB", (left + per_class * (tile + pad), len(CLASS_NAMES) * (tile + pad)),
                     (255, 255, 255))
  draw = ImageDraw.Draw(canvas)
  for c, name in enumerate(CLASS_NAMES):
    y = c * (tile + pad)
    draw.text((4, y + tile // 2 - 6), name, fill=(0, 0, 0))
    for k, i in enumerate(np.flatnonzero(data["label"] == c)[:per_class]):
      im = Image.fromarray(data["image"][i]).resize((tile, tile), Image.NEAREST)
      canvas.paste(im, (left + k * (tile + pad), y))
  canvas.save(path)


if __name__ == "__main__":
  parser = argparse.ArgumentParser(description="Write a PNG grid of the shapes dataset.")
  parser.add_argument("--out", default="shapes_grid.png")
  parser.add_argument("--per_class", type=int, default=8)
  parser.add_argument("--image_size", type=int, default=32)
  parser.add_argument("--split", default="train")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  _grid_png(args.out, args.per_class, args.image_size, args.split, args.seed)
  print(f"wrote {args.out}")
