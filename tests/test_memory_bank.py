"""Row-sharded queue / memory bank: pushes and bank updates on 8 devices equal NumPy and 1 device; ~1/n bytes each."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.methods import memory_bank


def _on_mesh(fn, mesh, in_specs, out_specs, *args):
  put = lambda x, s: jax.device_put(x, jax.sharding.NamedSharding(mesh, s))
  mapped = jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs))
  return mapped(*(put(a, s) for a, s in zip(args, in_specs)))


@pytest.mark.parametrize("num_devices", [1, 8])
@pytest.mark.parametrize("ptr", [0, 48])
def test_enqueue_writes_global_rows_at_pointer(num_devices, ptr):
  rng = np.random.default_rng(0)
  queue, keys = rng.normal(size=(64, 4)).astype(np.float32), rng.normal(size=(16, 4)).astype(np.float32)
  fn = lambda q, p, k: memory_bank.enqueue(q, p, k, parallel.DATA)
  new, new_ptr = _on_mesh(fn, parallel.make_mesh(num_devices), (P("data"), P(), P()), (P("data"), P()),
                          queue, np.int32(ptr), keys)
  expected = queue.copy()
  expected[ptr:ptr + 16] = keys
  np.testing.assert_array_equal(np.asarray(new), expected)
  assert int(new_ptr) == (ptr + 16) % 64


@pytest.mark.parametrize("num_devices", [1, 8])
def test_momentum_update_matches_numpy(num_devices):
  rng = np.random.default_rng(1)
  bank, feats = rng.normal(size=(40, 4)).astype(np.float32), rng.normal(size=(8, 4)).astype(np.float32)
  idx = rng.permutation(40)[:8].astype(np.int32)
  fn = lambda b, i, f: memory_bank.momentum_update(b, i, f, 0.5, parallel.DATA)
  new = np.asarray(_on_mesh(fn, parallel.make_mesh(num_devices), (P("data"), P(), P()), P("data"),
                            bank, idx, feats))
  expected = bank.astype(np.float64).copy()
  v = 0.5 * expected[idx] + 0.5 * feats
  expected[idx] = v / np.linalg.norm(v, axis=1, keepdims=True)
  np.testing.assert_allclose(new, expected, rtol=1e-6, atol=1e-7)


def test_bank_rows_not_divisible_by_devices_is_one_line_error():
  with pytest.raises(ValueError, match="InstDisc memory bank of 10 rows is not divisible by the 8 devices"):
    memory_bank.check_rows("InstDisc memory bank", 10, 8, "set method.bank_size to a multiple of the devices")


def test_state_memory_report_bytes_fall_as_one_over_n():
  """Per-device argument bytes of a 65,536 x 128 queue (32 MiB) from the compiled memory analysis."""
  state = {"queue": jnp.zeros((65536, 128), jnp.float32), "ptr": jnp.zeros((), jnp.int32)}
  specs = {"queue": P(parallel.DATA), "ptr": P()}
  figures = {n: memory_bank.state_memory_report(state, specs, parallel.make_mesh(n)) for n in (1, 2, 8)}
  logical = figures[1]["logical_bytes"]
  assert logical == 65536 * 128 * 4 + 4
  for n, f in figures.items():
    print(f"{n} device(s): {f['argument_bytes']} argument bytes per device ({logical} logical)")
    assert f["argument_bytes"] == pytest.approx(logical / n, rel=0.01)
  replicated = memory_bank.state_memory_report(state, P(), parallel.make_mesh(8))
  assert replicated["argument_bytes"] == pytest.approx(logical, rel=0.01)
