"""The one BatchNorm (cl_jax.models.norm): its batch statistics, synchronised over 8 fake devices or on one, equal
a float64 two-pass reference on inputs where E[x^2] - E[x]^2 (flax's fast variance) loses every float32 digit."""
import jax
import jax.numpy as jnp
import numpy as np
from flax import linen as nn
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.models.norm import batch_norm


class _Norm(nn.Module):
  axis_name: str | None

  @nn.compact
  def __call__(self, x):
    return batch_norm(True, self.axis_name)(name="bn")(x)


def _stats(x: np.ndarray, num_devices: int):
  """(normalised output, batch mean, batch var) of one train-mode BatchNorm, sync over `num_devices`."""
  model = _Norm("data")
  variables = model.init(jax.random.key(0), x[:1])
  mesh = parallel.make_mesh(num_devices)

  def per_device(x):
    y, updates = model.apply(variables, x, mutable=["batch_stats"])
    return y, updates["batch_stats"]["bn"]
  y, stats = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P("data"), out_specs=(P("data"), P())))(x)
  # running = 0.9 * init + 0.1 * batch statistic (init mean 0, var 1)
  return np.asarray(y), (np.asarray(stats["mean"]) / 0.1), (np.asarray(stats["var"]) - 0.9) / 0.1


def test_sync_batch_norm_matches_float64_on_large_means_and_small_variances():
  rng = np.random.default_rng(0)
  # A flat background (mean 300) with a faint texture (std 0.02): the regime of the embedded shapes' early layers.
  x = (300.0 + 0.02 * rng.normal(size=(64, 6))).astype(np.float32)
  x64 = x.astype(np.float64)
  mean64, var64 = x64.mean(0), ((x64 - x64.mean(0)) ** 2).mean(0)
  y64 = (x64 - mean64) / np.sqrt(var64 + 1e-5)
  outs = {n: _stats(x, n) for n in (1, 8)}
  for n, (y, mean, var) in outs.items():
    np.testing.assert_allclose(mean, mean64, rtol=1e-6, err_msg=f"{n} device(s)")
    # The fast variance gives errors of order eps32 * 300^2 ~ 1e-2 here, 25x the variance itself (4e-4).
    np.testing.assert_allclose(var, var64, rtol=2e-3, err_msg=f"{n} device(s)")
    # The float32 mean rounds to a few ulps of 300 (3e-5 each), i.e. ~1.5e-3 std per ulp in the output.
    np.testing.assert_allclose(y, y64, rtol=0, atol=1e-2, err_msg=f"{n} device(s)")
  np.testing.assert_allclose(outs[8][0], outs[1][0], rtol=0, atol=1e-2)


def test_every_batch_norm_is_the_two_pass_one():
  """No module builds flax's nn.BatchNorm (fast variance by default) except through models.norm.batch_norm."""
  import pathlib
  root = pathlib.Path(__file__).resolve().parents[1] / "cl_jax"
  direct = [str(p.relative_to(root)) for p in root.rglob("*.py")   # peer_torch.py: the PyTorch reference side
            if p.name not in ("norm.py", "peer_torch.py") and "nn.BatchNorm" in p.read_text()]
  assert not direct, f"use cl_jax.models.norm.batch_norm instead of nn.BatchNorm in: {direct}"
