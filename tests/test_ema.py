"""The shared EMA copy (cl_jax.methods.common) against its defining formulas, and its one name in every method."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax.methods.common import cosine_momentum, ema_init, ema_step, ema_update
from tests.harness import batch_views, build_method, explicit_method_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_cosine_momentum_goes_from_base_to_one():
  values = [float(cosine_momentum(0.996, s, 100)) for s in (0, 50, 100, 150)]
  np.testing.assert_allclose(values, [0.996, 0.998, 1.0, 1.0], rtol=1e-6)


def test_ema_update_is_the_convex_combination():
  target, online = {"w": jnp.array([1.0, 2.0])}, {"w": jnp.array([3.0, -2.0])}
  out = ema_update(target, online, 0.9)
  np.testing.assert_allclose(np.asarray(out["w"]), [0.9 * 1 + 0.1 * 3, 0.9 * 2 - 0.1 * 2], rtol=1e-6)


def test_ema_copy_starts_equal_and_only_its_params_move():
  params, stats = {"w": jnp.array([1.0, 2.0])}, {"mean": jnp.array([0.5])}
  ema = ema_init(params, stats)
  assert set(ema) == {"params", "batch_stats"}
  np.testing.assert_array_equal(np.asarray(ema["params"]["w"]), [1.0, 2.0])
  after = ema_step(ema, {"w": jnp.array([3.0, 0.0])}, 0.75)
  np.testing.assert_allclose(np.asarray(after["params"]["w"]), [1.5, 1.5], rtol=1e-6)
  assert after["batch_stats"] is ema["batch_stats"]


def test_only_common_defines_an_ema_update():
  hits = []
  for dirpath, _, files in os.walk(os.path.join(ROOT, "cl_jax")):
    for f in files:
      if f.endswith(".py") and "incremental_update" in open(os.path.join(dirpath, f)).read():
        hits.append(os.path.relpath(os.path.join(dirpath, f), ROOT))
  assert hits == [os.path.join("cl_jax", "methods", "common.py")], hits


@pytest.mark.parametrize("method", [dict(name="moco_v2", queue_size=64, proj_hidden=16, proj_dim=8),
                                    dict(name="byol", proj_hidden=16, proj_dim=8, pred_hidden=16),
                                    dict(name="moco_v3", dim=8, mlp_dim=16),
                                    dict(name="dino", out_dim=16, hidden_dim=16, bottleneck_dim=8)])
def test_every_ema_method_keeps_its_copy_as_state_ema(method):
  c = explicit_method_config(method)
  if method["name"] == "dino":
    c.augment["global"].role = "global"   # the teacher's crops
  m = build_method(c, total_steps=10)
  views = batch_views(c, 8)
  params, state = jax.eval_shape(m.init, jax.random.key(0), views)
  assert set(state["ema"]) == {"params", "batch_stats"}
  online = params["encoder"] if "encoder" in params else params
  assert jax.tree.structure(state["ema"]["params"]) == jax.tree.structure(online)
  assert not {"target", "teacher", "key_params", "key_batch_stats"} & set(state)
