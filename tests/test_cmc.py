"""CMC: RGB -> Lab against float64 and published values; the multi-view objective (NCE, sampled and full softmax,
core and full graphs) against float64 NumPy; one method step on 8 devices vs 1 (loss, gradient, banks, Z); each
bank moved towards its own view's features; evaluation features of every view concatenated."""
import copy

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax.data import colorspace
from cl_jax.losses import cmc
from tests.harness import (assert_trees_close, batch_views, build_method, explicit_method_config, method_step,
                           one_line_error)

N, D, B, M, TAU = 48, 8, 12, 20, 0.07


# ----------------------------------------------------------------------------- colour


def lab_reference(rgb):
  """skimage.color.rgb2lab's formulas in float64: sRGB gamma, XYZ / D65 white, f with the 0.008856 / 7.787 form."""
  rgb = np.asarray(rgb, np.float64)
  lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
  m = np.array([[0.412453, 0.357580, 0.180423], [0.212671, 0.715160, 0.072169], [0.019334, 0.119193, 0.950227]])
  xyz = lin @ m.T / np.array([0.95047, 1.0, 1.08883])
  f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16.0 / 116.0)
  return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], -1)


def test_rgb_to_lab_matches_float64_and_published_values():
  rgb = np.random.default_rng(0).uniform(size=(500, 3)).astype(np.float32)
  rgb[:20] *= 0.02                                      # the linear segments near black
  np.testing.assert_allclose(np.asarray(colorspace.rgb_to_lab(jnp.asarray(rgb))), lab_reference(rgb), atol=2e-3)
  known = {(1, 1, 1): (100, 0, 0), (0, 0, 0): (0, 0, 0), (1, 0, 0): (53.24, 80.09, 67.20),
           (0, 1, 0): (87.73, -86.18, 83.18), (0, 0, 1): (32.30, 79.19, -107.86)}   # sRGB primaries, D65
  for rgb_value, lab in known.items():
    np.testing.assert_allclose(np.asarray(colorspace.rgb_to_lab(jnp.asarray(rgb_value, jnp.float32))), lab,
                               atol=0.02, err_msg=str(rgb_value))


def test_channel_views_shapes_and_gradient_view_ignores_flat_colour():
  flat = jnp.full((2, 8, 8, 3), 0.3)
  views = colorspace.channel_views(flat, ("L", "ab", "grad"))
  assert {k: v.shape[-1] for k, v in views.items()} == {"L": 1, "ab": 2, "grad": 1}
  np.testing.assert_allclose(np.asarray(views["grad"]), 0.0, atol=1e-5)
  step = jnp.zeros((1, 8, 8, 3)).at[:, :, 4:].set(1.0)      # a vertical edge: gradient only next to it
  g = np.asarray(colorspace.channel_views(step, ("grad",))["grad"])[0, :, :, 0]
  assert g[:, 3:5].min() > 0.1 and g[:, :2].max() < 1e-5 and g[:, 6:].max() < 1e-5
  one_line_error(lambda: colorspace.channel_views(flat, ("L", "hsv")), "Unknown CMC view 'hsv'", "method.views")


# ----------------------------------------------------------------------------- the objective


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def cmc_reference(feats, index, neg, banks, pairs, kind, z=None):
  """Eq. 2-3 per (anchor view, bank view, example) in float64; NCE's Z per term from this batch when not given."""
  total, zs = 0.0, []
  for t, (a, b) in enumerate((p for i, j in pairs for p in ((i, j), (j, i)))):
    f, bank = _unit(feats[a].astype(np.float64)), banks[b].astype(np.float64)
    if kind == "full_softmax":
      logits = f @ bank.T / TAU
      total += np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(B), index])
      continue
    rows = np.concatenate([index[:, None], neg], 1)
    logits = np.einsum("bd,bmd->bm", f, bank[rows]) / TAU
    if kind == "softmax":
      total += np.mean(np.log(np.exp(logits).sum(1)) - logits[:, 0])
      continue
    out = np.exp(logits)
    zt = N * out.mean() if z is None else z[t]
    zs.append(zt)
    p, noise = out / zt, M / N
    total += -np.mean(np.log(p[:, 0] / (p[:, 0] + noise + 1e-7))
                      + np.sum(np.log(noise / (p[:, 1:] + noise + 1e-7)), 1))
  return total, zs


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(1)
  feats = [rng.normal(size=(B, D)).astype(np.float32) for _ in range(3)]
  banks = [_unit(rng.normal(size=(N, D))).astype(np.float32) for _ in range(3)]
  return feats, rng.permutation(N)[:B].astype(np.int32), rng.integers(0, N, (B, M)).astype(np.int32), banks


def test_view_pairs_core_and_full_graph():
  assert cmc.view_pairs(2, "core") == cmc.view_pairs(2, "full") == ((0, 1),)
  assert cmc.view_pairs(4, "core") == ((0, 1), (0, 2), (0, 3))
  assert cmc.view_pairs(3, "full") == ((0, 1), (0, 2), (1, 2))
  assert cmc.directed_pairs(((0, 1),)) == ((0, 1), (1, 0))
  one_line_error(lambda: cmc.view_pairs(1, "core"), "at least 2 views")


