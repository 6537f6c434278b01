"""What the loop and the evaluators share: the built `Run` and the `TrainState` pytree (neither imports the other)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import ml_collections
import optax
from jax.sharding import Mesh

if TYPE_CHECKING:
  from cl_jax.methods import Method

TrainState = dict[str, Any]   # {"step", "params", "opt_state", "method_state"[, "probe"]}


@dataclasses.dataclass
class Run:
  """Everything built from a config, importable from a notebook."""
  config: ml_collections.ConfigDict
  mesh: Mesh
  method: Method
  tx: optax.GradientTransformation
  schedule: optax.Schedule
  train_source: Any
  test_source: Any
  local_batch: int
  steps_per_epoch: int
  total_steps: int
  sections: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)   # validated model/optim/data/eval
  _sample: Any = None   # (first examples, their views), computed once for init and the view grid
  cache: dict[str, Any] = dataclasses.field(default_factory=dict)   # jitted eval functions, compiled once per run
