"""Geometry of the embedded `shapes` classes: one inside-test per shape in canonical unit-disc coordinates.

Each test takes coordinates (u, v) and returns a bool array; every shape lies in the unit disc, so it fits its
radius under any rotation. Only +, -, *, sqrt and comparisons run over the pixel grid (exactly rounded in float32,
so an example renders bit-identically alone or in a batch; see cl_jax/data/shapes.py).
"""
from __future__ import annotations

import math

import numpy as np

def _convex(vertices: list[tuple[float, float]]) -> tuple[tuple[float, float, float], ...]:
  """Half-planes (nx, ny, d) with n.p <= d inside, for a convex polygon given counter-clockwise."""
  planes = []
  for k, (x0, y0) in enumerate(vertices):
    x1, y1 = vertices[(k + 1) % len(vertices)]
    nx, ny = y1 - y0, x0 - x1
    norm = math.hypot(nx, ny)
    planes.append((nx / norm, ny / norm, (nx * x0 + ny * y0) / norm))
  return tuple(planes)


def _polar(radius: float, degrees: float) -> tuple[float, float]:
  return radius * math.cos(math.radians(degrees)), radius * math.sin(math.radians(degrees))


_TRIANGLE = _convex([_polar(1.0, 90 + 120 * k) for k in range(3)])
_STAR_KITES = tuple(_convex([(0.0, 0.0), _polar(0.42, 54 + 72 * k), _polar(1.0, 90 + 72 * k),
                             _polar(0.42, 126 + 72 * k)]) for k in range(5))
_ARROW_HEAD = _convex([(0.97, 0.0), (0.1, 0.62), (0.1, -0.62)])


def _heart_body(r: float, d: float, yc: float, bottom: float):
  """Kite from the bottom tip to the tangent points on two lobes of radius r at (+-d, yc)."""
  bx, by = d, yc + bottom  # lobe centre relative to the tip (0, -bottom)
  dist = math.hypot(bx, by)
  beta = math.atan2(by, bx) - math.asin(r / dist)  # direction of the outer tangent from the tip
  length = math.sqrt(dist * dist - r * r)
  tx, ty = length * math.cos(beta), length * math.sin(beta) - bottom
  return _convex([(0.0, -bottom), (tx, ty), (0.0, yc), (-tx, ty)])


_HEART_LOBE = (0.45, 0.42, 0.3)  # lobe radius, lobe centres (+-0.42, 0.3): a deep notch on top
_HEART_BODY = _heart_body(*_HEART_LOBE, bottom=0.95)


def _in_convex(u: np.ndarray, v: np.ndarray, planes) -> np.ndarray:
  inside = np.ones(u.shape, bool)
  for nx, ny, d in planes:
    inside &= (u * nx + v * ny) <= d
  return inside


def _circle(u, v):
  return u * u + v * v <= 0.9 ** 2


def _triangle(u, v):
  return _in_convex(u, v, _TRIANGLE)


def _square(u, v):
  return (np.abs(u) <= 0.7) & (np.abs(v) <= 0.7)


def _star(u, v):
  inside = np.zeros(u.shape, bool)
  for kite in _STAR_KITES:
    inside |= _in_convex(u, v, kite)
  return inside


def _cross(u, v):
  au, av = np.abs(u), np.abs(v)
  return ((au <= 0.3) & (av <= 0.95)) | ((av <= 0.3) & (au <= 0.95))


def _ring(u, v):
  d2 = u * u + v * v
  return (d2 <= 0.95 ** 2) & (d2 >= 0.52 ** 2)


def _heart(u, v):
  r, d, yc = _HEART_LOBE
  au, dv = np.abs(u) - d, v - yc
  return (au * au + dv * dv <= r * r) | _in_convex(u, v, _HEART_BODY)


def _crescent(u, v):
  return (u * u + v * v <= 0.95 ** 2) & ((u - 0.45) ** 2 + v * v >= 0.78 ** 2)


def _arrow(u, v):
  shaft = (u >= -0.95) & (u <= 0.2) & (np.abs(v) <= 0.22)
  return shaft | _in_convex(u, v, _ARROW_HEAD)


def _l_shape(u, v):
  a, w = 0.68, 0.46
  vertical = (u >= -a) & (u <= -a + w) & (v >= -a) & (v <= a)
  horizontal = (v >= -a) & (v <= -a + w) & (u >= -a) & (u <= a)
  return vertical | horizontal


# In the order of shapes.CLASS_NAMES: circle, triangle, square, star, cross, ring, heart, crescent, arrow, L-shape.
SHAPE_FNS = (_circle, _triangle, _square, _star, _cross, _ring, _heart, _crescent, _arrow,
             _l_shape)
