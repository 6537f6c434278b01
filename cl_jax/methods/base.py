"""The Method contract the training loop calls (see ARCHITECTURE.md, 'Contracts')."""
from __future__ import annotations

import abc
from typing import Any

import jax
import ml_collections
from jax.sharding import PartitionSpec as P

Params = Any
State = Any
Views = dict[str, Any]   # {"crops": (one [V, b, H, W, C] array per crop group), **other batch fields}
Metrics = dict[str, jax.Array]


class Method(abc.ABC):
  """A self-supervised method: models, loss and the state it carries, built from the config.

  `loss` runs per device inside shard_map over axis 'data' and must return the GLOBAL loss (replicated across
  'data', e.g. a psum/pmean of local terms): its gradient is then the exact gradient of the global-batch loss.
  """

  # Set by `get_method` from the run length, for step-dependent schedules (EMA momentum, temperatures), and
  # the training split's size (e.g. InstDisc's memory bank rows; 0 = not known).
  total_steps: int = 1
  steps_per_epoch: int = 1
  num_train: int = 0

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config

  @abc.abstractmethod
  def init(self, key: jax.Array, views: Views) -> tuple[Params, State]:
    """Parameters (trained) and state (everything else: batch statistics, targets, queues ...)."""

  @abc.abstractmethod
  def loss(self, params: Params, state: State, views: Views, key: jax.Array,
           step: jax.Array) -> tuple[jax.Array, tuple[State, Metrics]]:
    """Forward pass and loss on this device's views; returns (global loss, (new state, metrics))."""

  def after_update(self, params: Params, state: State, step: jax.Array) -> State:
    """Runs after the optimizer update (EMA targets, queue pushes); identity by default."""
    del params, step
    return state

  def state_sharding(self, state: State) -> Any:
    """PartitionSpecs for the state (a prefix pytree); replicated by default."""
    del state
    return P()

  @abc.abstractmethod
  def encode(self, params: Params, state: State, images: jax.Array) -> jax.Array:
    """Backbone features of preprocessed images, for evaluation (inference mode)."""
