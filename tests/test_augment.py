"""Properties of the on-device augmentations (cl_jax/data/augment.py) and the view grid writer."""
import colorsys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import Mesh, PartitionSpec as P
from PIL import Image

from cl_jax.data import augment as A
from cl_jax.data import color as C
from cl_jax.data.view_grid import save_view_grid, view_grid_image

N_KEYS = 2000


def _keys(n, seed=0):
  return jax.random.split(jax.random.key(seed), n)


def _rand(shape, seed=0, lo=0.0, hi=1.0):
  return jnp.asarray(np.random.RandomState(seed).uniform(lo, hi, shape), jnp.float32)


def _binomial_ok(count, n, p, sigmas=5.0):
  return abs(count - n * p) <= sigmas * np.sqrt(n * p * (1 - p))


# ----------------------------------------------------------------------------- single-image ops


def test_grayscale_equal_channels_and_luma():
  x = _rand((5, 6, 3))
  y = np.asarray(A.random_grayscale(x, jax.random.key(0), p=1.0))
  luma = np.asarray(x) @ np.array([0.2989, 0.5870, 0.1140])
  for c in range(3):
    np.testing.assert_allclose(y[..., c], luma, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(A.random_grayscale(x, jax.random.key(0), p=0.0)), x)


@pytest.mark.parametrize("p", [0.5, 0.2])
def test_flip_frequency_and_content(p):
  x = jnp.arange(4 * 4 * 3, dtype=jnp.float32).reshape(4, 4, 3)
  y = np.asarray(jax.jit(jax.vmap(lambda k: A.horizontal_flip(x, k, p=p)))(_keys(N_KEYS)))
  flipped = np.all(y == np.asarray(x)[:, ::-1], axis=(1, 2, 3))
  same = np.all(y == np.asarray(x), axis=(1, 2, 3))
  assert np.all(flipped | same)
  assert _binomial_ok(flipped.sum(), N_KEYS, p), flipped.sum()


def test_sample_crop_box_area_and_ratio():
  height, width, scale, ratio = 1000, 1000, (0.08, 1.0), (3 / 4, 4 / 3)
  y0, x0, h, w = map(np.asarray, jax.jit(jax.vmap(
      lambda k: A.sample_crop_box(k, height, width, scale, ratio)))(_keys(N_KEYS)))
  assert np.all((y0 >= 0) & (x0 >= 0) & (y0 + h <= height) & (x0 + w <= width) & (h > 0) & (w > 0))
  fallback = (h == height) & (w == width) & (y0 == 0) & (x0 == 0)  # square: whole image
  assert fallback.mean() < 0.01
  area, aspect = (h * w / (height * width))[~fallback], (w / h)[~fallback]
  tol = 1e-2  # integer rounding of h and w
  assert np.all((area >= scale[0] * (1 - tol)) & (area <= scale[1] * (1 + tol)))
  assert np.all((aspect >= ratio[0] * (1 - tol)) & (aspect <= ratio[1] * (1 + tol)))
  # The whole ranges are explored (log-uniform ratio, uniform area).
  assert area.min() < 0.1 and area.max() > 0.9
  assert aspect.min() < 0.77 and aspect.max() > 1.3
  assert abs(np.mean(np.log(aspect))) < 0.02  # symmetric about 1 on a square image


def test_sample_crop_box_offsets_and_fallback():
  y0, x0, h, w = map(np.asarray, jax.jit(jax.vmap(
      lambda k: A.sample_crop_box(k, 100, 100, (0.25, 0.25), (1.0, 1.0))))(_keys(N_KEYS)))
  assert np.all(h == 50) and np.all(w == 50)
  for offset in (y0, x0):  # uniform over 0..50 inclusive, as torch.randint(0, H - h + 1)
    assert offset.min() == 0 and offset.max() == 50 and abs(offset.mean() - 25) < 1.5
  # No try can fit a 2:1..3:1 full-area box in a square: torchvision's centre-crop fallback.
  box = [int(v) for v in A.sample_crop_box(jax.random.key(1), 100, 100, (1.0, 1.0), (2.0, 3.0))]
  assert box == [25, 0, 50, 100]


