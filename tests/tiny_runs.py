"""Tiny quick-start configs shared by the loop and lifecycle tests."""
from configs import quickstart


def tiny_config(**overrides):
  """quickstart:runlocal shrunk further; `overrides` are dotted keys, e.g. **{"model.name": "resnet18"}."""
  c = quickstart.get_config("runlocal")
  c.data.num_train, c.data.num_test = 256, 128
  c.batch_size, c.eval.batch_size = 32, 64
  for k, v in overrides.items():
    *parents, last = k.split(".")
    target = c
    for p in parents:
      target = target[p]
    target[last] = v
  return c


def build_method(config, total_steps=1, steps_per_epoch=1, num_train=0, num_devices=None):
  """`get_method` with explicit run facts (there are no defaults); the mesh size defaults to every device."""
  import jax  # pylint: disable=g-import-not-at-top
  from cl_jax.methods import RunFacts, get_method  # pylint: disable=g-import-not-at-top
  return get_method(config, RunFacts(total_steps=total_steps, steps_per_epoch=steps_per_epoch, num_train=num_train,
                                     num_devices=num_devices or jax.device_count()))
