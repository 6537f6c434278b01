"""MaskCon: MoCo whose queue keeps each key's coarse label, and soft targets masked by it (coarse-labelled data)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import parallel
from cl_jax.data.augment import view_groups
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.losses.maskcon import maskcon_loss
from cl_jax.methods import METHODS, memory_bank
from cl_jax.methods.base import RunFacts, Views
from cl_jax.methods.common import KeyEncoderMethod, embedding_std, momentum_field
from cl_jax.models import build_backbone
from cl_jax.models.encoder import Encoder
from cl_jax.models.heads import MLP
from cl_jax.schema import Field

_QUEUE_KEYS = ("queue", "queue_labels")


@METHODS.register("maskcon")
class MaskCon(KeyEncoderMethod):
  """MaskCon (Feng & Patras, CVPR 2023; official MrChenFeng/MaskCon_CVPR2023 models/model.py class MaskCon,
  mode 'maskcon'): a query encoder trained against a momentum key encoder and a FIFO queue of keys with their
  coarse labels; the target spreads weight w over the queue rows of the key's coarse class by their similarity
  to the key at T2 (cl_jax/losses/maskcon.py), the rest on the own key; cross-entropy at T1.

  config.method, the official main.py defaults (its CIFAR-100 run): temperature T1 (--t0 0.1), soft_temperature
  T2 (--t 0.05), w (--w 0.5: the weight of the masked soft target; w = 0 is MoCo's InfoNCE), momentum (--m 0.99),
  queue_size K (--K 8192), proj_dim (--dim 256), proj_hidden (512: ModelBase.projector Linear(d, 512)-ReLU-
  Linear(512, dim), no BN). The query encoder is what evaluation encodes (official retrieval(model.encoder_q)).

  Differences from the official code: it fine-tunes ImageNet-pretrained torchvision ResNets; here the backbone
  trains from scratch (the loop has no init_from). Its `initiate_memorybank` fills the queue with one pass of
  key-encoder keys and their labels before training; the loop has no such hook, so the queue starts as random
  unit keys labelled -1 (negatives, but outside every coarse class, so out of the soft targets) and holds only
  real keys after K / B steps. Its single-GPU batch shuffle changes no BN statistic, so the key encoder's BN runs
  over the whole (global) batch, as model.bn='sync' does; there is no Shuffle BN. Its unused coarse classifier
  head (`classifer`, trained only in mode 'coins') is left out.

  Views: two crops of the first group (view 0 the query, view 1 the key), or, as the official weak key / strong
  query (--aug_k weak, --aug_q strong), two one-view groups named 'key' and 'query'. The batch's "label" is the
  coarse label (data.coarse_labels); a label < 0 has no coarse class (its target is its own key). Nothing else of
  the batch (fine_label) is read.

  state = {"batch_stats", "ema": {"params", "batch_stats"} (the key encoder), "queue" [K, D], "queue_labels" [K]
  (both split by rows over devices), "ptr"}.
  """

  SCHEMA = {"temperature": Field(0.1, low=0, open_low=True), "soft_temperature": Field(0.05, low=0, open_low=True),
            "w": Field(0.5, low=0, high=1), "momentum": momentum_field(0.99), "queue_size": Field(8192, low=1),
            "proj_dim": Field(256, low=1), "proj_hidden": Field(512, low=1)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    self.temperature, self.soft_temperature = float(m.temperature), float(m.soft_temperature)
    self.w, self.momentum = float(m.w), float(m.momentum)
    self.queue_size, self.dim = int(m.queue_size), int(m.proj_dim)
    self.model = Encoder(backbone=build_backbone(config.model), head=MLP((int(m.proj_hidden),), self.dim))
    names = [name for name, _ in view_groups(config.augment)] if "augment" in config else []
    self.key_query_groups = (names.index("query"), names.index("key")) if {"key", "query"} <= set(names) else None

  def _query_key(self, views: Views) -> tuple[jax.Array, jax.Array]:
    """The [b, H, W, C] query and key crops, or a one-line error naming the fix."""
    crops = views["crops"]
    if self.key_query_groups is not None:
      (q,), (k,) = (crops[i] for i in self.key_query_groups)   # each group holds one view
      return q, k
    if crops[0].shape[0] != 2:
      raise ValueError(f"MaskCon takes 2 views per image (query, key), got {crops[0].shape[0]}; "
                       "set --config.augment['global'].views=2.")
    return crops[0][0], crops[0][1]

  def init(self, key: jax.Array, views: Views):
    params, state = self.init_with_queue(key, views, self.queue_size, self.dim)
    # Labels -1 = no coarse class yet: the random keys are negatives but outside every soft target.
    return params, {**state, "queue_labels": jnp.full((self.queue_size,), -1, jnp.int32)}

  def state_sharding(self, state):
    return memory_bank.row_sharding(state, _QUEUE_KEYS)

  def loss(self, params, state, views, key, step):
    del key, step
    if "label" not in views:
      raise ValueError("MaskCon needs coarse labels: the batch has no 'label' field; use a labelled dataset "
                       "with --config.data.coarse_labels=shapes (or cifar100, or a mapping).")
    x_q, x_k = self._query_key(views)
    axis = parallel.DATA
    memory_bank.check_queue("MaskCon", self.queue_size, x_q.shape[0], axis)
    labels = views["label"].astype(jnp.int32)
    (h, q), stats = self._apply({"params": params, "batch_stats": state["batch_stats"]}, x_q)
    (_, k), key_stats = self._apply(state["ema"], x_k)
    k = jax.lax.stop_gradient(l2_normalize(k))
    loss, metrics = maskcon_loss(q, k, state["queue"], state["queue_labels"], labels, self.temperature,
                                 self.soft_temperature, self.w, axis_name=axis)
    # Official _dequeue_and_enqueue(k, coarse_label) after the loss: the global batch's keys and labels, in order.
    queue, ptr = memory_bank.enqueue(state["queue"], state["ptr"], jax.lax.all_gather(k, axis, tiled=True), axis)
    queue_labels, _ = memory_bank.enqueue(state["queue_labels"][:, None], state["ptr"],
                                          jax.lax.all_gather(labels, axis, tiled=True)[:, None], axis)
    metrics["embedding_std"] = embedding_std(q, axis)
    metrics["features"] = h
    new_state = {**state, "batch_stats": parallel.pmean_varying(stats),
                 "ema": {"params": state["ema"]["params"],
                         "batch_stats": parallel.pmean_varying(jax.lax.stop_gradient(key_stats))},
                 "queue": queue, "queue_labels": queue_labels[:, 0], "ptr": ptr}
    return loss, (new_state, metrics)

  def _apply(self, variables, x):
    """Encoder forward in train mode: ((backbone features, projection), new batch_stats)."""
    out, updates = self.model.apply(variables, x, train=True, mutable=["batch_stats"])
    return out, updates["batch_stats"]