def test_full_crop_is_identity_and_known_crop_matches_slice():
  x = _rand((12, 12, 3))
  y = A.random_resized_crop(x, jax.random.key(0), size=12, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  np.testing.assert_allclose(y, x, atol=1e-5)
  u8 = jnp.asarray(np.random.RandomState(1).randint(0, 256, (12, 12, 3)), jnp.uint8)
  y8 = A.random_resized_crop(u8, jax.random.key(0), size=12, scale=(1.0, 1.0), ratio=(1.0, 1.0))
  assert y8.dtype == jnp.float32
  np.testing.assert_allclose(y8, np.asarray(u8) / 255.0, atol=1e-5)
  crop = A.crop_and_resize(x, jnp.int32(3), jnp.int32(2), jnp.int32(6), jnp.int32(6), 6)
  np.testing.assert_allclose(crop, np.asarray(x)[3:9, 2:8], atol=1e-5)
  # A 2x upsample of a 6x6 crop keeps the crop's mean (bilinear weights are normalised).
  up = A.crop_and_resize(x, jnp.int32(3), jnp.int32(2), jnp.int32(6), jnp.int32(6), 12)
  assert up.shape == (12, 12, 3)
  np.testing.assert_allclose(np.mean(up), np.mean(np.asarray(x)[3:9, 2:8]), atol=0.05)


def _scale_and_translate_crop(image, y0, x0, h, w, size):
  """The previous implementation: jax.image.scale_and_translate of the whole image (dense weight matrices)."""
  sy, sx = size / h, size / w
  return jax.image.scale_and_translate(A.to_float(image), (size, size, 3), (0, 1), jnp.array([sy, sx]),
                                       jnp.array([-y0 * sy, -x0 * sx]), method="linear", antialias=True)


@pytest.mark.parametrize("height,width,size,scale", [
    (32, 32, 32, (0.08, 1.0)),    # upscaling only: 2 taps
    (64, 48, 24, (0.08, 1.0)),    # down to 2.7x: antialiased, 6 taps; non-square image
    (40, 40, 17, (0.5, 1.0)),     # non-integer factors
])
def test_crop_and_resize_matches_scale_and_translate(height, width, size, scale):
  image = jnp.asarray(np.random.RandomState(height).randint(0, 256, (height, width, 3)), jnp.uint8)
  boxes = [np.asarray(b) for b in jax.vmap(
      lambda k: A.sample_crop_box(k, height, width, scale))(_keys(24, seed=size))]
  got = jax.jit(jax.vmap(lambda *b: A.crop_and_resize(image, *b, size)))(*map(jnp.asarray, boxes))
  for i, box in enumerate(zip(*boxes)):
    ref = _scale_and_translate_crop(image, *(float(v) for v in box), size)
    np.testing.assert_allclose(got[i], ref, atol=2e-5)
  assert got.dtype == jnp.float32 and got.shape == (24, size, size, 3)


def test_crop_and_resize_flip_mirrors_the_output():
  x = _rand((20, 24, 3), seed=5)
  box = (jnp.int32(2), jnp.int32(3), jnp.int32(15), jnp.int32(11))
  plain = np.asarray(A.crop_and_resize(x, *box, 9))
  np.testing.assert_allclose(A.crop_and_resize(x, *box, 9, flip=jnp.bool_(True)), plain[:, ::-1], atol=1e-6)
  np.testing.assert_array_equal(A.crop_and_resize(x, *box, 9, flip=jnp.bool_(False)), plain)


def test_crop_and_resize_upscale_is_bilinear():
  """Upscaling: separable linear interpolation at pixel centres, clamped at the image edge (np.interp)."""
  x = np.random.RandomState(4).uniform(size=(20, 20, 3))
  for y0, x0, h, w, size in [(3, 5, 7, 9, 16), (0, 0, 20, 20, 31), (12, 1, 8, 6, 8)]:
    ys = y0 + (np.arange(size) + 0.5) * h / size - 0.5
    xs = x0 + (np.arange(size) + 0.5) * w / size - 0.5
    grid = np.arange(20)
    rows = np.stack([np.stack([np.interp(ys, grid, x[:, j, c]) for j in range(20)], 1)
                     for c in range(3)], -1)  # [size, 20, 3]
    ref = np.stack([np.stack([np.interp(xs, grid, rows[i, :, c]) for i in range(size)], 0)
                    for c in range(3)], -1)   # [size, size, 3]
    got = A.crop_and_resize(jnp.asarray(x, jnp.float32), jnp.int32(y0), jnp.int32(x0), jnp.int32(h),
                            jnp.int32(w), size)
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_same_key_same_output_different_key_different():
  x = _rand((16, 16, 3))
  @jax.jit
  def aug(k):
    y = A.random_resized_crop(x, k, size=8)
    return A.color_jitter(y, k, p=1.0)
  a, b, c = aug(jax.random.key(0)), aug(jax.random.key(0)), aug(jax.random.key(1))
  np.testing.assert_array_equal(a, b)
  assert np.abs(np.asarray(a) - np.asarray(c)).max() > 1e-2


def test_solarize_matches_numpy():
  x = _rand((7, 5, 3))
  ref = np.where(np.asarray(x) >= 0.5, 1.0 - np.asarray(x), np.asarray(x))
  np.testing.assert_allclose(A.solarize(x, jax.random.key(0), p=1.0), ref, atol=1e-7)
  np.testing.assert_array_equal(A.solarize(x, jax.random.key(0), p=0.0), x)


def _np_blur(x, sigma, radius):
  t = np.arange(-radius, radius + 1)
  w = np.exp(-t ** 2 / (2 * sigma ** 2))
  w /= w.sum()
  xp = np.pad(x, ((radius, radius), (0, 0), (0, 0)), mode="reflect")
  x = sum(w[i] * xp[i:i + x.shape[0]] for i in range(len(w)))
  xp = np.pad(x, ((0, 0), (radius, radius), (0, 0)), mode="reflect")
  return sum(w[i] * xp[:, i:i + x.shape[1]] for i in range(len(w)))


def test_blur_preserves_constant_and_reduces_noise():
  const = jnp.full((40, 40, 3), 0.3, jnp.float32)
  np.testing.assert_allclose(A.gaussian_blur(const, jax.random.key(0), p=1.0), const, atol=1e-6)
  noise = _rand((40, 40, 3), seed=3)
  blurred = A.gaussian_blur(noise, jax.random.key(0), p=1.0, sigma=(1.0, 2.0))
  assert np.var(blurred) < 0.5 * np.var(noise)
  np.testing.assert_allclose(np.mean(blurred), np.mean(noise), atol=1e-2)
  # Fixed sigma against a float64 numpy reference; 40 px -> kernel 10% of the side = radius 2.
  fixed = A.gaussian_blur(noise, jax.random.key(0), p=1.0, sigma=(1.5, 1.5))
  np.testing.assert_allclose(fixed, _np_blur(np.asarray(noise, np.float64), 1.5, 2), atol=1e-5)
  np.testing.assert_array_equal(A.gaussian_blur(noise, jax.random.key(0), p=0.0), noise)


def test_color_jitter_strength_zero_is_identity():
  x = _rand((8, 8, 3))
  for seed in range(3):
    np.testing.assert_allclose(A.color_jitter(x, jax.random.key(seed), strength=0.0, p=1.0), x, atol=1e-5)
  assert np.abs(np.asarray(A.color_jitter(x, jax.random.key(0), p=1.0)) - np.asarray(x)).max() > 1e-2


def test_color_jitter_single_ops():
  x = _rand((8, 8, 3), lo=0.4, hi=0.6)  # no clipping for factors in [0.2, 1.8]
  key = jax.random.key(5)
  only = dict(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, p=1.0)
  bright = np.asarray(A.color_jitter(x, key, **{**only, "brightness": 0.8}))
  ratio = bright / np.asarray(x)
  np.testing.assert_allclose(ratio, ratio.flat[0], rtol=1e-5)  # one multiplicative factor
  assert 0.2 <= ratio.flat[0] <= 1.8
  contrast = np.asarray(A.color_jitter(x, key, **{**only, "contrast": 0.8}))
  np.testing.assert_allclose(contrast.mean((0, 1)), np.asarray(x).mean((0, 1)), atol=1e-6)
  hsv_x = np.asarray(A.rgb_to_hsv(x))
  hsv_s = np.asarray(A.rgb_to_hsv(A.color_jitter(x, key, **{**only, "saturation": 0.8})))
  np.testing.assert_allclose(hsv_s[..., 2], hsv_x[..., 2], atol=1e-6)  # value kept
  hsv_h = np.asarray(A.rgb_to_hsv(A.color_jitter(x, key, **{**only, "hue": 0.2})))
  np.testing.assert_allclose(hsv_h[..., 1:], hsv_x[..., 1:], atol=1e-5)  # saturation and value kept
  shift = np.mod(hsv_h[..., 0] - hsv_x[..., 0] + 0.5, 1.0) - 0.5
  np.testing.assert_allclose(shift, shift.flat[0], atol=1e-4)
  assert 1e-3 < abs(shift.flat[0]) <= 0.2


def _np_jitter(x, order, fb, fc, fs, dh):
  """float64 reference of SimCLR's color_jitter_rand with given factors, HSV through colorsys."""
  def hsv_op(img, f_s, d_h):
    out = np.empty_like(img)
    for idx in np.ndindex(img.shape[:2]):
      h, s, v = colorsys.rgb_to_hsv(*img[idx])
      out[idx] = colorsys.hsv_to_rgb((h + d_h) % 1.0, min(max(s * f_s, 0.0), 1.0), v)
    return out
  ops = [lambda y: y * fb, lambda y: (y - y.mean((0, 1))) * fc + y.mean((0, 1)),
         lambda y: hsv_op(y, fs, 0.0), lambda y: hsv_op(y, 1.0, dh)]
  for op in order:
    x = np.clip(ops[op](x), 0.0, 1.0)
  return x


def test_color_jitter_random_order_matches_reference():
  assert len({tuple(o) for o in C._ORDERS}) == 24 and sorted(C._ORDERS[5]) == [0, 1, 2, 3]
  x = _rand((4, 4, 3), seed=2)
  picks = list(range(24))  # every order: the hue's position and the other three ops' order
  # uniforms: coin, order, brightness, contrast, saturation, hue (strength 1: b = c = s = 0.8, h = 0.2)
  us = jnp.asarray([[0.0, (k + 0.5) / 24, 0.9, 0.1, 0.95, 0.8] for k in picks], jnp.float32)
  jitter = jax.jit(jax.vmap(lambda u: C._jitter(x, u, strength=1.0, brightness=0.8, contrast=0.8,
                                                  saturation=0.8, hue=0.2, p=0.8)))
  outs = np.asarray(jitter(us))
  for k, out in zip(picks, outs):
    ref = _np_jitter(np.asarray(x, np.float64), C._ORDERS[k], 0.2 + 1.6 * 0.9, 0.2 + 1.6 * 0.1,
                     0.2 + 1.6 * 0.95, -0.2 + 0.4 * 0.8)
    np.testing.assert_allclose(out, ref, atol=1e-5)
  assert np.abs(outs[0] - outs[23]).max() > 1e-2  # the order matters for these factors


def test_saturation_and_hue_in_rgb_match_colorsys():
  rgb = np.random.RandomState(1).uniform(size=(400, 3))
  rgb[:4] = [[0, 0, 0], [0.5, 0.5, 0.5], [1, 0, 0], [0.9, 0.85, 0.8]]  # gray pixels keep their value
  for factor in (0.0, 0.4, 1.7, 5.0):  # 5: s * factor > 1 for most pixels, clipped to 1
    ref = [colorsys.hsv_to_rgb(h, min(s * factor, 1.0), v) for h, s, v in
           (colorsys.rgb_to_hsv(*p) for p in rgb)]
    np.testing.assert_allclose(A.adjust_saturation(jnp.asarray(rgb, jnp.float32), factor), ref, atol=2e-6)
  for delta in (-0.2, 0.05, 0.5, 0.93):
    ref = [colorsys.hsv_to_rgb((h + delta) % 1.0, s, v) for h, s, v in (colorsys.rgb_to_hsv(*p) for p in rgb)]
    np.testing.assert_allclose(A.adjust_hue(jnp.asarray(rgb, jnp.float32), delta), ref, atol=2e-6)


def test_hsv_against_colorsys():
  rgb = np.random.RandomState(0).uniform(size=(500, 3)).astype(np.float32)
  rgb[:5] = [[0, 0, 0], [1, 1, 1], [0.5, 0.5, 0.5], [1, 0, 0], [0.2, 0.7, 0.7]]
  hsv = np.asarray(A.rgb_to_hsv(jnp.asarray(rgb)))
  ref = np.array([colorsys.rgb_to_hsv(*map(float, p)) for p in rgb])
  hue_gap = np.abs(np.mod(hsv[:, 0] - ref[:, 0] + 0.5, 1.0) - 0.5)
  assert hue_gap.max() < 1e-5
  np.testing.assert_allclose(hsv[:, 1:], ref[:, 1:], atol=1e-6)
  back_ref = np.array([colorsys.hsv_to_rgb(*map(float, p)) for p in ref])
  np.testing.assert_allclose(A.hsv_to_rgb(jnp.asarray(ref, jnp.float32)), back_ref, atol=1e-5)
  np.testing.assert_allclose(A.hsv_to_rgb(jnp.asarray(hsv)), rgb, atol=1e-5)
  np.testing.assert_allclose(A.adjust_hue(jnp.asarray(rgb), 0.0), rgb, atol=1e-5)


def test_normalize_roundtrip():
  x = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 3, 3, 3)), jnp.uint8)
  ref = (np.asarray(x) / 255.0 - np.array(A.MEAN_RGB)) / np.array(A.STD_RGB)
  np.testing.assert_allclose(A.normalize(x), ref, atol=1e-5)
  np.testing.assert_allclose(A.denormalize(A.normalize(x)), np.asarray(x) / 255.0, atol=1e-6)


