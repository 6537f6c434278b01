"""The one test harness: tiny configs, a method built with explicit run facts, one method step on a mesh of n fake
devices (8 vs 1 checks), tiny training runs, tree comparisons and one-line-error checks (in process and CLI)."""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from cl_jax import parallel, train
from cl_jax.data import augment, pipeline
from cl_jax.methods import RunFacts, get_method
from configs import quickstart

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- configs and methods


def override(c, overrides: dict):
  """Sets dotted keys in place, e.g. {"model.name": "resnet18", "augment.global.size": 16}; returns `c`."""
  for k, v in overrides.items():
    *parents, last = k.split(".")
    target = c
    for p in parents:
      target = target[p]
    target[last] = v
  return c


def tiny_config(**overrides):
  """quickstart:runlocal shrunk further; `overrides` are dotted keys, e.g. **{"model.name": "resnet18"}."""
  c = quickstart.get_config("runlocal")
  c.data.num_train, c.data.num_test = 256, 128
  c.batch_size, c.eval.batch_size = 32, 64
  return override(c, overrides)


def tiny_method_config(method: str, **overrides):
  """The quick start's settings for `method`, shrunk to a tiny run (32 px, batch 16); dotted-key overrides."""
  c = quickstart.get_config(f"method={method},runlocal")
  c.data.num_train, c.data.num_test = 128, 64
  c.batch_size, c.eval.batch_size = 16, 32
  return override(c, overrides)


def explicit_method_config(method: dict, size: int = 16, views: int = 2):
  """tiny_config with the method section `method` and `views` crops of `size` px through the small stem."""
  return tiny_config(**{"method": method, "augment.global.size": size, "model.stem": "small",
                        "augment.global.views": views})


def build_method(config, total_steps=1, steps_per_epoch=1, num_train=0, num_devices=None):
  """`get_method` with explicit run facts (there are no defaults); the mesh size defaults to every device."""
  return get_method(config, RunFacts(total_steps=total_steps, steps_per_epoch=steps_per_epoch, num_train=num_train,
                                     num_devices=num_devices or jax.device_count()))


def batch_views(c, n: int, seed: int = 0, num_train: int | None = None) -> dict:
  """Random images of n examples, their augmented views and dataset indices (a permutation of some rows)."""
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, (n, 24, 24, 3), dtype=np.uint8)
  keys = augment.example_keys(jax.random.key(seed), jnp.arange(n))
  crops = jax.jit(lambda im, k: augment.make_views(im, k, c.augment))(images, keys)
  index = rng.permutation(num_train or n)[:n].astype(np.int32)
  return {"crops": tuple(np.asarray(x) for x in crops), "index": index, "label": np.zeros(n, np.int32)}


def init_method(config, total_steps=10, seed=0):
  """The method, its (params, state) and a fixed [2, B, 32, 32, 3] batch of views (no augmentation)."""
  method = build_method(config, total_steps=total_steps)
  rng = np.random.default_rng(seed)
  crops = rng.normal(size=(2, config.batch_size, 32, 32, 3)).astype(np.float32)
  params, state = jax.jit(method.init)(jax.random.key(seed), {"crops": (crops,)})
  return method, params, state, crops


# ----------------------------------------------------------------------------- one method step on n devices


class StepOut(NamedTuple):
  """One method step: global loss, grads, averaged metrics, the state after loss and after after_update, and the
  params and optimizer state after the update (unchanged without one)."""
  loss: Any
  grads: Any
  metrics: Any
  state_after_loss: Any
  state_after_update: Any
  params: Any
  opt_state: Any


def views_specs(views: dict) -> dict:
  """Crops [V, B, ...] split on their batch axis; every other entry (index, label, tokens ...) on its first."""
  return {k: tuple(P(None, parallel.DATA) for _ in v) if k == "crops" else P(parallel.DATA)
          for k, v in views.items()}


def _update(params, grads, opt_state, sgd_lr, tx):
  """The optimizer step: `tx` (optax), else plain SGD at `sgd_lr`, else none."""
  if tx is not None:
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state
  if sgd_lr is not None:
    return jax.tree.map(lambda p, g: p - sgd_lr * g, params, grads), opt_state
  return params, opt_state


