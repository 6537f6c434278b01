"""A PNG grid of augmented views, one row per example: the original, then each view, to eyeball a recipe."""
from __future__ import annotations

from typing import Sequence

import numpy as np
from PIL import Image

from cl_jax.data.augment import MEAN_RGB, STD_RGB


def _to_uint8(images: np.ndarray, normalised: bool) -> np.ndarray:
  """uint8 passes through; float images (ImageNet-normalised if `normalised`, else in [0, 1]) -> uint8."""
  images = np.asarray(images)
  if images.dtype == np.uint8:
    return images
  x = images.astype(np.float32)
  if normalised:
    x = x * np.asarray(STD_RGB, np.float32) + np.asarray(MEAN_RGB, np.float32)
  return (np.clip(x, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _resize_nearest(images: np.ndarray, height: int, width: int) -> np.ndarray:
  """Nearest-neighbour resize of [n, h, w, 3] to [n, height, width, 3]."""
  rows = np.arange(height) * images.shape[1] // height
  cols = np.arange(width) * images.shape[2] // width
  return images[:, rows][:, :, cols]


def view_grid_image(images: np.ndarray, views: Sequence[np.ndarray], max_examples: int = 8,
                    pad: int = 2) -> np.ndarray:
  """uint8 [rows, cols, 3] grid: per example the original, then every view of every group.

  `images`: [b, H, W, 3] uint8 (or float in [0, 1]); `views`: `make_views` output, each group
  [V, b, s, s, 3] (or one view [b, s, s, 3]), ImageNet-normalised; views are denormalised and shown at
  the original's size with nearest-neighbour resizing so crops of different sizes line up.
  """
  originals = _to_uint8(np.asarray(images)[:max_examples], normalised=False)
  if originals.ndim != 4 or originals.shape[-1] != 3:
    raise ValueError(f"view_grid wants images [b, H, W, 3], got shape {originals.shape}.")
  n, height, width, _ = originals.shape
  columns = [originals]
  for g in views:
    g = np.asarray(g)
    for view in (g if g.ndim == 5 else g[None]):
      columns.append(_resize_nearest(_to_uint8(view[:n], normalised=True), height, width))
  grid = np.full((n * (height + pad) + pad, len(columns) * (width + pad) + pad, 3), 255, np.uint8)
  for c, column in enumerate(columns):
    for r in range(n):
      y, x = pad + r * (height + pad), pad + c * (width + pad)
      grid[y:y + height, x:x + width] = column[r]
  return grid


def save_view_grid(path: str, images: np.ndarray, views: Sequence[np.ndarray],
                   max_examples: int = 8) -> None:
  """Write `view_grid_image(images, views, max_examples)` as a PNG at `path`."""
  Image.fromarray(view_grid_image(images, views, max_examples)).save(path, format="PNG")
