"""CLIP, SigLIP and UniCL losses: float64 NumPy references, 8 devices vs 1 (value and gradient), UniCL's reductions."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.losses import clip, siglip, unicl


def _unit(x):
  x = np.asarray(x, np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _log_softmax_row(v):
  m = v.max()
  return v - m - math.log(np.exp(v - m).sum())


def clip_reference(img, txt, scale):
  """CLIP's pseudo-code (Radford et al. 2021, Fig. 3) in float64: labels = arange(n), symmetric CE / 2."""
  logits = scale * _unit(img) @ _unit(txt).T
  n = len(img)
  loss_i = -np.mean([_log_softmax_row(logits[i])[i] for i in range(n)])
  loss_t = -np.mean([_log_softmax_row(logits[:, j])[j] for j in range(n)])
  return (loss_i + loss_t) / 2


def siglip_reference(img, txt, t, b):
  """SigLIP Alg. 1 in float64: -sum_ij log sigmoid(z_ij (t x_i.y_j + b)) / n, z = 2 eye - 1."""
  x, y = _unit(img), _unit(txt)
  n, total = len(x), 0.0
  for i in range(n):
    for j in range(n):
      z = 1.0 if i == j else -1.0
      total += math.log1p(math.exp(-z * (t * x[i] @ y[j] + b)))
  return total / n


def unicl_reference(img, txt, labels, scale):
  """UniCL Eq. 3-5 in float64, one anchor at a time: P(i) = {k : y_k = y_i} (label -1: only itself)."""
  x, y = _unit(img), _unit(txt)
  n = len(x)
  same = lambda i, k: i == k or (labels[i] >= 0 and labels[i] == labels[k])
  total = 0.0
  for a, b in ((x, y), (y, x)):
    for i in range(n):
      log_p = _log_softmax_row(scale * b @ a[i])
      pos = [k for k in range(n) if same(i, k)]
      total -= sum(log_p[k] for k in pos) / len(pos)
  return total / (2 * n)


def supcon_cross_modal_reference(img, txt, labels, tau):
  """Supervised contrastive loss (Khosla et al. 2020, Eq. 2, L_out) with images as anchors against texts as the
  contrast set and vice versa, averaged: the form UniCL takes on pure image-label data."""
  x, y = _unit(img), _unit(txt)
  n, total = len(x), 0.0
  for anchors, contrast in ((x, y), (y, x)):
    for i in range(n):
      positives = [p for p in range(n) if labels[p] == labels[i]]
      denom = sum(math.exp(anchors[i] @ contrast[a] / tau) for a in range(n))
      total += -sum(math.log(math.exp(anchors[i] @ contrast[p] / tau) / denom) for p in positives) / len(positives)
  return total / (2 * n)


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  img = rng.normal(size=(16, 8)).astype(np.float32)
  txt = (img + 0.8 * rng.normal(size=(16, 8))).astype(np.float32)
  labels = np.array([3, 1, -1, 3, 0, 1, 3, -1, 2, 2, -1, 0, 5, 3, 1, -1], np.int32)
  return img, txt, labels


@pytest.mark.parametrize("log_scale", [math.log(1 / 0.07), 0.5])
def test_clip_matches_reference(data, log_scale):
  img, txt, _ = data
  loss, metrics = clip.clip_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(log_scale))
  np.testing.assert_allclose(float(loss), clip_reference(img, txt, math.exp(log_scale)), rtol=1e-5)
  assert 0.0 < float(metrics["i2t_acc"]) <= 1.0


def test_clip_logit_scale_is_clipped_at_100(data):
  img, txt, _ = data
  fn = lambda s: clip.clip_loss(jnp.asarray(img), jnp.asarray(txt), s)[0]
  loss, grad = jax.value_and_grad(fn)(jnp.float32(6.0))
  np.testing.assert_allclose(float(loss), clip_reference(img, txt, 100.0), rtol=1e-5)
  assert float(grad) == 0.0
  assert float(jax.grad(fn)(jnp.float32(clip.LOGIT_SCALE_INIT))) != 0.0
  np.testing.assert_allclose(math.exp(clip.LOGIT_SCALE_INIT), 1 / 0.07, rtol=1e-6)


def test_siglip_matches_reference(data):
  img, txt, _ = data
  for t_prime, b in ((siglip.LOG_TEMPERATURE_INIT, siglip.BIAS_INIT), (1.2, -2.0)):
    loss, _ = siglip.siglip_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(t_prime), jnp.float32(b))
    np.testing.assert_allclose(float(loss), siglip_reference(img, txt, math.exp(t_prime), b), rtol=1e-5)


