"""SwAV: Sinkhorn codes and the swapped-prediction loss against float64 NumPy; codes, loss, gradient and queue on
8 devices vs 1; unit-norm prototypes after every update; the queue used only once full."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.data.augment import group
from cl_jax.losses import swav
from tests.harness import assert_trees_close, build_method, explicit_method_config, make_method_step, method_step


# ----------------------------------------------------------------------------- float64 references


def sinkhorn_reference(scores, eps, iters):
  """The official distributed_sinkhorn on one device, float64: Q = exp(s / eps)^T, rows then columns."""
  q = np.exp(np.asarray(scores, np.float64) / eps).T            # [K, B]
  k, b = q.shape
  q /= q.sum()
  for _ in range(iters):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= b
  return (q * b).T


def swapped_reference(scores, codes, temp):
  """SwAV's training loop (Eq. 1), one (global crop i, other crop v, sample) at a time, float64."""
  total = 0.0
  for i in range(codes.shape[0]):
    sub = 0.0
    for v in range(scores.shape[0]):
      if v == i:
        continue
      x = np.asarray(scores[v], np.float64) / temp
      logp = x - x.max(1, keepdims=True) - np.log(np.exp(x - x.max(1, keepdims=True)).sum(1, keepdims=True))
      sub += np.mean(-np.sum(codes[i] * logp, axis=1))
    total += sub / (scores.shape[0] - 1)
  return total / codes.shape[0]


def _unit_scores(rng, n, k, d=16):
  z = rng.normal(size=(n, d))
  c = rng.normal(size=(d, k))
  return ((z / np.linalg.norm(z, axis=1, keepdims=True)) @ (c / np.linalg.norm(c, axis=0))).astype(np.float32)


def test_sinkhorn_matches_float64_and_balances_prototypes():
  s = _unit_scores(np.random.default_rng(0), 64, 30)
  q = np.asarray(swav.sinkhorn(jnp.asarray(s), 0.05, 3))
  np.testing.assert_allclose(q, sinkhorn_reference(s, 0.05, 3), rtol=1e-4, atol=1e-7)
  np.testing.assert_allclose(q.sum(1), 1.0, rtol=1e-5)             # each sample's code sums to 1
  many = np.asarray(swav.sinkhorn(jnp.asarray(s), 0.05, 200))
  np.testing.assert_allclose(many.sum(0), 64 / 30, rtol=1e-3)     # converged: equal mass per prototype


def test_sinkhorn_on_eight_devices_equals_one_and_invalid_rows_count_nowhere():
  rng = np.random.default_rng(1)
  s = _unit_scores(rng, 64, 12)
  mesh = parallel.make_mesh(8)
  valid = np.arange(64) % 8 < 6        # two rows per device are an "unfilled queue"
  fn = jax.jit(jax.shard_map(lambda x, v: swav.sinkhorn(x, 0.05, 3, v, "data"), mesh=mesh,
                             in_specs=(P("data"), P("data")), out_specs=P("data")))
  q8 = np.asarray(fn(s, valid))
  np.testing.assert_allclose(q8[valid], sinkhorn_reference(s[valid], 0.05, 3), rtol=1e-4, atol=1e-7)
  assert np.all(q8[~valid] == 0)


def test_swapped_prediction_matches_float64():
  rng = np.random.default_rng(2)
  scores = np.stack([_unit_scores(rng, 8, 10) for _ in range(4)])   # 2 global + 2 local crops
  codes = np.stack([sinkhorn_reference(scores[i], 0.05, 3) for i in range(2)])
  got = swav.swapped_prediction(jnp.asarray(scores), jnp.asarray(codes, jnp.float32), 0.1)
  np.testing.assert_allclose(float(got), swapped_reference(scores, codes, 0.1), rtol=1e-5)


# ----------------------------------------------------------------------------- the method on the mesh


def _config(queue_length=0):
  c = explicit_method_config({"name": "swav", "proj_hidden": 32, "proj_dim": 16, "num_prototypes": 20,
                              "queue_length": queue_length, "queue_start_epoch": 0}, size=16)
  c.augment = ml_collections.ConfigDict({
      "global": group(size=16, views=2, scale=(0.5, 1.0), role="global"),
      "local": group(size=16, views=2, scale=(0.2, 0.5), role="local")})
  return c


def _views(c, n=32, seed=0):
  rng = np.random.default_rng(seed)
  return {"crops": (rng.normal(size=(2, n, 16, 16, 3)).astype(np.float32),
                    rng.normal(size=(2, n, 16, 16, 3)).astype(np.float32))}


def test_eight_devices_match_one_with_the_queue_and_prototypes_stay_unit_norm():
  """Each step from the same params and state (a 1-ulp change of the params already moves this tiny net's next
  gradient by 1e-2, so trajectories are compared step by step, not after several steps)."""
  c = _config(queue_length=64)
  views = [_views(c, seed=s) for s in range(3)]
  method = build_method(c, steps_per_epoch=1)
  params, state = jax.jit(method.init)(jax.random.key(0), views[0])
  steps = {n: make_method_step(build_method(c, steps_per_epoch=1, num_devices=n), state, views[0], n, sgd_lr=0.05)
           for n in (1, 8)}
  p, s, used = params, state, []
  for t in range(3):     # 32 rows a step into a 64-row queue: full after step 2, used at step 3
    one, eight = (steps[n](p, s, views[t], t) for n in (1, 8))
    np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
    assert_trees_close(eight.grads, one.grads, rtol=1e-4, atol=1e-5)
    assert_trees_close(eight.state_after_update, one.state_after_update, rtol=1e-5, atol=1e-5)   # unit vectors
    used.append(float(eight.metrics["queue_used"]))
    p, s = one.params, one.state_after_update
  assert used == [0.0, 0.0, 1.0]
  kernel = np.asarray(p["head"]["prototypes"]["kernel"])
  assert not np.allclose(kernel, np.asarray(params["head"]["prototypes"]["kernel"]), atol=1e-3)   # they moved
  np.testing.assert_allclose(np.linalg.norm(kernel, axis=0), 1.0, rtol=1e-5)


def test_a_full_queue_changes_the_codes_and_an_empty_one_does_not():
  c = _config(queue_length=64)
  views = _views(c)
  method = build_method(c, steps_per_epoch=1)
  params, state = jax.jit(method.init)(jax.random.key(0), views)
  no_queue = method_step(build_method(_config(0), steps_per_epoch=1), params, {"batch_stats": state["batch_stats"]},
                         views, 8)
  empty = method_step(method, params, state, views, 8)
  np.testing.assert_allclose(float(empty.loss), float(no_queue.loss), rtol=1e-6)
  rng = np.random.default_rng(5)
  past = rng.normal(size=state["queue"].shape).astype(np.float32)
  full = method_step(method, params, {**state, "queue": past, "filled": jnp.asarray(64, jnp.int32)}, views, 8)
  assert abs(float(full.loss) - float(empty.loss)) > 1e-3
  assert float(full.metrics["queue_used"]) == 1.0


def test_health_warns_when_the_loss_is_stuck_at_log_k_or_codes_collapse():
  method = build_method(_config(), steps_per_epoch=10)
  log_k = np.log(20)
  assert method.health({"loss": log_k, "train/code_entropy": log_k}, step=5) is None        # first two epochs
  assert method.health({"loss": 0.5 * log_k, "train/code_entropy": 0.9 * log_k}, step=50) is None
  assert "still at log K" in method.health({"loss": log_k, "train/code_entropy": log_k}, step=50)
  assert "few prototypes" in method.health({"loss": 0.5 * log_k, "train/code_entropy": 0.1}, step=50)
