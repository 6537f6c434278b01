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