def test_unicl_matches_reference(data):
  img, txt, labels = data
  loss, _ = unicl.unicl_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(labels), jnp.float32(2.0))
  np.testing.assert_allclose(float(loss), unicl_reference(img, txt, labels, math.exp(2.0)), rtol=1e-5)


def test_unicl_reduces_to_clip_when_every_label_is_unique(data):
  img, txt, _ = data
  unique = jnp.full((16,), -1, jnp.int32)
  distinct = jnp.arange(16, dtype=jnp.int32)
  ref = clip.clip_loss(jnp.asarray(img), jnp.asarray(txt), jnp.float32(2.5))[0]
  for labels in (unique, distinct):
    loss = unicl.unicl_loss(jnp.asarray(img), jnp.asarray(txt), labels, jnp.float32(2.5))[0]
    np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  # and it differs as soon as two pairs share a label
  shared = distinct.at[1].set(0)
  assert abs(float(unicl.unicl_loss(jnp.asarray(img), jnp.asarray(txt), shared, jnp.float32(2.5))[0])
             - float(ref)) > 1e-3


def test_unicl_on_image_label_data_is_cross_modal_supcon(data):
  img, _, _ = data
  rng = np.random.default_rng(1)
  labels = rng.integers(0, 4, size=16).astype(np.int32)
  class_text = rng.normal(size=(4, 8)).astype(np.float32)
  txt = class_text[labels]   # each image's text is its class prompt: duplicates across the batch
  tau = 0.1
  loss, _ = unicl.unicl_loss(jnp.asarray(img), jnp.asarray(txt), jnp.asarray(labels), jnp.float32(math.log(1 / tau)))
  np.testing.assert_allclose(float(loss), supcon_cross_modal_reference(img, txt, labels, tau), rtol=1e-5)


LOSSES = {
    "clip": (lambda i, t, l, p: clip.clip_loss(i, t, p["s"], axis_name=parallel.DATA)[0],
             lambda i, t, l, p: clip.clip_loss(i, t, p["s"])[0]),
    "siglip": (lambda i, t, l, p: siglip.siglip_loss(i, t, p["s"], p["b"], axis_name=parallel.DATA)[0],
               lambda i, t, l, p: siglip.siglip_loss(i, t, p["s"], p["b"])[0]),
    "unicl": (lambda i, t, l, p: unicl.unicl_loss(i, t, l, p["s"], axis_name=parallel.DATA)[0],
              lambda i, t, l, p: unicl.unicl_loss(i, t, l, p["s"])[0]),
}


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_eight_devices_equal_one_device_value_and_gradient(data, name):
  img, txt, labels = data
  sharded_fn, one_fn = LOSSES[name]
  params = {"s": jnp.float32(1.7), "b": jnp.float32(-3.0)}
  ref_loss, ref_grads = jax.value_and_grad(one_fn, argnums=(0, 1, 3))(img, txt, labels, params)
  mesh = parallel.make_mesh()
  assert mesh.size == 8

  def per_device(i, t, l, p):
    return jax.value_and_grad(sharded_fn, argnums=(0, 1, 3))(i, t, l, p)

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data"), P("data"), P()),
                             out_specs=(P(), (P("data"), P("data"), P()))))
  put = lambda x: jax.device_put(x, parallel.sharded(mesh))
  loss, grads = fn(put(img), put(txt), put(labels), jax.device_put(params, parallel.replicated(mesh)))
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for g, r in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=2e-5, atol=1e-7)
  assert np.abs(np.asarray(ref_grads[2]["s"])) > 0   # the temperature is learned


def test_siglip_chunked_holds_only_local_blocks(data):
  """The sharded SigLIP never builds a logits matrix wider than the local batch (no all_gather in the program)."""
  img, txt, _ = data
  mesh = parallel.make_mesh()
  fn = jax.jit(jax.shard_map(lambda i, t: siglip.siglip_loss(i, t, jnp.float32(1.0), jnp.float32(-1.0),
                                                              axis_name=parallel.DATA)[0],
                             mesh=mesh, in_specs=(P("data"), P("data")), out_specs=P()))
  put = lambda x: jax.device_put(x, parallel.sharded(mesh))
  text = fn.lower(put(img), put(txt)).as_text()
  assert "all_gather" not in text and "all-gather" not in text
  assert "collective_permute" in text or "collective-permute" in text
  np.testing.assert_allclose(float(fn(put(img), put(txt))), siglip_reference(img, txt, math.e, -1.0), rtol=1e-5)
