"""Colour augmentations on the device (SimCLR App. A, BYOL Table 6): brightness, contrast, saturation and hue
jitter in a random order, and random grayscale, for one float32 HxWx3 image in [0, 1] in tf.image's semantics.

`color_jitter` / `random_grayscale` take a key; `_jitter` / `_grayscale` take the op's uniforms so that
`augment.make_views` draws one uniform vector per view. Also the coin-flip helper every optional op shares.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_LUMA = (0.2989, 0.5870, 0.1140)  # tf.image.rgb_to_grayscale, as in SimCLR's to_grayscale.
_ORDERS = np.asarray(list(itertools.permutations(range(4))), np.int32)  # the 4! jitter orders

Probability = Any  # a Python float (static: 0 skips the op, 1 always applies it) or a traced scalar.


def maybe_apply(fn: Callable[[jax.Array], jax.Array], image: jax.Array, coin: jax.Array,
                 p: Probability) -> jax.Array:
  """fn(image) if coin < p, coin ~ U[0, 1) (BYOL's `_random_apply` with `lax.cond`); static 0 / 1 skip the coin."""
  if isinstance(p, (int, float)):
    if p <= 0:
      return image
    if p >= 1:
      return fn(image)
  return lax.cond(coin < p, fn, lambda x: x, image)


def uniform_between(u: jax.Array, lo: float, hi: float) -> jax.Array:
  """Map u ~ U[0, 1) to U[lo, hi)."""
  return lo + (hi - lo) * u


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """RGB in [0, 1] -> HSV with hue in [0, 1) (as tf.image.rgb_to_hsv / colorsys), on the last axis."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  value = jnp.max(rgb, axis=-1)
  spread = value - jnp.min(rgb, axis=-1)
  saturation = jnp.where(value > 0, spread / jnp.where(value > 0, value, 1.0), 0.0)
  safe = jnp.where(spread > 0, spread, 1.0)
  hue = jnp.where(r == value, (g - b) / safe,
                  jnp.where(g == value, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe)) / 6.0
  hue = jnp.where(spread > 0, jnp.mod(hue, 1.0), 0.0)
  return jnp.stack([hue, saturation, value], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """HSV -> RGB, the inverse of `rgb_to_hsv` (piecewise-linear form of tf.image.hsv_to_rgb)."""
  # Scalar constants only: array constants made inside lax.switch/cond branches break vmap-in-shard_map
  # (the varying-manual-axes check of jax 0.10 wrongly inserts a pvary).
  h, s, v = hsv[..., 0], hsv[..., 1], hsv[..., 2]
  dh = h * 6.0
  d = [jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0),
       jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0),
       jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0)]
  return jnp.stack([v * (1.0 - s + s * dc) for dc in d], axis=-1)


# Colour ops work on a tuple of three [H, W] planes: an op whose every channel depends on all three (saturation,
# hue) would otherwise, once XLA fuses a chain of them into one elementwise loop, recompute its input once per
# output channel, 3^k times for a chain of k ops; separate planes are computed once per pixel.
Planes = tuple[jax.Array, jax.Array, jax.Array]


def _planes(image: jax.Array) -> Planes:
  return image[..., 0], image[..., 1], image[..., 2]


def _value_spread(rgb: Planes) -> tuple[jax.Array, jax.Array]:
  """HSV value (max over channels) and max - min."""
  r, g, b = rgb
  value = jnp.maximum(jnp.maximum(r, g), b)
  return value, value - jnp.minimum(jnp.minimum(r, g), b)


def _plane_mean(plane: jax.Array) -> jax.Array:
  """Mean over the two spatial axes, summed one axis at a time (faster on XLA:CPU than one 2-axis reduce)."""
  return jnp.sum(jnp.sum(plane, axis=-1), axis=-1) / (plane.shape[-2] * plane.shape[-1])


def _saturation_gain(rgb: Planes, factor: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(gain, value) [H, W] such that value + gain * (c - value) for each channel c scales the HSV saturation by
  `factor` (clipped to [0, 1]) at fixed hue and value.

  With v = max, spread = max - min over channels, HSV -> RGB is c = v - spread * (1 - d_c(hue)), so scaling
  s = spread / v to s' = min(s * factor, 1) moves every channel towards v by s' / s = min(factor, v / spread).
  """
  value, spread = _value_spread(rgb)
  gain = jnp.where(spread > 0, jnp.minimum(factor, value / jnp.where(spread > 0, spread, 1.0)), 1.0)
  return gain, value


def _hue_planes(rgb: Planes, delta: jax.Array) -> Planes:
  """Rotate the HSV hue by delta turns: hue from RGB, shifted, back to RGB at the same max and max - min."""
  r, g, b = rgb
  value, spread = _value_spread(rgb)
  safe = jnp.where(spread > 0, spread, 1.0)
  hue = jnp.where(r == value, (g - b) / safe,
                  jnp.where(g == value, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
  dh = hue + 6.0 * delta  # in sixths of a turn, wrapped to [0, 6) with floor (jnp.mod is far slower on CPU)
  dh = dh - 6.0 * jnp.floor(dh / 6.0)
  # hsv_to_rgb's piecewise-linear channel curves d_c, with v * s = spread: c = v - spread * (1 - d_c).
  d = (jnp.clip(jnp.abs(dh - 3.0) - 1.0, 0.0, 1.0),
       jnp.clip(2.0 - jnp.abs(dh - 2.0), 0.0, 1.0),
       jnp.clip(2.0 - jnp.abs(dh - 4.0), 0.0, 1.0))
  return tuple(value - spread * (1.0 - dc) for dc in d)


def adjust_brightness(image: jax.Array, factor: jax.Array) -> jax.Array:
  """x * factor (SimCLR v2 `random_brightness`, impl='simclrv2')."""
  return image * factor


def adjust_contrast(image: jax.Array, factor: jax.Array) -> jax.Array:
  """(x - mean) * factor + mean with the per-channel spatial mean (tf.image.adjust_contrast)."""
  mean = jnp.mean(image, axis=(-3, -2), keepdims=True)
  return (image - mean) * factor + mean


def adjust_saturation(image: jax.Array, factor: jax.Array) -> jax.Array:
  """Multiply HSV saturation by factor, clipped to [0, 1] (tf.image.adjust_saturation), without leaving RGB."""
  rgb = _planes(image)
  gain, value = _saturation_gain(rgb, factor)
  return jnp.stack([value + gain * (c - value) for c in rgb], axis=-1)


def adjust_hue(image: jax.Array, delta: jax.Array) -> jax.Array:
  """Rotate the HSV hue by delta turns (tf.image.adjust_hue)."""
  return jnp.stack(_hue_planes(_planes(image), delta), axis=-1)


# For each of the 4! orders (0 brightness, 1 contrast, 2 saturation, 3 hue): where hue comes, and the other
# three ops in their order.
_HUE_POSITION = np.argmax(_ORDERS == 3, axis=1).astype(np.int32)
_NON_HUE = np.stack([order[order != 3] for order in _ORDERS]).astype(np.int32)


def _blend_op(rgb: Planes, op: jax.Array, fb: jax.Array, fc: jax.Array, fs: jax.Array) -> Planes:
  """clip(ref + a * (c - ref)) per channel c: brightness (op 0: ref 0, a fb), contrast (1: ref the channel's
  mean, a fc), saturation (2: ref the pixel's max, a its gain) or nothing (any other op: a 1)."""
  gain, value = _saturation_gain(rgb, fs)
  alpha = jnp.where(op == 2, gain, jnp.where(op == 0, fb, jnp.where(op == 1, fc, 1.0)))
  out = []
  for c in rgb:
    ref = jnp.where(op == 2, value, jnp.where(op == 1, _plane_mean(c), 0.0))
    out.append(jnp.clip(ref + alpha * (c - ref), 0.0, 1.0))
  return tuple(out)


def _jitter(image: jax.Array, u: jax.Array, *, strength: float, brightness: float, contrast: float,
            saturation: float, hue: float, p: Probability) -> jax.Array:
  """`color_jitter` from 6 uniforms: coin, order, brightness, contrast, saturation, hue.

  Brightness, contrast and saturation are each one blend `ref + a * (c - ref)` (`_blend_op`), so the order is
  a chain of blend slots around the one hue rotation: the three non-hue ops in their order, each in a slot
  before the hue (if it comes before it) or after it. Under vmap every slot runs for every image (a select,
  not a branch), so this costs 6 cheap blends + 1 hue, instead of 4 positions x every op with RGB <-> HSV.
  """
  b, c, s, h = brightness * strength, contrast * strength, saturation * strength, hue * strength
  which = jnp.minimum(jnp.floor(u[1] * 24).astype(jnp.int32), 23)
  hue_at = jnp.asarray(_HUE_POSITION)[which]
  others = jnp.asarray(_NON_HUE)[which]
  fb = uniform_between(u[2], max(1.0 - b, 0.0), 1.0 + b)
  fc = uniform_between(u[3], max(1.0 - c, 0.0), 1.0 + c)
  fs = uniform_between(u[4], max(1.0 - s, 0.0), 1.0 + s)
  dh = uniform_between(u[5], -h, h)

  def before(j: jax.Array, rgb: Planes) -> Planes:
    return _blend_op(rgb, jnp.where(j < hue_at, others[j], -1), fb, fc, fs)

  def after(j: jax.Array, rgb: Planes) -> Planes:
    return _blend_op(rgb, jnp.where(j >= hue_at, others[j], -1), fb, fc, fs)

  def jitter(x: jax.Array) -> jax.Array:
    # Loops, not unrolled Python: a loop carry is materialised, which stops XLA from fusing the slots into one
    # elementwise expression that re-evaluates each slot's input per channel of its output (3^6 on CPU).
    rgb = lax.fori_loop(0, 3, before, _planes(x))
    rgb = tuple(jnp.clip(c, 0.0, 1.0) for c in _hue_planes(rgb, dh))
    return jnp.stack(lax.fori_loop(0, 3, after, rgb), axis=-1)

  return maybe_apply(jitter, image, u[0], p)


def color_jitter(image: jax.Array, key: jax.Array, *, strength: float = 1.0, brightness: float = 0.8,
                 contrast: float = 0.8, saturation: float = 0.8, hue: float = 0.2,
                 p: Probability = 0.8) -> jax.Array:
  """SimCLR colour distortion (App. A, `color_jitter_rand`): brightness, contrast, saturation, hue with
  ranges scaled by `strength`, applied in a random order of the 4! orders, clipped to [0, 1] after each;
  the whole jitter is applied with probability p.
  """
  return _jitter(image, jax.random.uniform(key, (6,)), strength=strength, brightness=brightness,
                 contrast=contrast, saturation=saturation, hue=hue, p=p)


def _grayscale(image: jax.Array, u: jax.Array, p: Probability) -> jax.Array:
  def gray(x: jax.Array) -> jax.Array:
    luma = _LUMA[0] * x[..., 0] + _LUMA[1] * x[..., 1] + _LUMA[2] * x[..., 2]
    return jnp.broadcast_to(luma[..., None], x.shape)
  return maybe_apply(gray, image, u[0], p)


def random_grayscale(image: jax.Array, key: jax.Array, p: Probability = 0.2) -> jax.Array:
  """Replace all channels by the luma (0.2989 R + 0.5870 G + 0.1140 B) with probability p (SimCLR App. A)."""
  return _grayscale(image, jax.random.uniform(key, (1,)), p)
