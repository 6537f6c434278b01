"""LSeg (Li et al. 2022): the per-pixel cross-entropy against a float64 loop (ignored pixels, 8 devices vs 1), the
DPT-style decoder's resolution, the method's loss rebuilt from its parts, held-out classes out of the label set,
the frozen text tower, image and mask flipped together, 8 vs 1 with SGD, a decreasing loss, one-line errors."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import parallel
from cl_jax.data import augment, scenes
from cl_jax.losses.lseg import IGNORE, pixel_cross_entropy
from cl_jax.methods import lseg as lseg_method
from cl_jax.models.dense_decoder import DenseDecoder
from tests.harness import adam_steps, build_method, make_method_step, one_line_error, override, tiny_method_config


def ce_reference(logits, targets):
  logits = np.asarray(logits, np.float64)
  total, count = 0.0, 0
  for idx in np.ndindex(targets.shape):
    t = int(targets[idx])
    if t == IGNORE:
      continue
    row = logits[idx]
    total += row.max() + math.log(np.exp(row - row.max()).sum()) - row[t]
    count += 1
  return total / count


def test_pixel_cross_entropy_matches_float64_and_8_devices():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(8, 4, 4, 5)).astype(np.float32) * 3
  targets = rng.integers(0, 5, (8, 4, 4)).astype(np.int32)
  targets[rng.random(targets.shape) < 0.3] = IGNORE
  targets[3] = IGNORE                                    # a device whose pixels are all ignored
  loss, m = pixel_cross_entropy(logits, targets)
  np.testing.assert_allclose(float(loss), ce_reference(logits, targets), rtol=1e-5)
  assert 0 <= float(m["pixel_acc"]) <= 1
  P = jax.sharding.PartitionSpec
  sharded = jax.shard_map(lambda a, t: pixel_cross_entropy(a, t, parallel.DATA)[0], mesh=parallel.make_mesh(8),
                          in_specs=(P(parallel.DATA), P(parallel.DATA)), out_specs=P())
  l8, g8 = jax.jit(jax.value_and_grad(sharded))(logits, targets)
  l1, g1 = jax.value_and_grad(lambda a: pixel_cross_entropy(a, targets)[0])(logits)
  np.testing.assert_allclose(float(l8), float(l1), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(g8), np.asarray(g1), rtol=1e-5, atol=1e-8)
  assert float(np.abs(g1[3]).max()) == 0                 # ignored pixels get no gradient


@pytest.mark.parametrize("patch, grid", [(4, 8), (8, 4), (16, 2)])
def test_decoder_ends_at_half_the_input_resolution(patch, grid):
  ups = max(int(math.log2(patch)) - 1, 0)
  dec = DenseDecoder(16, 12, ups)
  tokens = jnp.ones((2, grid * grid, 20))
  params = dec.init(jax.random.key(0), tokens, (grid, grid))
  y = dec.apply(params, tokens, (grid, grid))
  assert y.shape == (2, grid * patch // 2, grid * patch // 2, 12)      # LSeg's H/2 (then upsampled x2)


# ----------------------------------------------------------------------------- the method


def tiny_config(**overrides):
  return tiny_method_config("lseg", **{
      "data.num_train": 64, "data.num_test": 64, "batch_size": 16, "eval.batch_size": 32,
      "text_model.width": 32, "text_model.depth": 1, "text_model.heads": 2, "method.embed_dim": 32,
      "method.decoder_features": 16, **overrides})


def scene_views(n=16):
  data = scenes.generate(n, split="train", seed=0, image_size=32, held_out_classes=(3, 5))   # star, heart
  images = jax.jit(augment.eval_preprocess, static_argnums=1)(data["image"], 32)[None]
  return {"crops": (np.asarray(images),), "mask": data["mask"].astype(np.int32)}, data


@pytest.fixture(scope="module")
def setup():
  method = build_method(tiny_config(), total_steps=10, steps_per_epoch=4)
  views, data = scene_views()
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  return method, params, state, views, data


def test_label_set_leaves_out_the_held_out_classes(setup):
  method = setup[0]
  assert method.label_set == ["other"] + [n for n in scenes.CLASS_NAMES if n not in ("star", "heart")]
  lookup = np.asarray(method.lookup)
  assert lookup[0] == 0 and lookup[scenes.CLASS_NAMES.index("star") + 1] == IGNORE
  assert lookup[scenes.CLASS_NAMES.index("ring") + 1] == method.label_set.index("ring")


def test_loss_is_the_pixel_ce_of_the_scaled_cosines(setup):
  method, params, state, views, _ = setup
  got = make_method_step(method, state, views, 1)(params, state, views, 0)
  x, masks = lseg_method.flip_pairs(jax.random.key(0), views["crops"][0][0], views["mask"], axis_name=None)
  _, pixels, text = method.model.apply({"params": params["model"]}, x, method.label_tokens, train=True)
  assert pixels.shape == (16, 16, 16, 32)                # 1/2 of 32 px
  unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
  logits = jnp.einsum("bhwc,kc->bhwk", unit(pixels), unit(text)) / 0.07
  logits = jax.image.resize(logits, (16, 32, 32, logits.shape[-1]), method="linear", antialias=False)
  want = ce_reference(logits, np.asarray(method.lookup)[np.asarray(masks)])
  np.testing.assert_allclose(float(got.loss), want, rtol=1e-5)


def test_flip_moves_image_and_mask_together(setup):
  _, _, _, views, _ = setup
  images, masks = views["crops"][0][0], views["mask"]
  x, m = lseg_method.flip_pairs(jax.random.key(3), images, masks, axis_name=None)
  flipped = np.array([not np.array_equal(np.asarray(x[i]), np.asarray(images[i])) for i in range(16)])
  assert 0 < flipped.sum() < 16
  for i in range(16):
    want_x, want_m = (images[i][:, ::-1], masks[i][:, ::-1]) if flipped[i] else (images[i], masks[i])
    np.testing.assert_array_equal(np.asarray(x[i]), want_x)
    np.testing.assert_array_equal(np.asarray(m[i]), want_m)


def test_text_tower_is_frozen_and_8_devices_equal_1(setup):
  method, params, state, views, _ = setup
  one = make_method_step(method, state, views, 1, sgd_lr=0.1)(params, state, views, 0)
  eight = make_method_step(method, state, views, 8, sgd_lr=0.1)(params, state, views, 0)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-6)
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(eight.params), jax.tree.leaves(one.params)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6, err_msg=jax.tree_util.keystr(path))
  g = one.grads["model"]
  assert all(float(np.abs(np.asarray(x)).max()) == 0 for x in jax.tree.leaves(g["text"]))
  for part in ("backbone", "decoder"):
    assert max(float(np.abs(np.asarray(x)).max()) for x in jax.tree.leaves(g[part])) > 0, part


def test_loss_decreases_and_dense_readout(setup):
  method, params, state, views, _ = setup
  params, losses = adam_steps(method, params, state, views, 6)
  assert losses[-1] < losses[0] - 0.1, losses
  dense = np.asarray(method.encode_dense(params, state, views["crops"][0][0][:2]))
  assert dense.shape == (2, 16, 16, 32)
  np.testing.assert_allclose(np.linalg.norm(dense, axis=-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("overrides, needles", [
    ({"method.labels": ()}, ("method.labels", "CLASS_NAMES")),
    ({"method.label_template": "a photo"}, ("label_template", "'{}'")),
    ({"data.held_out_classes": ("hexagon",)}, ("'hexagon'", "method.labels")),
    ({"optim.frozen": ()}, ("config.optim.frozen=('text',)",)),
    ({"augment.global.scale": (0.5, 1.0)}, ("whole-image views", "augment.global")),
    ({"model": dict(name="resnet_tiny")}, ("ViT image tower", "resnet_tiny")),
])
def test_bad_config_is_one_line(overrides, needles):
  config = override(tiny_config(), overrides)
  one_line_error(lambda: build_method(config), *needles)


def test_a_batch_without_masks_is_one_line(setup):
  method, params, state, views, _ = setup
  one_line_error(lambda: method.loss(params, state, {"crops": views["crops"]}, jax.random.key(0), 0),
                 "per-pixel masks", "data.mask_key")
