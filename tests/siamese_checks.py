"""Shared checks for the siamese methods (BYOL, SimSiam, MoCo v3): one method step on 8 devices vs 1, tiny runs."""
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from cl_jax import parallel, train
from cl_jax.data import pipeline
from tests.tiny_runs import build_method
from configs import quickstart

SGD_LR = 0.1


def tiny_method_config(method: str, **overrides):
  """The quick start's settings for `method`, shrunk to a tiny run (32 px, batch 16); dotted-key overrides."""
  c = quickstart.get_config(f"method={method},runlocal")
  c.data.num_train, c.data.num_test = 128, 64
  c.batch_size, c.eval.batch_size = 16, 32
  for k, v in overrides.items():
    *parents, last = k.split(".")
    target = c
    for p in parents:
      target = target[p]
    target[last] = v
  return c


def method_step(method, params, state, crops, step, num_devices):
  """(loss, grads, state after loss, state after an SGD step + after_update, metrics) on `num_devices`.

  The loss, its gradient wrt the replicated params and the state updates are computed per device inside
  shard_map, exactly as the training loop does; the update is plain SGD so the check isolates the method.
  """
  mesh = parallel.make_mesh(num_devices)

  def per_device(params, state, crops, step):
    views = {"crops": (crops,)}
    (loss, (new_state, metrics)), grads = jax.value_and_grad(
        lambda p: method.loss(p, state, views, jax.random.key(0), step), has_aux=True)(params)
    metrics.pop("features")
    new_params = jax.tree.map(lambda p, g: p - SGD_LR * g, params, grads)
    after = method.after_update(new_params, new_state, step)
    return loss, grads, new_state, after, parallel.pmean_varying(metrics)

  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=(P(), P(), P(None, parallel.DATA), P()),
                             out_specs=P()))
  rep = parallel.replicated(mesh)
  return jax.device_get(fn(jax.device_put(params, rep), jax.device_put(state, rep),
                           jax.device_put(crops, jax.sharding.NamedSharding(mesh, P(None, parallel.DATA))),
                           jax.device_put(jnp.asarray(step, jnp.int32), rep)))


def init_method(config, total_steps=10, seed=0):
  """The method, its (params, state) and a fixed [2, B, 32, 32, 3] batch of views (no augmentation)."""
  method = build_method(config, total_steps=total_steps)
  rng = np.random.default_rng(seed)
  crops = rng.normal(size=(2, config.batch_size, 32, 32, 3)).astype(np.float32)
  params, state = jax.jit(method.init)(jax.random.key(seed), {"crops": (crops,)})
  return method, params, state, crops


def assert_trees_close(a, b, rtol, atol):
  flat_a, tree_a = jax.tree.flatten(a)
  flat_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(flat_a, flat_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def tiny_run(config, steps):
  """Metrics of `steps` training-loop steps (real augmentation, optimizer) on all 8 devices, the initial params
  (host copies) and the final train state."""
  run = train.build_run(config)
  state, specs = train.init_state(run)
  init_params = jax.device_get(state["params"])
  step_fn = train.make_train_step(run, specs)
  it = iter(pipeline.make_loader(run.train_source, global_batch=config.batch_size, seed=config.seed,
                                 shuffle=True, num_epochs=None))
  history = []
  for _ in range(steps):
    state, metrics = step_fn(state, parallel.host_to_global(next(it), run.mesh))
    history.append(jax.tree.map(float, jax.device_get(metrics)))
  return history, init_params, state
