"""MoCo v1/v2 (cl_jax.methods.moco: the methods moco_v1 and moco_v2): queue InfoNCE vs a float64 NumPy reference, Shuffle BN, and a method step on 8 devices vs 1."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.losses.queue import queue_info_nce
from cl_jax.methods.shuffle_bn import shuffled_apply
from tests.harness import (assert_trees_close, batch_views, build_method, explicit_method_config,
                           make_method_step, method_step)


def info_nce_reference(q, k, queue, tau):
  """MoCo Eq. 1 written per query in float64: -log exp(q.k+/t) / (exp(q.k+/t) + sum_j exp(q.k_j/t))."""
  q = q.astype(np.float64) / np.linalg.norm(q, axis=1, keepdims=True)
  k = k.astype(np.float64) / np.linalg.norm(k, axis=1, keepdims=True)
  total = 0.0
  for i in range(len(q)):
    pos = np.exp(q[i] @ k[i] / tau)
    neg = sum(np.exp(q[i] @ v / tau) for v in queue.astype(np.float64))
    total += -np.log(pos / (pos + neg))
  return total / len(q)


@pytest.fixture(scope="module")
def qkq():
  rng = np.random.default_rng(0)
  queue = rng.normal(size=(64, 8))
  queue /= np.linalg.norm(queue, axis=1, keepdims=True)
  return (rng.normal(size=(16, 8)).astype(np.float32), rng.normal(size=(16, 8)).astype(np.float32),
          queue.astype(np.float32))


@pytest.mark.parametrize("tau", [0.07, 0.2])
def test_queue_info_nce_matches_float64_reference(qkq, tau):
  q, k, queue = qkq
  loss, _ = queue_info_nce(jnp.asarray(q), jnp.asarray(k), jnp.asarray(queue), tau)
  np.testing.assert_allclose(float(loss), info_nce_reference(q, k, queue, tau), rtol=2e-5)


def test_positive_at_index_zero_gives_accuracy_and_low_loss():
  queue = -np.eye(8, dtype=np.float32)[:4]
  q = np.eye(8, dtype=np.float32)[:4]
  loss, m = queue_info_nce(jnp.asarray(q), jnp.asarray(q), jnp.asarray(queue), 0.07)
  assert float(m["contrast_acc"]) == 1.0 and float(loss) < 1e-5
  loss, m = queue_info_nce(jnp.asarray(q), jnp.asarray(-q), jnp.asarray(-queue), 0.07)
  assert float(m["contrast_acc"]) == 0.0 and float(loss) > 10


def test_queue_info_nce_eight_devices_equal_one_value_and_gradient(qkq):
  q, k, queue = qkq
  mesh = parallel.make_mesh()
  tau = 0.2
  ref, ref_grad = jax.value_and_grad(lambda a: queue_info_nce(a, k, queue, tau)[0])(q)

  def per_device(q, k, queue):
    return jax.value_and_grad(lambda a: queue_info_nce(a, k, queue, tau, axis_name=parallel.DATA)[0])(q)

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P("data"),) * 3, out_specs=(P(), P("data"))))
  put = lambda x: jax.device_put(x, parallel.sharded(mesh))
  loss, grad = fn(put(q), put(k), put(queue))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-4, atol=1e-7)


def test_shuffle_bn_runs_per_device_statistics_on_the_shuffled_batch_and_unshuffles():
  """A per-device 'BN' (x - local mean) on 8 devices equals a NumPy reference: permute, split in 8, centre, un-permute."""
  mesh = parallel.make_mesh()
  x = np.random.default_rng(1).normal(size=(32, 3)).astype(np.float32)
  key = jax.random.key(7)
  fn = jax.jit(jax.shard_map(lambda x: shuffled_apply(lambda v: (v - v.mean(0), None), x, key, parallel.DATA)[0],
                             mesh=mesh, in_specs=P("data"), out_specs=P("data")))
  out = np.asarray(fn(jax.device_put(x, parallel.sharded(mesh))))
  perm = np.asarray(jax.random.permutation(key, 32))
  shuffled = x[perm].reshape(8, 4, 3)
  expected = np.empty_like(x)
  expected[perm] = (shuffled - shuffled.mean(1, keepdims=True)).reshape(32, 3)
  np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-6)
  unshuffled = (x.reshape(8, 4, 3) - x.reshape(8, 4, 3).mean(1, keepdims=True)).reshape(32, 3)
  assert not np.allclose(out, unshuffled, atol=1e-3)   # the statistics really came from other devices' rows
  one = jax.jit(jax.shard_map(lambda x: shuffled_apply(lambda v: (v * 2, None), x, key, parallel.DATA)[0],
                              mesh=parallel.make_mesh(1), in_specs=P("data"), out_specs=P("data")))
  np.testing.assert_array_equal(np.asarray(one(x)), x * 2)   # one device: a no-op


def _moco(name, bn, bn_splits):
  c = explicit_method_config(dict(name=name, temperature=0.2, momentum=0.9, queue_size=128, proj_hidden=32, proj_dim=16,
                     shuffle_bn=True, bn_splits=bn_splits))
  c.model.bn = bn
  return c, build_method(c)


@pytest.fixture(scope="module", params=["moco_v2"])
def moco_setup(request):
  c, method = _moco(request.param, "local", 1)
  views = batch_views(c, 32)
  params, state = jax.jit(method.init)(jax.random.key(0, impl="rbg"), views)
  one = method_step(_moco(request.param, "local", 8)[1], params, state, views, 1, seed=1)
  return method, params, state, views, one


def test_moco_step_eight_devices_equal_one_loss_grads_queue(moco_setup):
  """8 devices with per-device BN and Shuffle BN == 1 device with 8 BN groups (bn_splits=8, the official one-GPU
  emulation) and the batch shuffled over them: same loss, gradient, queue, key encoder and BN statistics."""
  method, params, state, views, one = moco_setup
  eight = method_step(method, params, state, views, 8, seed=1)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  # BN over groups of 4 rows amplifies float32 summation-order differences in the gradient (measured <= 3e-5).
  assert_trees_close(eight.grads, one.grads, rtol=1e-3, atol=1e-4)
  assert_trees_close(eight.state_after_update, one.state_after_update, rtol=1e-4, atol=1e-5)


def test_moco_step_pushes_keys_into_the_queue_and_updates_key_encoder(moco_setup):
  method, params, state, views, one = moco_setup
  loss, metrics, new = one.loss, one.metrics, one.state_after_update
  assert np.isfinite(float(loss)) and 0 < float(metrics["embedding_std"]) < 1
  queue, old = np.asarray(new["queue"]), np.asarray(state["queue"])
  assert int(new["ptr"]) == 32
  np.testing.assert_array_equal(queue[32:], old[32:])                       # untouched rows
  np.testing.assert_allclose(np.linalg.norm(queue[:32], axis=1), 1.0, rtol=1e-5)   # fresh unit keys
  assert not np.allclose(queue[:32], old[:32])


def test_queue_rows_written_are_this_steps_keys_in_batch_order():
  """MoCo Alg. 1 'enqueue': global rows ptr..ptr+B of the queue become this step's normalised keys f_k(x_k), in
  batch order, and every other row is untouched (one device, no shuffle, so the keys are recomputable)."""
  c = explicit_method_config(dict(name="moco_v2", temperature=0.2, momentum=0.9, queue_size=128, proj_hidden=32,
                                  proj_dim=16, shuffle_bn=False, bn_splits=1))
  c.model.bn = "local"
  method = build_method(c)
  views = batch_views(c, 32)
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  state = {**state, "ptr": jnp.asarray(64, jnp.int32)}
  out = method_step(method, params, state, views, 1, seed=1)
  (_, keys), _ = jax.jit(method._split_apply)(state["ema"], views["crops"][0][1])
  keys = np.asarray(keys, np.float64)
  keys /= np.linalg.norm(keys, axis=1, keepdims=True)
  queue, old = np.asarray(out.state_after_loss["queue"]), np.asarray(state["queue"])
  assert int(out.state_after_loss["ptr"]) == 96
  np.testing.assert_allclose(queue[64:96], keys, rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.delete(queue, np.s_[64:96], 0), np.delete(old, np.s_[64:96], 0))


def _gap(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_key_encoder_is_the_momentum_ema_of_the_query_encoder(moco_setup):
  """theta_k <- m theta_k + (1 - m) theta_q (MoCo Eq. 2) over 3 steps with SGD moving theta_q, against float64."""
  method, params, state, views, _ = moco_setup
  m, lr, step_fn = 0.9, 0.5, make_method_step(method, state, views, 1, seed=1)
  assert method.momentum == m
  f64 = lambda tree: jax.tree.map(lambda x: np.asarray(x, np.float64), tree)
  ema64 = f64(state["ema"]["params"])
  for step in range(3):
    out = step_fn(params, state, views, step)   # no update inside: the EMA moves towards `params`
    grads, state = out.grads, out.state_after_update
    before, online = ema64, f64(params)
    ema64 = jax.tree.map(lambda e, p: m * e + (1 - m) * p, before, online)
    params = jax.tree.map(lambda p, g: p - lr * g, params, grads)
  assert_trees_close(state["ema"]["params"], ema64, rtol=1e-6, atol=1e-7)
  # The last update visibly mixed the two: the EMA is neither the online params nor its previous value.
  assert _gap(state["ema"]["params"], online) > 1e-2 and _gap(state["ema"]["params"], before) > 1e-2


def test_moco_few_steps_finite_and_queue_wraps(moco_setup):
  method, params, state, views, _ = moco_setup
  step_fn = make_method_step(method, state, views, 8, seed=1)
  for step in range(5):
    out = step_fn(params, state, views, step)
    state = out.state_after_update
    params = jax.tree.map(lambda p, g: p - 0.05 * g, params, out.grads)
    assert np.isfinite(float(out.loss))
  assert int(state["ptr"]) == (5 * 32) % 128


def test_queue_not_divisible_by_batch_is_one_line_error():
  c = explicit_method_config(dict(name="moco_v1", temperature=0.07, queue_size=40, proj_dim=8))
  method = build_method(c)
  views = batch_views(c, 16)
  params, state = jax.eval_shape(method.init, jax.random.key(0), views)
  with pytest.raises(ValueError, match="queue_size 40 is not divisible by the global batch 16"):
    jax.eval_shape(jax.shard_map(lambda p, s, v: method.loss(p, s, v, jax.random.key(0), 0)[0],
                                 mesh=parallel.make_mesh(1), in_specs=(P(), P(), P("data")), out_specs=P()),
                   params, state, views)
