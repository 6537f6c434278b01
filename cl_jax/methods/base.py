"""The Method contract: the only calls the ONE training loop (cl_jax/train.py) and evaluation make into a method.

A method is a file under cl_jax/methods/ registered by name in methods/__init__.py, built as
`Method(config, run_facts)`. It imports base, common (shared pieces: view checks, BN axis, the EMA copy,
embedding_std), language_image (the two-tower helpers), memory_bank, shuffle_bn, losses/ and models/, never
another method file (tests/test_layout.py checks it). The loop calls, in order:

  init(key, views)                        once, on the first batch's views (shapes only matter)
  state_sharding(state)                   once, how the state is laid out over the mesh
  loss(params, state, views, key, step)   per device inside shard_map over 'data', under jax.grad
  project_params(params)                  per device, on the updated params (a constraint: unit-norm prototypes)
  after_update(params, state, step)       per device, after the optimizer update
  encode(params, state, images)           evaluation (kNN monitor, linear probe, plots), inference mode
  health(metrics, step)                   host side at each log step: a warning line, or None
  epoch_start(state, split, epoch)        host side, before each epoch's first step, for EPOCH_START methods

Where state changes: queue pushes, memory-bank rows and DINO's centre are written in `loss` (they need this
step's keys/outputs; the new state is returned beside the metrics and carries no gradient); the EMA copy of the
online network (MoCo's key encoder, BYOL's target, DINO's teacher) is always `state["ema"] = {"params",
"batch_stats"}` (common.ema_init) and its params move in `after_update` (common.ema_step: they need the updated
params). Everything `loss` gathers over 'data' it gathers itself; the loop adds no pmean to the gradient.

Metrics: `loss` returns scalars (the loop averages them over devices and logs them as train/<name>) plus the
reserved key `"features"` (backbone features of the first view, [b, d]), which the loop pops, feeds to the online
linear probe (config.online_probe) and never logs. `embedding_std` (common.embedding_std) is the collapse
metric every method reports.

Optional: `knn_also = {suffix: method name}` asks the kNN monitor for a second figure from another network
(DINO's student next to its teacher: eval/knn_top1_student).

Epoch-start pass (TCL's noise detection, DCCL's concepts): a method with EPOCH_START = True gets, before the first
step of every epoch (step % steps_per_epoch == 0, step 0 included), one in-order pass over the whole training split
in inference mode (evaluation preprocessing, no augmentation): `epoch_outputs(params, state, images)` per device
(default: the backbone features), gathered to every host with each example's "label" (the training label: noisy,
coarse or -1, never the kept truth) and "index"; `epoch_start` turns them into the new method state on the host
(the same on every host), which the loop lays out by `state_sharding`. Its result is checkpointed with the state,
so a resume mid-epoch does not redo the pass and an interrupted run continues exactly.

Language-image methods (language_image.LanguageImageMethod) add `encode_text(params, state, tokens)`,
`encode_image_embedding(params, state, images)` (both L2-normalised, in the joint space) and a `tokenizer`;
zero-shot classification and retrieval use only those.
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from cl_jax.schema import Field, validate

Params = Any
State = Any
Views = dict[str, Any]   # {"crops": (one [V, b, H, W, C] array per crop group), **other batch fields}
Metrics = dict[str, jax.Array]


@dataclasses.dataclass(frozen=True)
class RunFacts:
  """What a method needs to know of the run, with no defaults: schedules (EMA momentum, teacher temperature) use
  the run length, memory banks the training split's size, padding the mesh size."""
  total_steps: int
  steps_per_epoch: int
  num_train: int
  num_devices: int

  def __post_init__(self):
    for name in ("total_steps", "steps_per_epoch", "num_devices"):
      if int(getattr(self, name)) < 1:
        raise ValueError(f"RunFacts.{name}={getattr(self, name)}: must be >= 1.")


class Method(abc.ABC):
  """A self-supervised method: models, loss and the state it carries, built from the config.

  `loss` runs per device inside shard_map over axis 'data' and must return the GLOBAL loss (replicated across
  'data', e.g. a psum/pmean of local terms): its gradient is then the exact gradient of the global-batch loss.
  """

  # The fields of `config.method` this method reads, with defaults and ranges; any other key fails at start-up
  # with one line naming the nearest known field. The validated section is `self.hp` (defaults filled in).
  SCHEMA: ClassVar[dict[str, Field]] = {}
  # Whether the loop runs the epoch-start pass (epoch_outputs over the training split, then epoch_start).
  EPOCH_START: ClassVar[bool] = False

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    if not isinstance(run_facts, RunFacts):
      raise TypeError(f"{type(self).__name__} needs run_facts=RunFacts(total_steps=..., steps_per_epoch=..., "
                      f"num_train=..., num_devices=...), got {run_facts!r}.")
    self.config = config
    self.run_facts = run_facts
    self.total_steps = int(run_facts.total_steps)
    self.steps_per_epoch = int(run_facts.steps_per_epoch)
    self.num_train = int(run_facts.num_train)
    self.hp = ml_collections.ConfigDict(validate("method", config.method, self.SCHEMA))

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

  def project_params(self, params: Params) -> Params:
    """Runs on the params right after each optimizer update (SwAV's unit-norm prototypes); identity by default."""
    return params

  def health(self, metrics: dict[str, float], step: int) -> str | None:
    """A warning for the log (host side, at each log step) when the logged metrics show a failure the loss value
    hides, e.g. SwAV's loss stuck at log K; None when healthy (the default)."""
    del metrics, step
    return None

  def epoch_outputs(self, params: Params, state: State, images: jax.Array) -> dict[str, jax.Array]:
    """Per device, inference mode: per-example outputs ([b, ...] each) of the epoch-start pass; by default the
    backbone features {"features": encode(...)}."""
    return {"features": self.encode(params, state, images)}

  def epoch_start(self, state: State, split: dict[str, np.ndarray], epoch: int) -> tuple[State, dict[str, float]]:
    """Host side, for EPOCH_START methods: (the new method state, metrics logged as epoch/<name>) from `split`, the
    epoch_outputs of the whole training split in index order plus its "label" and "index"; identity by default."""
    del split, epoch
    return state, {}

  def state_sharding(self, state: State) -> Any:
    """PartitionSpecs for the state (a prefix pytree); replicated by default."""
    del state
    return P()

  @abc.abstractmethod
  def encode(self, params: Params, state: State, images: jax.Array) -> jax.Array:
    """Backbone features of preprocessed images, for evaluation (inference mode)."""
