"""Image augmentations on the device, pure JAX: keyed single-image ops, vmapped over the batch.

Follows SimCLR (Chen et al. 2020, Appendix A), BYOL (Grill et al. 2020, Table 6) and DINO multi-crop
(Caron et al. 2021, Sec. 3.1): random resized crop, flip, colour jitter, grayscale, Gaussian blur, solarize.
Each op takes one float32 HxWx3 image in [0, 1] and its own key; optional ops are applied with `lax.cond`
on a coin flip, as in DeepMind's BYOL code. `make_views` turns a uint8 batch into normalised view groups.

Each op draws all its random numbers as ONE uniform vector from its key (one threefry call per op, one per
view inside `make_views`): many small PRNG calls make XLA compile times balloon.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax import lax

# The colour ops live in cl_jax/data/color.py; augment keeps them in its API (augment.color_jitter, ...).
from cl_jax.data.color import (  # pylint: disable=unused-import
    Probability, _grayscale, _jitter, adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation,
    color_jitter, hsv_to_rgb, maybe_apply, random_grayscale, rgb_to_hsv, uniform_between)

MEAN_RGB = (0.485, 0.456, 0.406)
STD_RGB = (0.229, 0.224, 0.225)
_CROP_TRIES = 10


# ----------------------------------------------------------------------------- helpers


def to_float(image: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float images are cast to float32 unchanged."""
  if jnp.issubdtype(image.dtype, jnp.integer):
    return image.astype(jnp.float32) / 255.0
  return image.astype(jnp.float32)


def normalize(images: jax.Array) -> jax.Array:
  """Subtract the ImageNet mean and divide by its std per channel (uint8 inputs are scaled to [0, 1] first)."""
  return (to_float(images) - jnp.asarray(MEAN_RGB)) / jnp.asarray(STD_RGB)


def denormalize(images: jax.Array) -> jax.Array:
  """Inverse of `normalize`: back to float32 in (about) [0, 1]."""
  return images.astype(jnp.float32) * jnp.asarray(STD_RGB) + jnp.asarray(MEAN_RGB)


# ----------------------------------------------------------------------------- crop and flip


