"""The shared EMA helpers against their defining formulas."""
import jax.numpy as jnp
import numpy as np

from cl_jax.methods.ema import cosine_momentum, ema_update


def test_cosine_momentum_goes_from_base_to_one():
  values = [float(cosine_momentum(0.996, s, 100)) for s in (0, 50, 100, 150)]
  np.testing.assert_allclose(values, [0.996, 0.998, 1.0, 1.0], rtol=1e-6)


def test_ema_update_is_the_convex_combination():
  target, online = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -2.0])}
  out = ema_update(target, online, 0.9)
  np.testing.assert_allclose(np.asarray(out["w"]), [0.9 * 1 + 0.1 * 3, 0.9 * 2 - 0.1 * 2], rtol=1e-6)
