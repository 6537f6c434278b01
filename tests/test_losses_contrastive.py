"""NT-Xent against a float64 NumPy reference, and 8 devices against 1 for value and gradient."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.losses import contrastive


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
  """Written from the paper's definition, one anchor at a time, in float64."""
  z = np.concatenate([z1, z2]).astype(np.float64)
  z /= np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z1)
  total = 0.0
  for i in range(2 * n):
    j = (i + n) % (2 * n)
    sims = np.array([z[i] @ z[k] / tau for k in range(2 * n) if k != i])
    total += -(z[i] @ z[j] / tau) + np.log(np.sum(np.exp(sims)))
  return total / (2 * n)


@pytest.fixture(scope="module")
def embeddings():
  rng = np.random.default_rng(0)
  return rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=(16, 8)).astype(np.float32)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_matches_float64_reference(embeddings, tau):
  z1, z2 = embeddings
  loss, _ = contrastive.nt_xent(jnp.asarray(z1), jnp.asarray(z2), tau)
  np.testing.assert_allclose(float(loss), nt_xent_reference(z1, z2, tau), rtol=1e-5)


def test_identical_views_are_easy_and_accuracy_is_perfect():
  z = np.eye(8, dtype=np.float32) * 3
  loss, metrics = contrastive.nt_xent(jnp.asarray(z), jnp.asarray(z), 0.1)
  assert float(metrics["contrast_acc"]) == 1.0
  assert float(loss) < 0.01


def test_eight_devices_equal_one_device_value_and_gradient(embeddings):
  z1, z2 = embeddings
  mesh = parallel.make_mesh()
  assert mesh.size == 8
  tau = 0.2

  def one(z1, z2):
    return contrastive.nt_xent(z1, z2, tau)[0]

  ref_loss, ref_grads = jax.value_and_grad(one, argnums=(0, 1))(z1, z2)

  def per_device(z1, z2):
    return jax.value_and_grad(
        lambda a, b: contrastive.nt_xent(a, b, tau, axis_name=parallel.DATA)[0], argnums=(0, 1))(z1, z2)

  sharded = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"), P("data")),
                                  out_specs=(P(), (P("data"), P("data")))))
  put = lambda x: jax.device_put(x, parallel.sharded(mesh))
  loss, grads = sharded(put(z1), put(z2))
  np.testing.assert_allclose(float(loss), float(ref_loss), rtol=1e-5)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-7)
