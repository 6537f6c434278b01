"""One method step (loss, gradient, state after after_update) on a mesh, for 8-devices-vs-1 method tests."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cl_jax import parallel
from cl_jax.data import augment
from tests.tiny_runs import tiny_config


def config(method: dict, size: int = 16, views: int = 2):
  """The tiny quick-start config with `method` and `size`-px crops."""
  c = tiny_config()
  c.method = method
  c.augment["global"].size = size
  c.model.stem = "small"   # 16 px through resnet_tiny (total stride 16)
  c.augment["global"].views = views
  return c


def batch_views(c, n: int, seed: int = 0, num_train: int | None = None) -> dict:
  """Random images of n examples, their augmented views and dataset indices (a permutation of some rows)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 24, 24, 3), dtype=np.uint8)
  keys = augment.example_keys(jax.random.key(seed), jnp.arange(n))
  crops = jax.jit(lambda im, k: augment.make_views(im, k, c.augment))(images, keys)
  index = rng.permutation(num_train or n)[:n].astype(np.int32)
  return {"crops": tuple(np.asarray(x) for x in crops), "index": index, "label": np.zeros(n, np.int32)}


def run_step(method, params, state, views, mesh, step: int = 0, seed: int = 1):
  """jit(shard_map): (global loss, grads, metrics, state after loss + after_update) with the method's state specs."""
  state_specs = method.state_sharding(state)
  view_specs = {"crops": tuple(P(None, parallel.DATA) for _ in views["crops"]), "index": P(parallel.DATA),
                "label": P(parallel.DATA)}

  def per_device(params, state, views):
    key = jax.random.key(seed)
    step_ = jnp.asarray(step, jnp.int32)
    (loss, (new_state, metrics)), grads = jax.value_and_grad(
        lambda p: method.loss(p, state, views, key, step_), has_aux=True)(params)
    metrics.pop("features", None)
    new_state = method.after_update(params, new_state, step_)
    return loss, grads, parallel.pmean_varying(metrics), new_state

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), state_specs, view_specs),
                             out_specs=(P(), P(), P(), state_specs)))
  put = lambda tree, specs: jax.tree.map(lambda x, s: jax.device_put(x, NamedSharding(mesh, s)), tree,
                                         _expand(specs, tree), is_leaf=lambda x: isinstance(x, P))
  return fn(put(params, P()), put(state, state_specs), put(views, view_specs))


def _expand(specs, tree):
  if isinstance(specs, P):
    return jax.tree.map(lambda _: specs, tree)
  if isinstance(specs, dict):
    return {k: _expand(specs[k], tree[k]) for k in tree}
  return type(specs)(_expand(s, t) for s, t in zip(specs, tree))


def assert_trees_close(a, b, rtol=1e-5, atol=1e-6):
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=jax.tree_util.keystr(path))