def test_eval_preprocess():
  x = jnp.asarray(np.random.RandomState(0).randint(0, 256, (2, 40, 40, 3)), jnp.uint8)
  out = A.eval_preprocess(x, 32, crop_frac=0.8)  # side 32: a pure centre slice
  np.testing.assert_allclose(out, A.normalize(x[:, 4:36, 4:36]), atol=1e-6)
  const = jnp.full((1, 40, 50, 3), 128, jnp.uint8)
  out = A.eval_preprocess(const, 16)
  assert out.shape == (1, 16, 16, 3) and out.dtype == jnp.float32
  np.testing.assert_allclose(A.denormalize(out), 128 / 255.0, atol=1e-5)


# ----------------------------------------------------------------------------- recipes and make_views


def test_group_defaults_and_errors():
  g = A.group(size=32)
  assert g.size == 32 and g.views == 2 and g.blur_p == (0.5,) and g.solarize_p == (0.0,)
  assert A.group(blur_p=1.0).blur_p == (1.0,)
  for bad in (dict(sizes=3), dict(scale=(0.5, 0.1)), dict(flip_p=2.0), dict(views=-1)):
    with pytest.raises(ValueError) as err:
      A.group(**bad)
    assert "\n" not in str(err.value)


RECIPE = ml_collections.ConfigDict({
    # Deterministic except blur/solarize: per-view p (1, 0) / (0, 1) must be cycled per view.
    "global": A.group(size=16, views=2, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip_p=0.0, jitter_p=0.0,
                      grayscale_p=0.0, blur_p=(1.0, 0.0), solarize_p=(0.0, 1.0)),
    "local": A.group(size=8, views=3, scale=(0.05, 0.4), blur_p=(0.5,), solarize_p=(0.2,)),
    "unused": A.group(size=4, views=0),
})
_TRACES = []


