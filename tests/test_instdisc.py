"""InstDisc: NCE and full softmax vs float64 NumPy references, 8 devices vs 1 (value, gradient, bank, Z)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.losses.nce import instdisc_nce, instdisc_softmax
from tests.harness import assert_trees_close, batch_views, build_method, explicit_method_config, method_step

N, D, B, M, TAU = 64, 8, 16, 24, 0.07


def nce_reference(f, index, neg, bank, z, tau, n):
  """Wu et al. 2018 Eq. 5-8 per example in float64: P = exp(v.f/t)/Z, h = P/(P + m/n), -log h(pos) - sum log(1-h)."""
  f = f.astype(np.float64) / np.linalg.norm(f, axis=1, keepdims=True)
  bank = bank.astype(np.float64)
  m = neg.shape[1]
  scores = [[np.exp(bank[j] @ f[i] / tau) for j in [index[i], *neg[i]]] for i in range(len(f))]
  if z <= 0:
    z = n * np.mean(scores)
  total = 0.0
  for row in scores:
    p = np.array(row) / z
    total -= np.log(p[0] / (p[0] + m / n + 1e-7)) + np.sum(np.log((m / n) / (p[1:] + m / n + 1e-7)))
  return total / len(f), z


def softmax_reference(f, index, bank, tau):
  """Wu et al. 2018 Eq. 2 in float64: -log exp(v_i.f/t) / sum_j exp(v_j.f/t)."""
  f = f.astype(np.float64) / np.linalg.norm(f, axis=1, keepdims=True)
  logits = f @ bank.astype(np.float64).T / tau
  return np.mean(np.log(np.exp(logits).sum(1)) - logits[np.arange(len(f)), index])


@pytest.fixture(scope="module")
def data():
  rng = np.random.default_rng(0)
  bank = rng.normal(size=(N, D))
  bank = (bank / np.linalg.norm(bank, axis=1, keepdims=True)).astype(np.float32)
  return (rng.normal(size=(B, D)).astype(np.float32), rng.permutation(N)[:B].astype(np.int32),
          rng.integers(0, N, (B, M)).astype(np.int32), bank)


@pytest.mark.parametrize("z", [-1.0, 300.0])
@pytest.mark.parametrize("dense", [True, False])
def test_nce_matches_float64_reference(data, z, dense):
  f, index, neg, bank = data
  loss, z_used, _ = instdisc_nce(f, index, neg, bank, jnp.float32(z), TAU, N, dense=dense)
  ref, ref_z = nce_reference(f, index, neg, bank, z, TAU, N)
  np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
  np.testing.assert_allclose(float(z_used), ref_z, rtol=1e-5)


def test_softmax_matches_float64_reference(data):
  f, index, _, bank = data
  loss, _ = instdisc_softmax(f, index, bank, TAU)
  np.testing.assert_allclose(float(loss), softmax_reference(f, index, bank, TAU), rtol=1e-5)
  padded = np.concatenate([bank, np.ones((8, D), np.float32)])   # padding rows are left out
  loss_padded, _ = instdisc_softmax(f, index, padded, TAU, num_data=N)
  np.testing.assert_allclose(float(loss_padded), float(loss), rtol=1e-6)


@pytest.mark.parametrize("kind", ["nce_dense", "nce_gather", "softmax"])
def test_eight_devices_equal_one_value_and_gradient(data, kind):
  f, index, neg, bank = data

  def loss_fn(f, index, neg, bank, axis_name=None):
    if kind == "softmax":
      return instdisc_softmax(f, index, bank, TAU, axis_name=axis_name)[0]
    return instdisc_nce(f, index, neg, bank, jnp.float32(-1.0), TAU, N, axis_name=axis_name,
                        dense=kind == "nce_dense")[0]

  ref, ref_grad = jax.value_and_grad(loss_fn)(f, index, neg, bank)
  mesh = parallel.make_mesh()
  fn = jax.jit(jax.shard_map(lambda *a: jax.value_and_grad(loss_fn)(*a, axis_name=parallel.DATA), mesh=mesh,
                             in_specs=(P("data"),) * 4, out_specs=(P(), P("data"))))
  put = lambda x: jax.device_put(x, parallel.sharded(mesh))
  loss, grad = fn(put(f), put(index), put(neg), put(bank))
  np.testing.assert_allclose(float(loss), float(ref), rtol=1e-5)
  np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-4, atol=1e-6)


@pytest.fixture(scope="module")
def method_setup():
  c = explicit_method_config(dict(name="instdisc", loss="nce", temperature=0.07, num_negatives=32, proj_dim=16,
                                  bank_size=64), views=1)
  method = build_method(c)
  views = batch_views(c, 16, num_train=64)
  params, state = jax.jit(method.init)(jax.random.key(0, impl="rbg"), views)
  return method, params, state, views, method_step(method, params, state, views, 1, seed=1)


def test_method_step_eight_devices_equal_one_loss_grads_bank(method_setup):
  method, params, state, views, one = method_setup
  eight = method_step(method, params, state, views, 8, seed=1)
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-5)
  assert_trees_close(eight.grads, one.grads, rtol=1e-3, atol=1e-5)
  assert_trees_close(eight.state_after_update, one.state_after_update, rtol=1e-4, atol=1e-6)


def test_method_step_updates_visited_bank_rows_and_fixes_z(method_setup):
  method, params, state, views, one = method_setup
  loss, new = one.loss, one.state_after_update
  assert np.isfinite(float(loss)) and float(new["z"]) > 0
  bank, old = np.asarray(new["bank"]), np.asarray(state["bank"])
  visited = np.zeros(len(bank), bool)
  visited[views["index"]] = True
  np.testing.assert_array_equal(bank[~visited], old[~visited])
  np.testing.assert_allclose(np.linalg.norm(bank[visited], axis=1), 1.0, rtol=1e-5)
  again = method_step(method, params, new, views, 1, step=1, seed=1)
  assert float(again.state_after_update["z"]) == float(new["z"])   # Z is estimated once, then fixed
  assert np.isfinite(float(again.loss))


def test_missing_bank_size_is_one_line_error():
  c = explicit_method_config(dict(name="instdisc"), views=1)
  del c.data["num_train"]
  with pytest.raises(ValueError, match="set method.bank_size"):
    build_method(c).num_data   # pylint: disable=expression-not-assigned
  assert build_method(c, num_train=77).num_data == 77   # the loop passes the training split's size
  with c.unlocked():
    c.method.bank_size = 50
  assert build_method(c, num_train=77).num_data == 50   # an explicit bank size wins
