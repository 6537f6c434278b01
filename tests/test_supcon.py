"""SupCon: the loss against a float64 NumPy transcription of the official SupConLoss (labels, unlabelled examples,
anchors without positives), its NT-Xent reduction without labels, value and gradient on 8 devices vs 1 with the
labels gathered, and the method's step on 8 devices vs 1 with plain SGD."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.losses.contrastive import nt_xent
from cl_jax.losses.supcon import supcon
from tests.harness import (assert_trees_close, batch_views, build_method, explicit_method_config, method_step,
                           one_line_error)

B, D, T, BASE = 16, 8, 0.1, 0.07


def supcon_reference(z, labels, temperature, base):
  """SupConLoss.forward (contrast_mode='all') in float64, one anchor at a time; labels None: the eye mask."""
  v, b, _ = z.shape
  z = np.asarray(z, np.float64)
  z = z / np.linalg.norm(z, axis=-1, keepdims=True)
  feats = z.reshape(v * b, -1)                              # torch.cat(torch.unbind(features, 1)): view-major
  ids = np.tile(np.arange(b), v)
  lab = None if labels is None else np.tile(np.where(labels >= 0, labels, -1 - np.arange(b)), v)
  losses = []
  for a in range(v * b):
    others = [j for j in range(v * b) if j != a]
    logits = np.array([feats[a] @ feats[j] / temperature for j in others])
    log_prob = logits - np.log(np.exp(logits).sum())
    pos = [k for k, j in enumerate(others) if (ids[j] == ids[a] if lab is None else lab[j] == lab[a])]
    losses.append(-(temperature / base) * (np.sum(log_prob[pos]) / max(len(pos), 1)))
  return float(np.mean(losses))


@pytest.fixture(scope="module")
def z():
  return np.random.default_rng(0).normal(size=(2, B, D)).astype(np.float32)


LABELS = np.array([0, 1, 2, 0, 1, 3, 3, 3, 4, 0, 5, 6, 1, 2, 7, 8], np.int32)


@pytest.mark.parametrize("views", [1, 2, 3])
@pytest.mark.parametrize("kind", ["labels", "with_unlabelled", "none"])
def test_matches_float64_official_loss(views, kind):
  z = np.random.default_rng(views).normal(size=(views, B, D)).astype(np.float32)
  labels = {"labels": LABELS, "with_unlabelled": np.where(np.arange(B) % 3 == 0, -1, LABELS), "none": None}[kind]
  loss, metrics = supcon(jnp.asarray(z), None if labels is None else jnp.asarray(labels), T, BASE)
  np.testing.assert_allclose(float(loss), supcon_reference(z, labels, T, BASE), rtol=1e-5)
  assert np.isfinite(float(loss))
  if views == 1 and kind == "none":
    assert float(loss) == 0.0 and float(metrics["positives"]) == 0.0   # no positive anywhere: 0, not NaN


def test_without_labels_is_nt_xent(z):
  loss, _ = supcon(jnp.asarray(z), None, T, base_temperature=T)
  ref, _ = nt_xent(jnp.asarray(z[0]), jnp.asarray(z[1]), T)
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)


def test_gradient_has_no_nan_for_anchors_without_positives():
  z = np.random.default_rng(3).normal(size=(1, B, D)).astype(np.float32)
  grad = jax.grad(lambda x: supcon(x, jnp.arange(B), T, BASE)[0])(jnp.asarray(z))
  assert np.all(np.isfinite(np.asarray(grad)))


@pytest.mark.parametrize("labelled", [True, False])
def test_eight_devices_equal_one_value_and_gradient(z, labelled):
  labels = jnp.asarray(np.where(np.arange(B) % 5 == 0, -1, LABELS))

  def loss_fn(z, labels, axis_name=None):
    return supcon(z, labels if labelled else None, T, BASE, axis_name)[0]

  ref, ref_grad = jax.value_and_grad(loss_fn)(jnp.asarray(z), labels)
  mesh = parallel.make_mesh()
  fn = jax.jit(jax.shard_map(lambda z, l: jax.value_and_grad(loss_fn)(z, l, parallel.DATA), mesh=mesh,
                             in_specs=(P(None, "data"), P("data")), out_specs=(P(), P(None, "data"))))
  loss, grad = fn(z, labels)
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-4, atol=1e-6)


def _config(**method):
  return explicit_method_config(dict(name="supcon", proj_hidden=32, proj_dim=16, **method), views=2)


def test_method_step_eight_devices_equal_one():
  c = _config()
  method = build_method(c)
  views = batch_views(c, 16)
  views["label"] = LABELS
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  one = method_step(method, params, state, views, 1, sgd_lr=0.1)
  eight = method_step(method, params, state, views, 8, sgd_lr=0.1)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  assert_trees_close(eight.grads, one.grads, rtol=1e-3, atol=1e-4)
  assert_trees_close(eight.state_after_update, one.state_after_update, rtol=1e-4, atol=1e-5)
  assert 1.0 < float(one.metrics["positives"]) < 2 * 16   # more than its own other view: the labels count


def test_missing_labels_and_single_view_are_one_line_errors():
  c = _config()
  method = build_method(c)
  views = batch_views(c, 8)
  del views["label"]
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  one_line_error(lambda: method_step(method, params, state, views, 1), "no 'label'", "use_labels=False")
  c = explicit_method_config(dict(name="supcon", proj_hidden=32, proj_dim=16, use_labels=False), views=1)
  method = build_method(c)
  views = batch_views(c, 8)
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  one_line_error(lambda: method_step(method, params, state, views, 1), "2 or more views",
                 "augment['global'].views=2")