@pytest.mark.parametrize("kind", cmc.LOSSES)
@pytest.mark.parametrize("graph,num_views", [("core", 2), ("core", 3), ("full", 3)])
def test_loss_matches_float64_reference(data, kind, graph, num_views):
  feats, index, neg, banks = data
  pairs = cmc.view_pairs(num_views, graph)
  terms = len(cmc.directed_pairs(pairs))
  loss, z, _ = cmc.cmc_loss(feats[:num_views], index, neg, banks[:num_views], -jnp.ones((terms,)), pairs, TAU, N,
                            kind)
  ref, ref_z = cmc_reference(feats, index, neg, banks, pairs, kind)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  if kind == "nce":
    np.testing.assert_allclose(np.asarray(z), ref_z, rtol=1e-5)
    fixed = np.asarray(ref_z) * 1.5                 # once set, each term's Z is used as given
    loss2, z2, _ = cmc.cmc_loss(feats[:num_views], index, neg, banks[:num_views], jnp.asarray(fixed, jnp.float32),
                                pairs, TAU, N, kind)
    np.testing.assert_allclose(float(loss2), cmc_reference(feats, index, neg, banks, pairs, kind, fixed)[0],
                               rtol=1e-5)
    np.testing.assert_allclose(np.asarray(z2), fixed, rtol=1e-6)


# ----------------------------------------------------------------------------- the method


def _config(**method):
  return explicit_method_config(dict(name="cmc", num_negatives=16, proj_dim=8, bank_size=32, **method), views=1)


@pytest.fixture(scope="module", params=[dict(loss="nce"), dict(loss="softmax", views=("L", "ab", "grad"),
                                                                graph="full")], ids=["nce_L_ab", "softmax_3views"])
def setup(request):
  c = _config(**request.param)
  method = build_method(c)
  views = batch_views(c, 16, num_train=32)
  # The augmented crops hold many saturated (exactly equal) pixels: at init some BN pre-activations then sit within
  # rounding of a ReLU's kink, and which side they fall on depends on the reduction order (measured: a 1e-6
  # relative change of the crops moves this gradient by 36%, on 1 and 2 devices alike). A small jitter of the
  # inputs moves them off the kink, so the comparison below sees the device split and not that knife edge.
  noise = np.random.default_rng(2).normal(size=views["crops"][0].shape).astype(np.float32)
  views["crops"] = (views["crops"][0] + 1e-2 * noise,)
  params, state = jax.jit(method.init)(jax.random.key(0, impl="rbg"), views)
  return method, params, state, views, method_step(method, params, state, views, 1, seed=1, sgd_lr=0.1), c


def test_eight_devices_equal_one_loss_grads_banks_z(setup):
  method, params, state, views, one, _ = setup
  eight = method_step(method, params, state, views, 8, seed=1, sgd_lr=0.1)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  assert_trees_close(eight.grads, one.grads, rtol=1e-3, atol=1e-4)   # gradients of order 1: atol 1e-4 is 1e-4 rel.
  assert_trees_close(eight.params, one.params, rtol=1e-4, atol=1e-5)
  assert_trees_close(eight.state_after_update, one.state_after_update, rtol=1e-4, atol=1e-6)


def test_each_bank_moves_towards_its_own_views_features(setup):
  """bank_v[i] <- normalize(0.5 bank_v[i] + 0.5 f_v(x_i)) for the batch's rows (official NCEAverage), every other
  row unchanged; f_v recomputed here by the view's own encoder (BN local: the same batch statistics)."""
  method, params, state, views, one, c = setup
  c = copy.deepcopy(c)
  c.model.bn = "local"
  local = build_method(c)
  x = local._split(jnp.asarray(views["crops"][0][0]))   # pylint: disable=protected-access
  idx = views["index"]
  for v in method.views:
    (_, z), _ = local.models[v].apply({"params": params[v], "batch_stats": state["batch_stats"][v]}, x[v],
                                      train=True, mutable=["batch_stats"])
    old, new = np.asarray(state[f"bank_{v}"], np.float64), np.asarray(one.state_after_update[f"bank_{v}"])
    want = 0.5 * old[idx] + 0.5 * _unit(np.asarray(z, np.float64))
    np.testing.assert_allclose(new[idx], _unit(want), rtol=1e-4, atol=1e-5, err_msg=v)
    rest = np.setdiff1d(np.arange(len(old)), idx)
    np.testing.assert_array_equal(new[rest], old[rest])
  if method.hp.loss == "nce":
    assert np.all(np.asarray(one.state_after_update["z"]) > 0)


def test_encode_concatenates_every_views_backbone_features(setup):
  method, params, state, views, *_ = setup
  images = jnp.asarray(views["crops"][0][0])
  feats = method.encode(params, state, images)
  x = method._split(images)   # pylint: disable=protected-access
  first = method.models[method.views[0]].apply(
      {"params": params[method.views[0]], "batch_stats": state["batch_stats"][method.views[0]]}, x[method.views[0]],
      method="features")
  assert feats.shape[-1] == len(method.views) * first.shape[-1]
  np.testing.assert_allclose(np.asarray(feats[:, :first.shape[-1]]), np.asarray(first), rtol=1e-6)


def test_bad_views_are_one_line_errors():
  one_line_error(lambda: build_method(_config(views=("L", "rgb"))), "method.views", "('L', 'ab')")
  one_line_error(lambda: build_method(_config(views=("L", "L"))), "distinct")
  c = explicit_method_config(dict(name="cmc", bank_size=32), views=2)
  method = build_method(c)
  views = batch_views(c, 8, num_train=32)
  # The check comes before any collective, so the loss raises outside shard_map too (no compile needed).
  one_line_error(lambda: method.loss({}, {}, views, jax.random.key(0), 0), "takes 1 crop per image",
                 "augment['global'].views=1")
