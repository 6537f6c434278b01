"""MoCo v3: InfoNCE against float64 NumPy, 8 devices vs 1 (loss, gradient, momentum encoder), frozen patch
projection, a tiny run."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.losses.infonce import moco_v3_ctr
from tests.harness import assert_trees_close, init_method, method_step, tiny_method_config, tiny_run

SGD_LR = 0.1


def ctr_reference(q: np.ndarray, k: np.ndarray, tau: float) -> float:
  """MoCo v3 Eq. 1 from its definition, one query at a time, float64, times 2 tau (official code)."""
  q = q.astype(np.float64) / np.linalg.norm(q, axis=1, keepdims=True)
  k = k.astype(np.float64) / np.linalg.norm(k, axis=1, keepdims=True)
  total = 0.0
  for i in range(len(q)):
    total += -math.log(math.exp(q[i] @ k[i] / tau) / sum(math.exp(q[i] @ kj / tau) for kj in k))
  return total / len(q) * 2 * tau


@pytest.fixture(scope="module")
def qk():
  rng = np.random.default_rng(2)
  return rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=(16, 8)).astype(np.float32)


@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_loss_matches_float64_reference(qk, tau):
  q, k = qk
  loss, metrics = moco_v3_ctr(jnp.asarray(q), jnp.asarray(k), tau)
  np.testing.assert_allclose(float(loss), ctr_reference(q, k, tau), rtol=1e-5)
  assert 0.0 <= float(metrics["contrast_acc"]) <= 1.0
  _, metrics = moco_v3_ctr(jnp.asarray(q), jnp.asarray(3.0 * q), tau)
  assert float(metrics["contrast_acc"]) == 1.0


def test_no_gradient_reaches_the_keys(qk):
  q, k = map(jnp.asarray, qk)
  assert not np.any(np.asarray(jax.grad(lambda k: moco_v3_ctr(q, k, 0.2)[0])(k)))


def test_loss_eight_devices_equal_one_device_value_and_gradient(qk):
  q, k = qk
  ref, ref_grad = jax.value_and_grad(lambda q: moco_v3_ctr(q, jnp.asarray(k), 0.2)[0])(jnp.asarray(q))
  mesh = parallel.make_mesh()
  fn = jax.jit(jax.shard_map(
      jax.value_and_grad(lambda q, k: moco_v3_ctr(q, k, 0.2, parallel.DATA)[0]), mesh=mesh,
      in_specs=(P("data"), P("data")), out_specs=(P(), P("data"))))
  put = lambda x: jax.device_put(x, parallel.sharded(mesh))
  loss, grad = fn(put(q), put(k))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-6)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-5, atol=1e-8)


@pytest.fixture(scope="module")
def steps():
  config = tiny_method_config("moco_v3")
  method, params, state, crops = init_method(config, total_steps=10)
  step = lambda n: method_step(method, params, state, {"crops": (crops,)}, n, step=3, sgd_lr=SGD_LR)
  return config, params, state, step(8), step(1)


def test_method_step_eight_devices_equal_one_device(steps):
  _, _, _, out8, out1 = steps
  np.testing.assert_allclose(out8.loss, out1.loss, rtol=1e-5)
  np.testing.assert_allclose(out8.metrics["contrast_acc"], out1.metrics["contrast_acc"], rtol=1e-6)
  assert_trees_close(out8.grads, out1.grads, rtol=2e-3, atol=1e-6)
  assert_trees_close(out8.state_after_loss, out1.state_after_loss, rtol=1e-4, atol=1e-6)
  assert_trees_close(out8.state_after_update, out1.state_after_update, rtol=1e-5, atol=1e-7)


def test_momentum_encoder_is_the_cosine_ema_of_the_updated_query_encoder(steps):
  config, params, state, _, out = steps
  grads, after, metrics = out.grads, out.state_after_update, out.metrics
  # The official code applies m(k+1) at the start of step k+1, i.e. after step k's update.
  base, k, total = config.method.base_momentum, 3 + 1, 10
  m = 1 - (1 - base) * (math.cos(math.pi * k / total) + 1) / 2
  np.testing.assert_allclose(metrics["ema_momentum"], m, rtol=1e-6)
  online = jax.tree.map(lambda p, g: np.asarray(p, np.float64) - SGD_LR * np.asarray(g, np.float64),
                        params["encoder"], grads["encoder"])
  expected = jax.tree.map(lambda t, o: m * np.asarray(t, np.float64) + (1 - m) * o,
                          state["ema"]["params"], online)
  assert_trees_close(after["ema"]["params"], expected, rtol=1e-5, atol=1e-7)
  assert_trees_close(state["ema"]["params"], params["encoder"], rtol=0, atol=0)


def test_tiny_run_loss_decreases_without_collapse():
  history, _, _ = tiny_run(tiny_method_config("moco_v3", total_steps=8), 8)
  losses = [h["loss"] for h in history]
  assert all(np.isfinite(losses))
  assert np.mean(losses[-3:]) < np.mean(losses[:3]), losses
  assert history[-1]["train/embedding_std"] > 0.02


def test_vit_patch_projection_stays_frozen_through_training():
  """MoCo v3 Sec. 4.2: the random patch projection never changes (no gradient, no weight decay)."""
  config = tiny_method_config("moco_v3", total_steps=2, **{
      "model": {"name": "vit_micro", "patch_size": 8, "frozen_patch_embed": True, "bn": "sync"}})
  config.optim.frozen = ("patch_embed",)
  config.optim.weight_decay = 0.1
  _, init_params, state = tiny_run(config, 2)
  final = jax.device_get(state["params"])
  assert_trees_close(final["encoder"]["backbone"]["patch_embed"], init_params["encoder"]["backbone"]["patch_embed"],
                     rtol=0, atol=0)
  moved = final["encoder"]["backbone"]["block1"]["fc1"]["kernel"] - init_params["encoder"]["backbone"]["block1"][
      "fc1"]["kernel"]
  assert np.any(moved)


def test_frozen_patch_embed_without_frozen_optimizer_is_a_one_line_error():
  config = tiny_method_config("moco_v3", **{"model": {"name": "vit_micro", "patch_size": 8,
                                                      "frozen_patch_embed": True}})
  with pytest.raises(ValueError, match=r"also set optim.frozen=\('patch_embed',\)"):
    init_method(config)
