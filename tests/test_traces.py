"""No registered method retraces the loop's jitted step: 3 steps of `train.make_train_step` trace `loss` once."""
import importlib
import pkgutil

import chex
import jax
import numpy as np
import pytest

from cl_jax import methods, parallel, train
from cl_jax.data import pipeline
from cl_jax.methods import METHODS
from configs import quickstart


def registered_methods() -> list[str]:
  """Every method registered by a module of cl_jax/methods/ (each module imported, so none is missed)."""
  for info in pkgutil.iter_modules(methods.__path__):
    importlib.import_module(f"cl_jax.methods.{info.name}")
  return [n for n in METHODS.names() if METHODS.get(n).__module__.startswith("cl_jax.methods.")]


@pytest.fixture(scope="module", autouse=True)
def fast_prng():
  """The rbg PRNG for this module: the init programs compile in about half the time of threefry's (keys only seed
  the run; what is counted is the tracing)."""
  old = jax.config.jax_default_prng_impl
  jax.config.update("jax_default_prng_impl", "rbg")
  yield
  jax.config.update("jax_default_prng_impl", old)


def tiny_method_config(name: str):
  """The method's quick-start settings, shrunk: 64 training images of 32 px, global batch 16 (2 per device), 3
  steps, and no optional augmentation (static probability 0 leaves the op out of the program)."""
  c = quickstart.get_config(f"method={name},runlocal")
  c.data.num_train, c.data.num_test = 64, 16
  c.batch_size, c.eval.batch_size, c.total_steps = 16, 16, 3
  for crops in c.augment.values():
    crops.flip_p, crops.jitter_p, crops.grayscale_p, crops.blur_p, crops.solarize_p = 0.0, 0.0, 0.0, (0.0,), (0.0,)
  if "bn_splits" in c.method:   # MoCo's one-device split BN: 2 examples per device cannot be split further
    c.method.bn_splits = 1
  return c


def run_steps(config, steps: int = 3):
  """Builds the run, wraps the method's per-step functions in chex.assert_max_traces(n=1) and takes `steps` steps."""
  chex.clear_trace_counter()   # the counter is keyed by source: inherited methods share one across tests
  run = train.build_run(config)
  state, specs = train.init_state(run)
  method = run.method
  method.loss = chex.assert_max_traces(method.loss, n=1)
  method.after_update = chex.assert_max_traces(method.after_update, n=1)
  step_fn = train.make_train_step(run, specs)
  it = iter(pipeline.make_loader(run.train_source, global_batch=config.batch_size, seed=config.seed, shuffle=True,
                                 num_epochs=None))
  losses = []
  for _ in range(steps):
    state, metrics = step_fn(state, parallel.host_to_global(next(it), run.mesh))
    losses.append(float(metrics["loss"]))
  return losses, step_fn


@pytest.mark.parametrize("name", registered_methods())
def test_the_training_step_traces_once(name):
  losses, step_fn = run_steps(tiny_method_config(name))
  assert np.all(np.isfinite(losses)), losses
  assert step_fn._cache_size() == 1, f"{name}: the jitted step compiled {step_fn._cache_size()} times in 3 steps"
