"""SimSiam: the negative-cosine loss against float64 NumPy, 8 devices vs 1, the fixed predictor lr, a tiny run."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import optim, parallel
from cl_jax.losses.regression import negative_cosine
from configs import simsiam_cifar10
from tests.harness import assert_trees_close, init_method, method_step, tiny_method_config, tiny_run


def simsiam_reference(p1, z1, p2, z2) -> float:
  """SimSiam Eq. 2 from its definition, D(p, z) = -p/||p|| . z/||z|| (Eq. 1), batch means, float64."""
  def d(p, z):
    p, z = p.astype(np.float64), z.astype(np.float64)
    return -np.mean([pi @ zi / math.sqrt((pi @ pi) * (zi @ zi)) for pi, zi in zip(p, z)])
  return 0.5 * d(p1, z2) + 0.5 * d(p2, z1)


def symmetric(p1, z1, p2, z2, axis_name=None):
  return 0.5 * negative_cosine(p1, z2, axis_name) + 0.5 * negative_cosine(p2, z1, axis_name)


@pytest.fixture(scope="module")
def pz():
  rng = np.random.default_rng(1)
  return tuple(rng.normal(size=(16, 8)).astype(np.float32) for _ in range(4))


def test_loss_matches_float64_reference(pz):
  np.testing.assert_allclose(float(symmetric(*map(jnp.asarray, pz))), simsiam_reference(*pz), rtol=1e-5)
  p = jnp.asarray(pz[0])
  np.testing.assert_allclose(float(negative_cosine(p, 2.0 * p)), -1.0, rtol=1e-6)   # minimum -1 when aligned


def test_stop_gradient_on_z(pz):
  p1, z1, p2, z2 = map(jnp.asarray, pz)
  gz = jax.grad(lambda z1, z2: symmetric(p1, z1, p2, z2), argnums=(0, 1))(z1, z2)
  assert not any(np.any(np.asarray(g)) for g in gz)


def test_loss_eight_devices_equal_one_device_value_and_gradient(pz):
  ref, ref_grads = jax.value_and_grad(symmetric, argnums=(0, 2))(*map(jnp.asarray, pz))
  mesh = parallel.make_mesh()
  fn = jax.jit(jax.shard_map(
      jax.value_and_grad(lambda a, b, c, d: symmetric(a, b, c, d, parallel.DATA), argnums=(0, 2)), mesh=mesh,
      in_specs=(P("data"),) * 4, out_specs=(P(), (P("data"), P("data")))))
  loss, grads = fn(*(jax.device_put(x, parallel.sharded(mesh)) for x in pz))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  for g, r in zip(grads, ref_grads):
    np.testing.assert_allclose(np.asarray(g), np.asarray(r), rtol=1e-5, atol=1e-8)


@pytest.fixture(scope="module")
def setup():
  config = tiny_method_config("simsiam")
  return (config,) + init_method(config)


def test_method_step_eight_devices_equal_one_device(setup):
  _, method, params, state, crops = setup
  out8, out1 = (method_step(method, params, state, {"crops": (crops,)}, n) for n in (8, 1))
  np.testing.assert_allclose(out8.loss, out1.loss, rtol=1e-5)
  assert -1.0 <= float(out1.loss) <= 1.0
  assert_trees_close(out8.grads, out1.grads, rtol=2e-3, atol=1e-6)
  assert_trees_close(out8.state_after_loss, out1.state_after_loss, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(out8.metrics["embedding_std"], out1.metrics["embedding_std"], rtol=1e-5)
  assert float(np.max(np.abs(out1.grads["predictor"]["dense2"]["kernel"]))) > 0


def test_recipe_keeps_the_predictor_lr_fixed(setup):
  """SimSiam Sec. 4.2: with the CIFAR recipe, during warm-up at lr 0 only the predictor moves, at the base lr."""
  _, _, params, _, _ = setup
  cfg = simsiam_cifar10.get_config().optim
  cfg.warmup_steps = 5
  tx, _ = optim.build_optimizer(cfg, total_steps=10, steps_per_epoch=1, batch_size=512)
  grads = jax.tree.map(jnp.ones_like, params)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert all(not np.any(np.asarray(u)) for u in jax.tree.leaves(updates["encoder"]))
  peak = 0.03 * 512 / 256
  expected = jax.tree.map(lambda p: -peak * (1.0 + 5e-4 * np.asarray(p)), params["predictor"])
  assert_trees_close(updates["predictor"], expected, rtol=1e-5, atol=1e-7)


def test_tiny_run_loss_decreases_without_collapse():
  history, _, _ = tiny_run(tiny_method_config("simsiam", total_steps=8), 8)
  losses = [h["loss"] for h in history]
  assert all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
  assert history[-1]["train/embedding_std"] > 0.02


def test_projector_too_shallow_is_a_one_line_error():
  with pytest.raises(ValueError, match="proj_layers=1; use 3"):
    init_method(tiny_method_config("simsiam", **{"method.proj_layers": 1}))