def make_method_step(method, state, views, num_devices: int | None = None, *, seed: int = 0,
                     sgd_lr: float | None = None, tx: optax.GradientTransformation | None = None) -> Callable:
  """jit(shard_map) of loss + grad + update + after_update on `num_devices` (default all), with the method's state
  specs and specs derived from `views`: (params, state, views, step=0, opt_state=None) -> StepOut."""
  mesh = parallel.make_mesh(num_devices)
  state_specs, v_specs = method.state_sharding(state), views_specs(views)

  def per_device(params, state, views, step, opt_state):
    (loss, (after_loss, metrics)), grads = jax.value_and_grad(
        lambda p: method.loss(p, state, views, jax.random.key(seed), step), has_aux=True)(params)
    metrics.pop("features", None)
    params, opt_state = _update(params, grads, opt_state, sgd_lr, tx)
    params = method.project_params(params) if (sgd_lr is not None or tx is not None) else params
    after = method.after_update(params, after_loss, step)
    return StepOut(loss, grads, parallel.pmean_varying(metrics), after_loss, after, params, opt_state)

  in_specs = (P(), state_specs, v_specs, P(), P())
  fn = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=in_specs,
                             out_specs=StepOut(P(), P(), P(), state_specs, state_specs, P(), P())))

  def run(params, state, views, step=0, opt_state=None):
    args = (params, state, views, jnp.asarray(step, jnp.int32), opt_state)
    return fn(*(_put(mesh, x, s) for x, s in zip(args, in_specs)))
  return run


def method_step(method, params, state, views, num_devices: int | None = None, *, step: int = 0, seed: int = 0,
                sgd_lr: float | None = None, tx=None, opt_state=None) -> StepOut:
  """One step of `make_method_step` (compiled for this call)."""
  return make_method_step(method, state, views, num_devices, seed=seed, sgd_lr=sgd_lr, tx=tx)(
      params, state, views, step, opt_state)


def adam_steps(method, params, state, views, steps: int, lr: float = 3e-3, num_devices: int = 8):
  """`steps` Adam steps on the same views (state kept fixed): (final params, the loss of each step)."""
  tx = optax.adam(lr)
  opt_state = tx.init(params)
  step = make_method_step(method, state, views, num_devices, tx=tx)
  losses = []
  for i in range(steps):
    out = step(params, state, views, i, opt_state)
    params, opt_state = out.params, out.opt_state
    losses.append(float(out.loss))
  return params, losses


def _put(mesh, tree, specs):
  """`tree` on `mesh`, laid out by the PartitionSpec prefix tree `specs`."""
  return jax.tree.map(lambda s, x: jax.device_put(x, NamedSharding(mesh, s)), specs, tree,
                      is_leaf=lambda s: isinstance(s, P))


# ----------------------------------------------------------------------------- tiny runs and comparisons


def tiny_run(config, steps):
  """Metrics of `steps` training-loop steps (real augmentation, optimizer) on all 8 devices, the initial params
  (host copies) and the final train state."""
  return train_steps(config, steps)[:3]


def train_steps(config, steps):
  """tiny_run's (metrics history, initial params, final state) and the loop's jitted step (to count compiles)."""
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
  return history, init_params, state, step_fn


def assert_trees_close(a, b, rtol, atol):
  """The same tree structure and every leaf close; a failure names the leaf's path."""
  tree_a, tree_b = jax.tree.structure(a), jax.tree.structure(b)
  assert tree_a == tree_b, f"tree structures differ:\n{tree_a}\n{tree_b}"
  for (path, x), y in zip(jax.tree_util.tree_leaves_with_path(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol,
                               err_msg=f"leaf {jax.tree_util.keystr(path)}")


# ----------------------------------------------------------------------------- one-line errors


def one_line_error(fn, *needles, error=ValueError) -> str:
  """`fn()` raises `error` whose message is one line containing every needle; returns the message."""
  with pytest.raises(error) as e:
    fn()
  msg = str(e.value)
  assert "\n" not in msg, msg
  for needle in needles:
    assert needle in msg, msg
  return msg


def run_python(*args, timeout=600) -> subprocess.CompletedProcess:
  """`python *args` in the repository root, without CL_JAX_DEBUG (which turns one-line errors into tracebacks)."""
  env = {k: v for k, v in os.environ.items() if k != "CL_JAX_DEBUG"}
  return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def cli_one_line(*args, workdir=None, module="cl_jax.main", status=2) -> str:
  """`python -m module *args` (and --workdir=workdir) exits `status` with one stderr line "error: ..."; returns it.

  With `workdir`, also checks that nothing was checkpointed there.
  """
  out = run_python("-m", module, *args, *([f"--workdir={workdir}"] if workdir is not None else []))
  lines = out.stderr.strip().splitlines()
  assert out.returncode == status, out.stderr[-2000:]
  assert len(lines) == 1 and lines[0].startswith("error: "), out.stderr[-2000:]
  assert "Traceback" not in out.stderr
  if workdir is not None:
    assert not os.path.exists(os.path.join(workdir, "checkpoints"))
  return lines[0]
