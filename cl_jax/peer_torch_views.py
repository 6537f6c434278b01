"""Views and evaluation inputs of the peer reference side (cl_jax/peer_torch.py): cl_jax's augmentations
(cl_jax/data/augment.py, color.py) rebuilt in torchvision, per view and per crop group, and eval_preprocess.

Runs only in the side environment (torch, torchvision), imported by peer_torch.py as a sibling script module; it
imports nothing from cl_jax.
"""
from __future__ import annotations


import numpy as np
import torch
import torch.nn.functional as F
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as TF


# ----------------------------------------------------------------------------- augmentations


_LUMA = (0.2989, 0.587, 0.114)   # torchvision's rgb_to_grayscale weights, as cl_jax's


def _gray(x: torch.Tensor) -> torch.Tensor:
  """[n, 3, h, w] -> [n, 1, h, w] luma."""
  return (_LUMA[0] * x[:, 0] + _LUMA[1] * x[:, 1] + _LUMA[2] * x[:, 2]).unsqueeze(1)


def _blend(x: torch.Tensor, ref: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
  return (f.view(-1, 1, 1, 1) * x + (1.0 - f.view(-1, 1, 1, 1)) * ref).clamp(0.0, 1.0)


def _hue(x: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
  hsv = TF._color._rgb_to_hsv(x)   # torchvision's own conversion (what adjust_hue uses), batched
  h = (hsv[:, 0] + delta.view(-1, 1, 1)) % 1.0
  return TF._color._hsv_to_rgb(torch.stack([h, hsv[:, 1], hsv[:, 2]], dim=1))


def color_jitter(x: torch.Tensor, b: float, c: float, s: float, h: float) -> torch.Tensor:
  """torchvision ColorJitter(b, c, s, h) on a batch, each image with its own factors and random order of the
  four ops (as ColorJitter draws per call): brightness x*f, contrast blend with the mean luma, saturation
  blend with the luma, hue rotation in HSV; each clamped to [0, 1]."""
  n = x.shape[0]
  fb = torch.empty(n).uniform_(max(0.0, 1 - b), 1 + b)
  fc = torch.empty(n).uniform_(max(0.0, 1 - c), 1 + c)
  fs = torch.empty(n).uniform_(max(0.0, 1 - s), 1 + s)
  dh = torch.empty(n).uniform_(-h, h)
  order = torch.argsort(torch.rand(n, 4), dim=1)
  for k in range(4):
    for op in range(4):
      m = order[:, k] == op
      if not m.any():
        continue
      y = x[m]
      if op == 0:
        y = _blend(y, torch.zeros_like(y), fb[m])
      elif op == 1:
        y = _blend(y, _gray(y).mean(dim=(1, 2, 3), keepdim=True), fc[m])
      elif op == 2:
        y = _blend(y, _gray(y), fs[m])
      else:
        y = _hue(y, dh[m])
      x[m] = y
  return x


def gaussian_blur(x: torch.Tensor, radius: int, sigma: tuple) -> torch.Tensor:
  """torchvision GaussianBlur(2 radius + 1, sigma) on a batch, a sigma ~ U(sigma) per image, reflect padding."""
  n = x.shape[0]
  sig = torch.empty(n).uniform_(float(sigma[0]), float(sigma[1]))
  t = torch.arange(-radius, radius + 1, dtype=torch.float32)
  w = torch.exp(-0.5 * (t.view(1, -1) / sig.view(-1, 1)) ** 2)
  w = w / w.sum(dim=1, keepdim=True)                                    # [n, 2r + 1]
  hgt, wid = x.shape[2:]
  xp = F.pad(x, (radius, radius, 0, 0), mode="reflect")
  x = sum(w[:, i].view(-1, 1, 1, 1) * xp[..., i:i + wid] for i in range(2 * radius + 1))
  xp = F.pad(x, (0, 0, radius, radius), mode="reflect")
  return sum(w[:, i].view(-1, 1, 1, 1) * xp[:, :, i:i + hgt] for i in range(2 * radius + 1))


def _where(p: float, n: int) -> torch.Tensor:
  return torch.rand(n) < p


def colour_ops(x: torch.Tensor, group: dict, view: int) -> torch.Tensor:
  """The rest of cl_jax's _augment_view after crop and flip, on a float batch in [0, 1]: colour jitter (p),
  grayscale (p), blur (this view's p), solarize (this view's p), in that order."""
  n = x.shape[0]
  s = float(group["jitter_strength"])
  b, c, sat, hue = (float(v) * s for v in group["jitter"])
  m = _where(group["jitter_p"], n)
  if m.any():
    x[m] = color_jitter(x[m], b, c, sat, hue)
  m = _where(group["grayscale_p"], n)
  if m.any():
    x[m] = _gray(x[m]).expand(-1, 3, -1, -1)
  m = _where(group["blur_p"][view % len(group["blur_p"])], n)
  if m.any():
    x[m] = gaussian_blur(x[m], max(int(group["size"] * 0.1) // 2, 1), group["blur_sigma"])
  m = _where(group["solarize_p"][view % len(group["solarize_p"])], n)
  if m.any():
    y = x[m]
    x[m] = torch.where(y >= 0.5, 1.0 - y, y)
  return x


class Views(torch.utils.data.Dataset):
  """Image i -> one uint8 tensor [views, 3, s, s] per crop group: the random resized crop + flip of each view
  (torchvision, per image); `collate` then does the colour ops batched and normalises."""

  def __init__(self, images: np.ndarray, groups: list, mean, std):
    self.images = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    self.groups = groups
    self.spatial = [T.Compose([T.RandomResizedCrop(g["size"], scale=tuple(g["scale"]), ratio=tuple(g["ratio"]),
                                                   antialias=True), T.RandomHorizontalFlip(g["flip_p"])])
                    for g in groups]
    self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)

  def __len__(self):
    return len(self.images)

  def __getitem__(self, i):
    x = self.images[i]
    return [torch.stack([t(x) for _ in range(g["views"])]) for g, t in zip(self.groups, self.spatial)]

  def collate(self, items):
    out = []
    for gi, g in enumerate(self.groups):
      x = torch.stack([it[gi] for it in items]).float() / 255.0          # [b, v, 3, s, s]
      views = [(colour_ops(x[:, v].contiguous(), g, v) - self.mean) / self.std for v in range(g["views"])]
      out.append(torch.stack(views, dim=1))
    return out


def eval_inputs(images: np.ndarray, e: dict, mean, std) -> torch.Tensor:
  """cl_jax's eval_preprocess: centre crop of crop_frac, bilinear antialiased resize to the size, normalise."""
  x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0
  h, w = x.shape[2:]
  side = max(int(round(e["crop_frac"] * min(h, w))), 1)
  y0, x0 = (h - side) // 2, (w - side) // 2
  x = x[:, :, y0:y0 + side, x0:x0 + side]
  if side != e["image_size"]:
    x = F.interpolate(x, size=(e["image_size"], e["image_size"]), mode="bilinear", antialias=True,
                      align_corners=False)
  return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