def _views(images, key, indices):
  _TRACES.append(images.shape)
  return A.make_views(images, A.example_keys(key, indices), RECIPE)


_views_jit = jax.jit(_views)


@pytest.fixture(scope="module")
def batch():
  images = jnp.asarray(np.random.RandomState(0).randint(0, 256, (4, 16, 16, 3)), jnp.uint8)
  key = jax.random.key(7)
  return images, key, _views_jit(images, key, jnp.arange(4))


def test_make_views_shapes_and_asymmetric_views(batch):
  images, key, (glob, local) = batch
  assert glob.shape == (2, 4, 16, 16, 3) and local.shape == (3, 4, 8, 8, 3)
  assert glob.dtype == jnp.float32 and local.dtype == jnp.float32
  x = np.asarray(images) / 255.0
  sol = np.where(x >= 0.5, 1.0 - x, x)
  np.testing.assert_allclose(A.denormalize(glob[1]), sol, atol=1e-5)  # view 1: solarize only
  blurred = np.asarray(A.denormalize(glob[0]))  # view 0: blur only
  assert np.var(blurred) < np.var(x) and not np.allclose(blurred, x, atol=1e-2)
  np.testing.assert_allclose(blurred.mean(), x.mean(), atol=1e-2)
  for v in range(3):  # local views differ from each other
    assert np.abs(np.asarray(local[v]) - np.asarray(local[(v + 1) % 3])).max() > 0.1
  # A new step key retraces nothing and gives new views.
  again = _views_jit(images, jax.random.key(8), jnp.arange(4))
  assert _TRACES.count(images.shape) == 1
  assert np.abs(np.asarray(again[1]) - np.asarray(local)).max() > 0.1
  same = _views_jit(images, key, jnp.arange(4))
  np.testing.assert_array_equal(same[1], local)


