"""MoCo v1 and v2: momentum key encoder, a queue of negative keys split by rows over devices, Shuffle BN."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import parallel
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.losses.queue import queue_info_nce
from cl_jax.methods import METHODS, memory_bank
from cl_jax.schema import Field
from cl_jax.methods.base import RunFacts, Views
from cl_jax.methods.common import KeyEncoderMethod, embedding_std, momentum_field
from cl_jax.methods.shuffle_bn import shuffled_apply
from cl_jax.models import build_backbone
from cl_jax.models.encoder import Encoder
from cl_jax.models.heads import MLP

_QUEUE_KEYS = ("queue",)


class _MoCo(KeyEncoderMethod):
  """MoCo (He et al. 2020, Alg. 1): query encoder f_q trained by InfoNCE against keys from a momentum encoder f_k
  (theta_k <- m theta_k + (1 - m) theta_q after each update) and a FIFO queue of the last K keys.

  state = {"batch_stats": query BN statistics, "ema": {"params", "batch_stats"} (the key encoder f_k), "queue",
  "ptr"}.
  """

  version: int = 1

  SCHEMA = {"temperature": Field(0.07, low=0, open_low=True), "momentum": momentum_field(0.999),
            "queue_size": Field(65536, low=1), "proj_dim": Field(128, low=1), "proj_hidden": Field(2048, low=1),
            "shuffle_bn": Field(True, choices=(True, False)), "bn_splits": Field(1, low=1)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    self.temperature = float(m.temperature)
    self.momentum = float(m["momentum"])
    self.queue_size = int(m["queue_size"])
    self.dim = int(m["proj_dim"])
    self.shuffle_bn = bool(m["shuffle_bn"])
    self.bn_splits = int(m["bn_splits"])
    if self.version == 1:
      head = MLP((), self.dim)                                    # v1: linear fc to 128-d (Sec. 3.3)
    else:
      head = MLP((int(m["proj_hidden"]),), self.dim)    # v2: 2048-d hidden layer + ReLU (Sec. 2)
    self.model = Encoder(backbone=build_backbone(config.model), head=head)

  def init(self, key: jax.Array, views: Views):
    return self.init_with_queue(key, views, self.queue_size, self.dim)

  def state_sharding(self, state):
    return memory_bank.row_sharding(state, _QUEUE_KEYS)

  def loss(self, params, state, views, key, step):
    crops = views["crops"][0]
    if crops.shape[0] != 2:
      raise ValueError(f"MoCo takes 2 views per image (query, key), got {crops.shape[0]}; "
                       "set --config.augment['global'].views=2.")
    axis = parallel.DATA
    memory_bank.check_queue("MoCo", self.queue_size, crops.shape[1], axis)
    (h, q), stats = self._split_apply({"params": params, "batch_stats": state["batch_stats"]}, crops[0])
    key_vars = state["ema"]

    def key_encoder(x):
      (_, k), k_stats = self._split_apply(key_vars, x)
      return k, k_stats

    if self.shuffle_bn:
      k, key_stats = shuffled_apply(key_encoder, crops[1], jax.random.fold_in(key, 0), axis)
    else:
      k, key_stats = key_encoder(crops[1])
    k = jax.lax.stop_gradient(l2_normalize(k))
    loss, metrics = queue_info_nce(q, k, state["queue"], self.temperature, axis_name=axis)
    queue, ptr = memory_bank.enqueue(state["queue"], state["ptr"], jax.lax.all_gather(k, axis, tiled=True), axis)
    metrics["embedding_std"] = embedding_std(q, axis)
    metrics["features"] = h
    new_state = {**state, "batch_stats": parallel.pmean_varying(stats),
                 "ema": {"params": key_vars["params"],
                         "batch_stats": parallel.pmean_varying(jax.lax.stop_gradient(key_stats))},
                 "queue": queue, "ptr": ptr}
    return loss, (new_state, metrics)

  def _split_apply(self, variables, x):
    """Encoder forward in train mode; with bn_splits = S, BN statistics per group of b/S rows (the official MoCo
    CIFAR demo's SplitBatchNorm, emulating S devices' per-device BN on one); returns ((h, z), new batch_stats)."""
    s = self.bn_splits
    if s == 1:
      out, updates = self.model.apply(variables, x, train=True, mutable=["batch_stats"])
      return out, updates["batch_stats"]
    if x.shape[0] % s:
      raise ValueError(f"MoCo bn_splits {s} does not divide the per-device batch {x.shape[0]}; "
                       "set method.bn_splits to a divisor of it.")
    groups = x.reshape((s, x.shape[0] // s) + x.shape[1:])
    out, updates = jax.vmap(lambda g: self.model.apply(variables, g, train=True, mutable=["batch_stats"]))(groups)
    out = jax.tree.map(lambda y: y.reshape((x.shape[0],) + y.shape[2:]), out)
    return out, jax.tree.map(lambda v: jnp.mean(v, axis=0), updates["batch_stats"])


@METHODS.register("moco_v1")
class MoCoV1(_MoCo):
  """MoCo v1 (He et al. 2020): linear 128-d head, temperature 0.07, K = 65,536, m = 0.999, Shuffle BN."""
  version = 1


@METHODS.register("moco_v2")
class MoCoV2(_MoCo):
  """MoCo v2 (Chen et al. 2020, 'Improved Baselines', Sec. 2): MLP head (2048 hidden), temperature 0.2."""
  version = 2
