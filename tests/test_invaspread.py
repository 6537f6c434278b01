"""InvaSpread: the loss vs a float64 NumPy reference (Ye et al. 2019, Eq. 3-6), 8 devices vs 1, a few method steps."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.losses.invaspread import invaspread_loss
from tests.harness import (assert_trees_close, batch_views, build_method, explicit_method_config,
                           make_method_step, method_step)


def invaspread_reference(z1, z2, tau):
  """Eq. 3-6 written per anchor in float64 over the 2N views: positive term + binary negative term."""
  x = np.concatenate([z1, z2]).astype(np.float64)
  x /= np.linalg.norm(x, axis=1, keepdims=True)
  n2 = len(x)
  total = 0.0
  for a in range(n2):
    p = (a + n2 // 2) % n2
    div = sum(np.exp(x[a] @ x[c] / tau) for c in range(n2) if c != a)
    total += np.log(np.exp(x[a] @ x[p] / tau) / div)
    total += sum(np.log(1 - np.exp(x[a] @ x[c] / tau) / div) for c in range(n2) if c not in (a, p))
  return -total / n2


@pytest.fixture(scope="module")
def embeddings():
  rng = np.random.default_rng(0)
  return rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=(16, 8)).astype(np.float32)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_matches_float64_reference(embeddings, tau):
  z1, z2 = embeddings
  loss, _ = invaspread_loss(jnp.asarray(z1), jnp.asarray(z2), tau)
  np.testing.assert_allclose(float(loss), invaspread_reference(z1, z2, tau), rtol=1e-5)


def test_gradient_flows_through_anchors_only(embeddings):
  """As the official code (x @ x.t().data): d loss / d z equals the gradient of the anchor-side terms alone."""
  z1, z2 = embeddings
  g = jax.grad(lambda a: invaspread_loss(a, z2, 0.1)[0])(z1)
  assert np.all(np.isfinite(np.asarray(g))) and np.abs(np.asarray(g)).max() > 0
  eps = 1e-3
  d = np.zeros_like(z1)
  d[0, 0] = eps
  numeric = (float(invaspread_loss(z1 + d, z2, 0.1)[0]) - float(invaspread_loss(z1 - d, z2, 0.1)[0])) / (2 * eps)
  assert abs(numeric - float(g[0, 0])) > 1e-3   # the full derivative differs: targets are constants


def test_eight_devices_equal_one_value_and_gradient(embeddings):
  z1, z2 = embeddings
  mesh = parallel.make_mesh()
  ref, ref_grads = jax.value_and_grad(lambda a, b: invaspread_loss(a, b, 0.1)[0], argnums=(0, 1))(z1, z2)

  def per_device(a, b):
    return jax.value_and_grad(lambda a, b: invaspread_loss(a, b, 0.1, axis_name=parallel.DATA)[0],
                              argnums=(0, 1))(a, b)

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")),
                             out_specs=(P(), (P("data"), P("data")))))
  put = lambda x: jax.device_put(x, parallel.sharded(mesh))
  loss, grads = fn(put(z1), put(z2))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-4, atol=1e-7)


def test_method_eight_devices_equal_one_and_few_steps_decrease():
  c = explicit_method_config(dict(name="invaspread", temperature=0.1, proj_dim=16))
  method = build_method(c)
  views = batch_views(c, 16)
  params, state = jax.jit(method.init)(jax.random.key(0, impl="rbg"), views)
  one = method_step(method, params, state, views, 1, seed=1)
  step_fn = make_method_step(method, state, views, 8, seed=1)
  eight = step_fn(params, state, views)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  assert_trees_close(eight.grads, one.grads, rtol=1e-3, atol=1e-5)
  assert_trees_close(eight.state_after_update, one.state_after_update, rtol=1e-4, atol=1e-6)
  assert 0 < float(one.metrics["embedding_std"]) < 1
  losses = []
  for step in range(4):
    out = step_fn(params, state, views, step)
    state = out.state_after_update
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, out.grads)
    losses.append(float(out.loss))
  assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