def test_make_views_independent_of_batch_and_devices(batch):
  images, key, full = batch
  alone = _views_jit(images[2:3], key, jnp.arange(2, 3))
  for f, a in zip(full, alone):
    np.testing.assert_allclose(f[:, 2:3], a, atol=1e-5)
  mesh = Mesh(np.array(jax.devices()[:4]), ("data",))
  sharded = jax.jit(jax.shard_map(lambda x, i: A.make_views(x, A.example_keys(key, i), RECIPE),
                                  mesh=mesh, in_specs=(P("data"), P("data")),
                                  out_specs=P(None, "data")))(images, jnp.arange(4))
  for f, s in zip(full, sharded):
    np.testing.assert_allclose(f, s, atol=1e-5)


def test_make_views_errors():
  with pytest.raises(ValueError, match="no views"):
    A.make_views(jnp.zeros((1, 8, 8, 3), jnp.uint8), _keys(1),
                 ml_collections.ConfigDict({"g": A.group(views=0)}))
  with pytest.raises(ValueError, match="keys"):
    A.make_views(jnp.zeros((2, 8, 8, 3), jnp.uint8), _keys(1), RECIPE)


def test_view_grid(batch, tmp_path):
  images, _, views = batch
  grid = view_grid_image(np.asarray(images), [np.asarray(v) for v in views], max_examples=3)
  pad = 2
  assert grid.shape == (3 * (16 + pad) + pad, (1 + 2 + 3) * (16 + pad) + pad, 3)
  assert grid.dtype == np.uint8
  np.testing.assert_array_equal(grid[pad:pad + 16, pad:pad + 16], np.asarray(images[0]))
  # Column 3 is the solarize-only global view: its denormalised uint8 matches the numpy reference.
  x = np.asarray(images[0]) / 255.0
  sol = np.round(np.where(x >= 0.5, 1.0 - x, x) * 255.0)
  col = grid[pad:pad + 16, pad + 2 * (16 + pad):pad + 2 * (16 + pad) + 16]
  assert np.abs(col.astype(int) - sol).max() <= 1
  path = tmp_path / "grid.png"
  save_view_grid(str(path), np.asarray(images), views, max_examples=3)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), grid)