def _crop_box(u: jax.Array, height: int, width: int, scale: tuple[float, float],
              ratio: tuple[float, float]) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """`sample_crop_box` from 2 * _CROP_TRIES + 2 uniforms."""
  tries = _CROP_TRIES
  target = height * width * uniform_between(u[:tries], scale[0], scale[1])
  aspect = jnp.exp(uniform_between(u[tries:2 * tries], math.log(ratio[0]), math.log(ratio[1])))
  ws = jnp.round(jnp.sqrt(target * aspect)).astype(jnp.int32)
  hs = jnp.round(jnp.sqrt(target / aspect)).astype(jnp.int32)
  ok = (ws > 0) & (ws <= width) & (hs > 0) & (hs <= height)
  # Fallback, static as in torchvision: the whole image, or its centre cut to the nearest allowed ratio.
  in_ratio = width / height
  if in_ratio < min(ratio):
    fw, fh = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    fw, fh = int(round(height * max(ratio))), height
  else:
    fw, fh = width, height
  first = jnp.argmax(ok)
  found = ok[first]
  h = jnp.where(found, hs[first], fh)
  w = jnp.where(found, ws[first], fw)
  # Uniform integer offsets in [0, height - h] and [0, width - w].
  y0 = jnp.minimum(jnp.floor(u[2 * tries] * (height - h + 1)).astype(jnp.int32), height - h)
  x0 = jnp.minimum(jnp.floor(u[2 * tries + 1] * (width - w + 1)).astype(jnp.int32), width - w)
  y0 = jnp.where(found, y0, (height - fh) // 2)
  x0 = jnp.where(found, x0, (width - fw) // 2)
  return y0, x0, h, w


def sample_crop_box(key: jax.Array, height: int, width: int, scale: tuple[float, float] = (0.08, 1.0),
                    ratio: tuple[float, float] = (3 / 4, 4 / 3)
                    ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """(y0, x0, h, w) int32 of a random crop as torchvision's RandomResizedCrop.get_params (SimCLR App. A):
  area fraction ~ U(scale), log aspect ratio ~ U(log ratio), first of 10 tries that fits, else a centre crop.

  Branch-free: all tries are sampled at once and the first valid one is picked with argmax.
  """
  u = jax.random.uniform(key, (2 * _CROP_TRIES + 2,))
  return _crop_box(u, height, width, tuple(scale), tuple(ratio))


def _resample_windows(start: jax.Array, length: jax.Array, in_size: int,
                      size: int) -> tuple[jax.Array, jax.Array]:
  """For each of `size` output pixels resampling pixels [start, start + length) of an axis of `in_size`:
  the first of its `taps` consecutive source pixels [size] and their weights [size, taps].

  The kernel is `jax.image.scale_and_translate(method="linear", antialias=True)`'s: a triangle (bilinear),
  widened by the downscale factor when the crop shrinks (antialias), centred on the output pixel's centre,
  taps outside the image dropped and the rest normalised to sum 1. A crop is at most the whole axis, so the
  half-width is at most max(in_size / size, 1) and the non-zero taps fit in a static window of
  ceil(2 * that) pixels, shifted inside the image at the borders.
  """
  taps = min(math.ceil(2 * max(in_size / size, 1.0)), in_size)
  scale = jnp.asarray(length, jnp.float32) / size
  half_width = jnp.maximum(scale, 1.0)
  centre = jnp.asarray(start, jnp.float32) + (jnp.arange(size, dtype=jnp.float32) + 0.5) * scale - 0.5
  first = jnp.floor(centre - half_width).astype(jnp.int32) + 1  # the first pixel strictly inside the kernel
  first = jnp.clip(first, 0, in_size - taps)
  index = (first[:, None] + jnp.arange(taps, dtype=jnp.int32)[None, :]).astype(jnp.float32)
  weight = jnp.maximum(1.0 - jnp.abs(index - centre[:, None]) / half_width, 0.0)
  return first, weight / jnp.sum(weight, axis=1, keepdims=True)


def _resample_axis(x: jax.Array, axis: int, first: jax.Array, weight: jax.Array) -> jax.Array:
  """out[i] = sum_t weight[i, t] * x[..., first[i] + t, ...] (along `axis`) as float32, with the output pixel
  axis moved to the front: one gathered window of consecutive source pixels per output pixel."""
  taps = weight.shape[1]
  windows = jax.vmap(lambda f: lax.dynamic_slice_in_dim(x, f, taps, axis=axis))(first)  # [size, ...]
  windows = to_float(windows)
  w = weight.reshape(weight.shape[:1] + (1,) * (x.ndim - 1) + weight.shape[1:])
  w = jnp.moveaxis(w, -1, axis + 1)
  return sum(lax.index_in_dim(windows, t, axis + 1, keepdims=False)
             * lax.index_in_dim(w, t, axis + 1, keepdims=False) for t in range(taps))


def crop_and_resize(image: jax.Array, y0: jax.Array, x0: jax.Array, h: jax.Array, w: jax.Array,
                    size: int, flip: jax.Array | bool = False) -> jax.Array:
  """Crop [y0:y0+h, x0:x0+w] (traced) and resize to float32 [size, size, C] bilinearly with antialiasing.

  Same values as `jax.image.scale_and_translate(method="linear", antialias=True)` of the whole image (so
  output pixels at the crop's border interpolate with the pixels just outside it, where torchvision's
  crop-then-resize clamps to the crop), but separable and gathered: each output column, then row, mixes only
  its window of 2 source pixels (upscaling) or ceil(2 * downscale) (shrinking): O(size^2) work per view
  instead of dense [size, H] resampling matrices. Columns are gathered from the (uint8) image before the cast.
  `flip` (traced bool) mirrors the output left-right by reversing the column windows: the same values as
  `out[:, ::-1]`, without a second pass over the view (under vmap a flip of the output would be a select
  between two evaluations of the resampling).
  """
  height, width = image.shape[0], image.shape[1]
  first, weight = _resample_windows(x0, w, width, size)
  first = jnp.where(flip, first[::-1], first)
  weight = jnp.where(flip, weight[::-1], weight)
  # Columns first, from the transposed image so that each window is a contiguous block; the transpose does
  # not depend on the crop, so under make_views' vmap over views it is done once per image.
  cols = _resample_axis(jnp.swapaxes(image, 0, 1), 0, first, weight)  # [size, H, C]
  return _resample_axis(cols, 1, *_resample_windows(y0, h, height, size))  # [size (y), size (x), C]


def random_resized_crop(image: jax.Array, key: jax.Array, *, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> jax.Array:
  """Inception-style random resized crop (SimCLR App. A, BYOL Table 6) to float32 [size, size, 3]."""
  y0, x0, h, w = sample_crop_box(key, image.shape[0], image.shape[1], scale, ratio)
  return crop_and_resize(image, y0, x0, h, w, size)


def _flip(image: jax.Array, u: jax.Array, p: Probability) -> jax.Array:
  return maybe_apply(lambda x: x[:, ::-1], image, u[0], p)


def horizontal_flip(image: jax.Array, key: jax.Array, p: Probability = 0.5) -> jax.Array:
  """Left-right flip with probability p (SimCLR App. A)."""
  return _flip(image, jax.random.uniform(key, (1,)), p)


# ----------------------------------------------------------------------------- blur and solarize


def _conv1d(x: jax.Array, weights: jax.Array, axis: int) -> jax.Array:
  """'Same' 1-D correlation along `axis` with reflect padding, as a sum of shifted slices."""
  radius = (weights.shape[0] - 1) // 2
  n = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (radius, radius)
  xp = jnp.pad(x, pad, mode="reflect" if radius < n else "edge")
  return sum(weights[i] * lax.slice_in_dim(xp, i, i + n, axis=axis) for i in range(2 * radius + 1))


def _blur(image: jax.Array, u: jax.Array, *, p: Probability, sigma: tuple[float, float],
          kernel_frac: float) -> jax.Array:
  """`gaussian_blur` from 2 uniforms: coin, sigma."""
  radius = max(int(image.shape[0] * kernel_frac) // 2, 1)

  def blur(x: jax.Array) -> jax.Array:
    s = uniform_between(u[1], sigma[0], sigma[1])
    t = jnp.arange(-radius, radius + 1, dtype=jnp.float32)
    w = jnp.exp(-t * t / (2.0 * s * s))
    w = w / jnp.sum(w)
    return _conv1d(_conv1d(x, w, axis=0), w, axis=1)

  return maybe_apply(blur, image, u[0], p)


def gaussian_blur(image: jax.Array, key: jax.Array, *, p: Probability,
                  sigma: tuple[float, float] = (0.1, 2.0), kernel_frac: float = 0.1) -> jax.Array:
  """Separable Gaussian blur (SimCLR App. A): odd kernel of ~kernel_frac of the height (>= 3),
  sigma ~ U(sigma), reflect padding; applied with probability p (BYOL Table 6: 1.0 / 0.1).
  """
  return _blur(image, jax.random.uniform(key, (2,)), p=p, sigma=sigma, kernel_frac=kernel_frac)


def _solarize(image: jax.Array, u: jax.Array, p: Probability, threshold: float = 0.5) -> jax.Array:
  return maybe_apply(lambda x: jnp.where(x >= threshold, 1.0 - x, x), image, u[0], p)


def solarize(image: jax.Array, key: jax.Array, *, p: Probability, threshold: float = 0.5) -> jax.Array:
  """x -> 1 - x where x >= threshold, with probability p (BYOL Table 6: 0.0 / 0.2)."""
  return _solarize(image, jax.random.uniform(key, (1,)), p, threshold)


# ----------------------------------------------------------------------------- recipes


_GROUP_DEFAULTS: dict[str, Any] = dict(
    size=224, views=2, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5, jitter_p=0.8,
    jitter_strength=1.0, jitter=(0.8, 0.8, 0.8, 0.2), grayscale_p=0.2, blur_p=(0.5,), blur_sigma=(0.1, 2.0),
    solarize_p=(0.0,), role="")
# What a group's crops are for, where a method treats groups differently (DINO Sec. 3.1: "global" crops go to
# the teacher and the student, "local" ones to the student only); "" declares nothing, as other methods need.
ROLES = ("", "global", "local")


def _as_tuple(name: str, value: Any, length: int | None) -> tuple[float, ...]:
  values = tuple(float(v) for v in value) if isinstance(value, (tuple, list)) else (float(value),)
  if not values or (length is not None and len(values) != length):
    raise ValueError(f"Augmentation option {name}={value!r} must be {length or 'one or more'} numbers.")
  return values


def group(**overrides: Any) -> ml_collections.ConfigDict:
  """One crop group of a recipe with SimCLR defaults (App. A); per-view `blur_p` / `solarize_p` tuples,
  cycled over views, give BYOL's asymmetric views (Table 6), and `size`/`scale` give DINO's local crops.
  `jitter` = (brightness, contrast, saturation, hue) before scaling by `jitter_strength`: SimCLR's (0.8, 0.8,
  0.8, 0.2); BYOL/DINO/MoCo v3 use torchvision ColorJitter(0.4, 0.4, 0.2, 0.1) = (0.8, 0.8, 0.4, 0.2) x 0.5.
  `role` (one of ROLES) says which crops a group holds for methods that tell them apart (DINO's teacher).
  """
  unknown = sorted(set(overrides) - set(_GROUP_DEFAULTS))
  if unknown:
    raise ValueError(f"Unknown augmentation option(s) {unknown}; known options: "
                     f"{', '.join(sorted(_GROUP_DEFAULTS))}.")
  c = {**_GROUP_DEFAULTS, **overrides}
  c["size"], c["views"] = int(c["size"]), int(c["views"])
  for name in ("scale", "ratio", "blur_sigma"):
    c[name] = _as_tuple(name, c[name], 2)
  c["jitter"] = _as_tuple("jitter", c["jitter"], 4)
  for name in ("blur_p", "solarize_p"):
    c[name] = _as_tuple(name, c[name], None)
  for name in ("flip_p", "jitter_p", "jitter_strength", "grayscale_p"):
    c[name] = float(c[name])
  c["role"] = str(c["role"])
  probs = [c["flip_p"], c["jitter_p"], c["grayscale_p"], *c["blur_p"], *c["solarize_p"]]
  checks = [
      (c["role"] in ROLES, f"role={c['role']!r} must be one of {ROLES}"),
      (c["size"] >= 1, f"size={c['size']} must be >= 1"),
      (c["views"] >= 0, f"views={c['views']} must be >= 0 (0 skips the group)"),
      (0 < c["scale"][0] <= c["scale"][1] <= 1, f"scale={c['scale']} must satisfy 0 < lo <= hi <= 1"),
      (0 < c["ratio"][0] <= c["ratio"][1], f"ratio={c['ratio']} must satisfy 0 < lo <= hi"),
      (0 < c["blur_sigma"][0] <= c["blur_sigma"][1], f"blur_sigma={c['blur_sigma']} must satisfy 0 < lo <= hi"),
      (c["jitter_strength"] >= 0, f"jitter_strength={c['jitter_strength']} must be >= 0"),
      (min(c["jitter"]) >= 0 and c["jitter"][3] * c["jitter_strength"] <= 0.5,
       f"jitter={c['jitter']} (brightness, contrast, saturation, hue) must be >= 0 with hue x strength <= 0.5"),
      (all(0 <= q <= 1 for q in probs), f"probabilities (*_p) must lie in [0, 1], got {probs}"),
  ]
  for ok, message in checks:
    if not ok:
      raise ValueError(f"Bad augmentation group: {message}.")
  return ml_collections.ConfigDict(c)


def _view_probability(ps: tuple[float, ...], views: int) -> tuple[float | None, jax.Array]:
  """View v uses ps[v % len(ps)]: a static float if all views agree (else None), and the per-view array."""
  per_view = [ps[v % len(ps)] for v in range(views)]
  static = per_view[0] if len(set(per_view)) == 1 else None
  return static, jnp.asarray(per_view, jnp.float32)


_VIEW_UNIFORMS = 2 * _CROP_TRIES + 2 + 1 + 6 + 1 + 2 + 1  # crop, flip, jitter, grayscale, blur, solarize


def _augment_view(image: jax.Array, key: jax.Array, cfg: ml_collections.ConfigDict,
                  blur_p: Probability, solarize_p: Probability) -> jax.Array:
  """One view, BYOL Table 6 order: crop, flip, colour jitter, grayscale, blur, solarize; float32 in [0, 1]."""
  u = jax.random.uniform(key, (_VIEW_UNIFORMS,))
  u_crop, u_flip, u_jitter, u_gray, u_blur, u_solar = jnp.split(
      u, np.cumsum([2 * _CROP_TRIES + 2, 1, 6, 1, 2]))
  y0, x0, h, w = _crop_box(u_crop, image.shape[0], image.shape[1], cfg.scale, cfg.ratio)
  x = crop_and_resize(image, y0, x0, h, w, cfg.size, flip=u_flip[0] < cfg.flip_p)  # flip as `_flip` does
  brightness, contrast, saturation, hue = cfg.jitter
  x = _jitter(x, u_jitter, strength=cfg.jitter_strength, brightness=brightness, contrast=contrast,
              saturation=saturation, hue=hue, p=cfg.jitter_p)
  x = _grayscale(x, u_gray, cfg.grayscale_p)
  x = _blur(x, u_blur, p=blur_p, sigma=cfg.blur_sigma, kernel_frac=0.1)
  return _solarize(x, u_solar, solarize_p)


def example_keys(key: jax.Array, indices: jax.Array) -> jax.Array:
  """One key per example, fold_in(step key, global example index): independent of the device split."""
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, indices)


def _view_groups(recipe: ml_collections.ConfigDict) -> list[tuple[int, str, ml_collections.ConfigDict]]:
  """(index in the recipe, name, validated group) of each group with views > 0, in the recipe's key order."""
  groups = [(i, name, group(**dict(raw.items()))) for i, (name, raw) in enumerate(recipe.items())]
  return [(i, name, cfg) for i, name, cfg in groups if cfg.views > 0]


def view_groups(recipe: ml_collections.ConfigDict) -> tuple[tuple[str, ml_collections.ConfigDict], ...]:
  """(name, validated group) of each array `make_views` returns, in its order: a method reads roles from here."""
  return tuple((name, cfg) for _, name, cfg in _view_groups(recipe))


def make_views(images: jax.Array, keys: jax.Array,
               recipe: ml_collections.ConfigDict) -> tuple[jax.Array, ...]:
  """Augmented, normalised views: one float32 [V, b, size, size, 3] array per group with views > 0, in the
  recipe's key order (ml_collections sorts keys; `view_groups` gives each array's name and role). View v of
  example i uses fold_in(keys[i], (group index, v)).

  Call inside jit / shard_map with the recipe closed over (or as a static FrozenConfigDict).
  """
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f"make_views wants images [b, H, W, 3], got shape {images.shape}; add a batch axis.")
  if keys.shape[0] != images.shape[0]:
    raise ValueError(f"make_views got {keys.shape[0]} keys for {images.shape[0]} images; "
                     "use example_keys(step_key, indices) for one key per example.")
  outputs = []
  for group_index, _, cfg in _view_groups(recipe):
    blur_static, blur_ps = _view_probability(cfg.blur_p, cfg.views)
    solar_static, solar_ps = _view_probability(cfg.solarize_p, cfg.views)

    def one(image, key, blur_p, solar_p, cfg=cfg, blur_static=blur_static, solar_static=solar_static):
      return _augment_view(image, key, cfg,
                           blur_p if blur_static is None else blur_static,
                           solar_p if solar_static is None else solar_static)

    def fold(key, view, g=group_index):
      return jax.random.fold_in(jax.random.fold_in(key, g), view)

    view_keys = jax.vmap(jax.vmap(fold, (0, None)), (None, 0))(keys, jnp.arange(cfg.views))  # [V, b]
    per_batch = jax.vmap(one, in_axes=(0, 0, None, None))
    views = jax.vmap(per_batch, in_axes=(None, 0, 0, 0))(images, view_keys, blur_ps, solar_ps)
    outputs.append(normalize(views))
  if not outputs:
    raise ValueError("Augmentation recipe has no views; give at least one group views > 0.")
  return tuple(outputs)


def eval_preprocess(images: jax.Array, size: int, crop_frac: float = 1.0) -> jax.Array:
  """Deterministic centre crop (crop_frac of the shorter side) + bilinear resize to size, normalised."""
  if images.ndim != 4 or not 0 < crop_frac <= 1:
    raise ValueError(f"eval_preprocess wants images [b, H, W, 3] and 0 < crop_frac <= 1, got "
                     f"shape {images.shape} and crop_frac={crop_frac}.")
  _, height, width, channels = images.shape
  side = max(int(round(crop_frac * min(height, width))), 1)
  y0, x0 = (height - side) // 2, (width - side) // 2
  x = to_float(images[:, y0:y0 + side, x0:x0 + side])
  if side != size:
    x = jax.image.resize(x, (x.shape[0], size, size, channels), method="linear", antialias=True)
  return normalize(x)
