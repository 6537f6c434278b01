"""Colour spaces on the device: sRGB -> CIE L*a*b* (D65) as skimage.color.rgb2lab, the conversion CMC's official
code applies to every crop (HobbitLong/CMC dataset.py RGB2Lab), and the channel views CMC contrasts (Tian et al.
2020, Sec. 4: L and ab; Sec. 3.3 adds more views)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# sRGB (linear) -> XYZ, D65 (IEC 61966-2-1, skimage's xyz_from_rgb) and the D65 2-degree reference white.
_XYZ_FROM_RGB = np.asarray([[0.412453, 0.357580, 0.180423],
                            [0.212671, 0.715160, 0.072169],
                            [0.019334, 0.119193, 0.950227]], np.float32)
_WHITE_D65 = np.asarray([0.95047, 1.0, 1.08883], np.float32)

# CMC's normalisation of Lab (train_CMC.py get_train_loader): the middle and half-range of each channel.
LAB_MEAN = ((0 + 100) / 2, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
LAB_STD = ((100 - 0) / 2, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)

# Each view: its number of input channels (the encoder's first conv reads them).
VIEW_CHANNELS = {"L": 1, "ab": 2, "grad": 1}


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
  """float RGB in [0, 1] [..., 3] -> L*a*b* [..., 3] (L in [0, 100]): sRGB gamma removed (threshold 0.04045), XYZ
  relative to the D65 white, f(t) = t^(1/3) above (6/29)^3 else t / (3 (6/29)^2) + 4/29 (CIE 1976)."""
  rgb = jnp.clip(rgb.astype(jnp.float32), 0.0, 1.0)
  linear = jnp.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
  xyz = (linear @ jnp.asarray(_XYZ_FROM_RGB).T) / jnp.asarray(_WHITE_D65)
  delta = 6.0 / 29.0
  f = jnp.where(xyz > delta ** 3, jnp.cbrt(jnp.maximum(xyz, delta ** 3)), xyz / (3 * delta ** 2) + 4.0 / 29.0)
  fx, fy, fz = f[..., 0], f[..., 1], f[..., 2]
  return jnp.stack([116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)], axis=-1)


def normalized_lab(rgb: jax.Array) -> jax.Array:
  """rgb_to_lab scaled by CMC's mean and std to about [-1, 1] per channel."""
  return (rgb_to_lab(rgb) - jnp.asarray(LAB_MEAN, jnp.float32)) / jnp.asarray(LAB_STD, jnp.float32)


def sobel_magnitude(plane: jax.Array) -> jax.Array:
  """Gradient magnitude of one channel [b, H, W, 1] by 3x3 Sobel filters, edges replicated: a view of the image's
  structure without its intensities (the role depth and segmentation play among the paper's extra views)."""
  kx = jnp.asarray([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0
  kernel = jnp.stack([kx, kx.T], axis=-1)[:, :, None, :]                       # HWIO [3, 3, 1, 2]
  padded = jnp.pad(plane, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
  g = jax.lax.conv_general_dilated(padded, kernel.astype(plane.dtype), (1, 1), "VALID",
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return jnp.sqrt(jnp.sum(g * g, axis=-1, keepdims=True) + 1e-12)


def channel_views(rgb: jax.Array, names: tuple[str, ...]) -> dict[str, jax.Array]:
  """The named views of RGB images [b, H, W, 3] in [0, 1]: "L" [.., 1] and "ab" [.., 2] of normalised Lab, "grad"
  the Sobel magnitude of L [.., 1]."""
  unknown = [n for n in names if n not in VIEW_CHANNELS]
  if unknown:
    raise ValueError(f"Unknown CMC view {unknown[0]!r}; set method.views to names from: {', '.join(VIEW_CHANNELS)}.")
  lab = normalized_lab(rgb)
  views = {"L": lab[..., :1], "ab": lab[..., 1:], "grad": None}
  if "grad" in names:
    views["grad"] = sobel_magnitude(lab[..., :1])
  return {n: views[n] for n in names}
