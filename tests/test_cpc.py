"""CPC v2: the grid InfoNCE against a float64 NumPy loop; 8 devices vs 1 for the loss and for a whole method step
(value, gradient, metrics); the masked context network is causal in every direction; the LayerNorm ResNet keeps
examples apart; per-patch augmentation; one-line errors for impossible grids."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.data.augment import group
from cl_jax.losses.cpc import cpc_infonce
from cl_jax.models import build_backbone
from cl_jax.models.cpc import CPCModel, augment_patches, extract_patches
from tests.harness import assert_trees_close, build_method, make_method_step, one_line_error, tiny_config


# ----------------------------------------------------------------------------- the loss


def infonce_reference(preds, z):
  """CPC's L_N (van den Oord et al. 2018, Eq. 4) one (image, offset, position) at a time, float64: the prediction
  scored against every patch vector of the batch, the one k rows below in the same image the positive."""
  preds, z = np.asarray(preds, np.float64), np.asarray(z, np.float64)
  b, steps, g, w, d = preds.shape
  keys = z.reshape(-1, d)
  total, hits, count = 0.0, 0, 0
  for n in range(b):
    for k in range(1, steps + 1):
      for i in range(g - k):
        for j in range(w):
          s = keys @ preds[n, k - 1, i, j]
          pos = (n * g + i + k) * w + j
          total += np.log(np.sum(np.exp(s - s.max()))) + s.max() - s[pos]
          hits += int(np.argmax(s) == pos)
          count += 1
  return total / count, hits / count


def _grid(seed, b=8, steps=2, g=4, d=6):
  rng = np.random.default_rng(seed)
  z = rng.normal(size=(b, g, g, d)).astype(np.float32)
  preds = (np.repeat(z[:, None], steps, 1) + rng.normal(size=(b, steps, g, g, d))).astype(np.float32)
  preds[:, 0, :-1] += 2 * z[:, 1:]   # offset-1 predictions lean to their positives: a non-trivial accuracy
  return preds, z


def test_loss_matches_float64_reference():
  preds, z = _grid(0, b=3, steps=3, g=4)
  loss, metrics = cpc_infonce(jnp.asarray(preds), jnp.asarray(z))
  want_loss, want_acc = infonce_reference(preds, z)
  np.testing.assert_allclose(float(loss), want_loss, rtol=1e-5)
  np.testing.assert_allclose(float(metrics["contrast_acc"]), want_acc, rtol=1e-6)
  assert 0.05 < want_acc < 0.95
  grads = jax.grad(lambda p, y: cpc_infonce(p, y)[0], argnums=(0, 1))(jnp.asarray(preds), jnp.asarray(z))
  for which, x, grad in ((0, preds, grads[0]), (1, z, grads[1])):   # central differences of the float64 loop
    for flat in np.random.default_rng(which).choice(x.size, 4, replace=False):
      idx, eps = np.unravel_index(flat, x.shape), 1e-4
      up, down = [np.array(a, np.float64) for a in (preds, z)], [np.array(a, np.float64) for a in (preds, z)]
      up[which][idx] += eps
      down[which][idx] -= eps
      numeric = (infonce_reference(*up)[0] - infonce_reference(*down)[0]) / (2 * eps)
      np.testing.assert_allclose(float(grad[idx]), numeric, rtol=1e-3, atol=1e-6)


def test_loss_and_gradient_on_eight_devices_equal_one():
  """Negatives are the GLOBAL batch: without the all-gather, or with a gradient scaled by the device count, the
  8-device value or gradient differs from the one-device one."""
  preds, z = _grid(1, b=16)
  value_and_grad = jax.value_and_grad(lambda p, y, axis: cpc_infonce(p, y, axis)[0], argnums=(0, 1))
  one = jax.jit(lambda p, y: value_and_grad(p, y, None))(preds, z)
  mesh = parallel.make_mesh(8)
  eight = jax.jit(jax.shard_map(lambda p, y: value_and_grad(p, y, "data"), mesh=mesh,
                                in_specs=(P("data"), P("data")), out_specs=(P(), (P("data"), P("data")))))(preds, z)
  np.testing.assert_allclose(float(eight[0]), float(one[0]), rtol=1e-6)
  np.testing.assert_allclose(float(one[0]), infonce_reference(preds, z)[0], rtol=1e-5)
  assert_trees_close(eight[1], one[1], rtol=1e-5, atol=1e-7)


# ----------------------------------------------------------------------------- the model


def _model(directions=("down", "up", "right", "left")):
  backbone = build_backbone(dict(name="resnet_tiny", stem="cifar", width=0.5)).clone(norm="layer")
  return CPCModel(backbone=backbone, directions=directions, steps=2, blocks=1, hidden=8, patch_size=8,
                  patch_stride=4)


def _random_predictions(params, seed=0):
  """The params with every W_k drawn at random: they start at zero, which would hide every path through c and z."""
  rng = np.random.default_rng(seed)
  return {k: ({**v, "predict": {"kernel": rng.normal(size=v["predict"]["kernel"].shape).astype(np.float32) * 0.1}}
              if k.startswith("context_") else v) for k, v in params.items()}


@pytest.fixture(scope="module")
def model_and_params():
  model = _model()
  patches = np.random.default_rng(0).normal(size=(2, 4, 4, 8, 8, 3)).astype(np.float32)
  params = jax.jit(lambda x: model.init(jax.random.key(0), x, train=False))(patches)["params"]
  return model, {"params": _random_predictions(params)}, patches


def test_predictions_never_see_the_rows_they_predict(model_and_params):
  """Changing patch row (or column) r changes no prediction made from the rows before r in the direction's order
  (so none of rows <= r - 1 predicts a patch it saw), and does change the later ones (the test is not vacuous)."""
  model, variables, patches = model_and_params
  apply = jax.jit(lambda x: model.apply(variables, x, train=True))
  g, r = patches.shape[1], 2
  _, base = apply(patches)
  for axis in (1, 2):    # a row, then a column
    changed = patches.copy()
    changed[:, r] = 0.0 if axis == 1 else changed[:, r]
    if axis == 2:
      changed[:, :, r] = 0.0
    _, after = apply(changed)
    for d, (_, p0), (_, p1) in zip(model.directions, base, after):
      if (d in ("down", "up")) != (axis == 1):
        continue
      first = r if d in ("down", "right") else g - 1 - r     # the changed line in the turned grid
      np.testing.assert_array_equal(np.asarray(p1[:, :, :first]), np.asarray(p0[:, :, :first]), err_msg=d)
      assert np.abs(np.asarray(p1[:, :, first:]) - np.asarray(p0[:, :, first:])).max() > 1e-4, d


def test_each_patch_is_encoded_alone_and_batch_norm_stays_the_resnet_default(model_and_params):
  """LayerNorm (CPC v2 Sec. 4.1): changing one patch of one image changes that patch's vector only; BatchNorm's
  batch statistics would move every other one."""
  model, variables, patches = model_and_params
  changed = patches.copy()
  changed[1, 1, 2] = 0.0
  z0, z1 = jax.jit(jax.vmap(lambda x: model.apply(variables, x, train=True)[0]))(np.stack([patches, changed]))
  moved = np.abs(np.asarray(z1) - np.asarray(z0)).max(-1) > 0
  assert moved[1, 1, 2] and moved.sum() == 1
  bn = build_backbone(dict(name="resnet_tiny", stem="cifar"))
  assert bn.norm == "batch"
  assert "batch_stats" in jax.eval_shape(lambda v: bn.init(jax.random.key(0), v, train=False), patches[0, 0])


def test_patches_cut_the_grid_and_augmentation_keeps_one_channel_and_flips():
  images = jnp.arange(2 * 16 * 16 * 3, dtype=jnp.float32).reshape(2, 16, 16, 3)
  patches = extract_patches(images, 8, 4)
  assert patches.shape == (2, 3, 3, 8, 8, 3)
  np.testing.assert_array_equal(patches[1, 2, 1], images[1, 8:16, 4:12])
  out = augment_patches(patches[0] + 1.0, jax.random.key(0), color_drop_p=1.0, flip_p=1.0)
  nonzero = np.asarray(jnp.any(out != 0, axis=(2, 3)))           # [3, 3, channels]
  assert (nonzero.sum(-1) == 1).all()                              # exactly one channel kept in each patch
  assert len(set(np.argmax(nonzero, -1).ravel())) > 1              # chosen per patch
  kept = np.asarray(jnp.sum(out, axis=-1))
  np.testing.assert_array_equal(kept[..., 0], np.asarray(patches[0, ..., -1, :] + 1.0)[
      np.arange(3)[:, None], np.arange(3)[None], :, np.argmax(nonzero, -1)])   # first column = last, flipped
  same = augment_patches(patches[0], jax.random.key(0), color_drop_p=0.0, flip_p=0.0)
  np.testing.assert_array_equal(same, patches[0])


# ----------------------------------------------------------------------------- the method


def _config(**method):
  c = tiny_config(**{"model.stem": "cifar", "model.width": 0.5, "data.image_size": 16})
  c.method = dict(name="cpc_v2", patch_size=8, patch_stride=4, pred_steps=2, context_blocks=1, context_hidden=8,
                  directions=("down", "left"), **method)
  c.augment = ml_collections.ConfigDict({"global": group(size=16, views=1)})
  return c


def _views(n=16, seed=0):
  return {"crops": (np.random.default_rng(seed).normal(size=(1, n, 16, 16, 3)).astype(np.float32),)}


def test_method_step_on_eight_devices_matches_one_and_learns():
  """Loss, gradient and metrics of one step from the same params; patch augmentation keyed by the global example
  index, so the views are the same; then a few SGD steps on one batch lower the loss."""
  c, views = _config(), _views()
  method = build_method(c)
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  assert state == {}
  params = _random_predictions(params)
  one_step = make_method_step(build_method(c, num_devices=1), state, views, 1, sgd_lr=0.05)
  one = one_step(params, state, views)
  eight = make_method_step(build_method(c, num_devices=8), state, views, 8)(params, state, views)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  assert_trees_close(eight.grads, one.grads, rtol=1e-4, atol=1e-5)
  assert_trees_close(eight.metrics, one.metrics, rtol=1e-5, atol=1e-6)
  assert set(one.metrics) == {"contrast_acc", "embedding_std"}
  p, losses = params, []
  for t in range(4):
    out = one_step(p, state, views, t)
    p = out.params
    losses.append(float(out.loss))
  assert np.isfinite(losses).all() and losses[-1] < losses[0], losses
  feats = method.encode(params, state, views["crops"][0][0])
  z = method.model.apply({"params": params}, extract_patches(views["crops"][0][0], 8, 4), train=False)[0]
  np.testing.assert_allclose(np.asarray(feats), np.asarray(z.mean(axis=(1, 2))), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("overrides,needles", [
    ({"method.patch_size": 32}, ("method.patch_size=32 is larger than the 16 px crops", "patch_size <= 16")),
    ({"method.pred_steps": 3}, ("method.pred_steps=3 needs more than 3 patch rows", "give 3", "lower method.")),
    ({"method.directions": ("down", "diagonal")}, ("method.directions=", "down, up, right, left")),
    ({"method.patch_size": 8, "model.stem": "imagenet"}, ("smaller than the backbone's total stride 32",
                                                          "model.stem=cifar or a larger method.patch_size")),
    ({"model": {"name": "vit_tiny"}}, ("cpc_v2 needs a ResNet backbone", "model.name='vit_tiny'")),
])
def test_impossible_grids_fail_in_one_line_naming_the_fix(overrides, needles):
  c = _config()
  for k, v in overrides.items():
    if "." in k:
      section, key = k.split(".")
      c[section][key] = v
    else:
      c[k] = ml_collections.ConfigDict(v)
  one_line_error(lambda: build_method(c), *needles)
