"""SwAV: swapped prediction of cluster codes balanced over the global batch by Sinkhorn (Caron et al. 2020)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cl_jax import parallel
from cl_jax.losses.swav import code_entropy, sinkhorn, swapped_prediction
from cl_jax.methods import METHODS, memory_bank
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import crop_roles, embedding_std
from cl_jax.models import build_backbone
from cl_jax.models.encoder import MultiCropEncoder
from cl_jax.models.registry import bn_axis_name, model_section, parse_dtype
from cl_jax.models.swav_head import SwAVHead, normalize_prototypes
from cl_jax.schema import Field


@METHODS.register("swav")
class SwAV(Method):
  """SwAV (Caron et al. 2020, Sec. 3, official main_swav.py): codes of the global crops by Sinkhorn-Knopp over the
  global batch (and a queue of past projections once it is full), each crop predicting the other crops' codes.

  config.method: proj_hidden (2048), proj_dim (128), num_prototypes (3000), temperature (0.1), epsilon (0.05),
  sinkhorn_iters (3), queue_length (0: none; 3840 in the batch-256 recipe), queue_start_epoch (15). Crop groups
  declare role='global' (assigned codes and predicted) or 'local' (predict only). Freeze the prototypes for the
  first iterations with optim.frozen=('prototypes',), optim.frozen_steps (the official freeze_prototypes_niters).
  state = {"batch_stats"} and with a queue "queue" [queue_length, G * proj_dim] (rows split over devices), "ptr"
  and "filled" (rows written since queue_start_epoch).
  """

  SCHEMA = {"proj_hidden": Field(2048, low=1), "proj_dim": Field(128, low=1), "num_prototypes": Field(3000, low=1),
            "temperature": Field(0.1, low=0, open_low=True), "epsilon": Field(0.05, low=0, open_low=True),
            "sinkhorn_iters": Field(3, low=1), "queue_length": Field(0, low=0), "queue_start_epoch": Field(15, low=0)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    head = SwAVHead(proj_hidden=int(m.proj_hidden), proj_dim=int(m.proj_dim), num_prototypes=int(m.num_prototypes),
                    bn_axis_name=bn_axis_name(config.model), dtype=parse_dtype(model_section(config.model)["dtype"]))
    self.model = MultiCropEncoder(backbone=build_backbone(config.model), head=head)
    global_groups, local_groups = crop_roles(config.augment, "SwAV")
    self.crop_order, self.num_global_groups = global_groups + local_groups, len(global_groups)
    self.queue_length = int(m.queue_length)
    self.queue_start = int(m.queue_start_epoch) * self.steps_per_epoch
    if self.queue_length:
      memory_bank.check_rows("SwAV queue", self.queue_length, run_facts.num_devices,
                             "set method.queue_length to a multiple of the devices")

  def init(self, key: jax.Array, views: Views):
    crops = [views["crops"][i] for i in self.crop_order[:self.num_global_groups]]
    variables = self.model.init(key, (crops[0][0],), train=False)
    num_global = sum(c.shape[0] for c in crops)
    width = num_global * int(self.hp.proj_dim)
    state = {"batch_stats": variables.get("batch_stats", {})}
    if self.queue_length:   # (orbax stores no zero-size arrays, so no queue at all without one)
      state.update({"queue": jnp.zeros((self.queue_length, width), jnp.float32),
                    "ptr": jnp.zeros((), jnp.int32), "filled": jnp.zeros((), jnp.int32)})
    return normalize_prototypes(variables["params"]), state

  def state_sharding(self, state):
    return memory_bank.row_sharding(state, ("queue",))

  def project_params(self, params):
    """Prototypes back to unit norm after every update (official: w = normalize(w) before each forward)."""
    return normalize_prototypes(params)

  def loss(self, params, state, views, key, step):
    del key
    groups = tuple(views["crops"][i] for i in self.crop_order)
    num_global = sum(g.shape[0] for g in groups[:self.num_global_groups])
    if sum(g.shape[0] for g in groups) < 2:
      raise ValueError("SwAV needs at least 2 crops; set config.augment['global'].views=2.")
    b = groups[0].shape[1]
    flat = tuple(g.reshape((-1,) + g.shape[2:]) for g in groups)
    (feats, z, scores), updates = self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, flat,
                                                   train=True, mutable=["batch_stats"])
    m, axis = self.hp, parallel.DATA
    scores = scores.reshape(-1, b, scores.shape[-1])                           # [V, b, K], view-major
    z_global = jax.lax.stop_gradient(z[:num_global * b]).reshape(num_global, b, -1)
    prototypes = jax.lax.stop_gradient(params["head"]["prototypes"]["kernel"])  # [D, K]
    use_queue = state["filled"] >= self.queue_length if self.queue_length else jnp.zeros((), bool)
    queue = state["queue"] if self.queue_length else jnp.zeros((0, num_global * z_global.shape[-1]))
    codes = []
    for i in range(num_global):
      past = queue[:, i * z_global.shape[-1]:(i + 1) * z_global.shape[-1]] @ prototypes   # [Q/n, K]
      valid = jnp.concatenate([jnp.broadcast_to(use_queue, past.shape[:1]), jnp.ones((b,), bool)])
      q = sinkhorn(jnp.concatenate([past, scores[i]]), m.epsilon, int(m.sinkhorn_iters), valid, axis)
      codes.append(q[past.shape[0]:])
    codes = jnp.stack(codes)                                                   # [G, b, K]
    loss = swapped_prediction(scores, codes, m.temperature, axis)
    new_state = {**state, "batch_stats": parallel.pmean_varying(updates.get("batch_stats", {}))}
    if self.queue_length:
      new_state.update(self._push(state, z_global, step))
    metrics = {"code_entropy": code_entropy(codes, axis), "embedding_std": embedding_std(z[:b], axis),
               "queue_used": use_queue.astype(jnp.float32), "features": feats[:b]}
    return loss, (new_state, metrics)

  def _push(self, state, z_global, step):
    """Newest projections of the global crops into the queue from queue_start_epoch on (official: the queue is
    created at epoch_queue_starts and used once full)."""
    keys = jax.lax.all_gather(jnp.moveaxis(z_global, 0, 1).reshape(z_global.shape[1], -1), parallel.DATA,
                              tiled=True)                                      # [B, G*D]
    queue, ptr = memory_bank.enqueue(state["queue"], state["ptr"], keys, parallel.DATA)
    started = step >= self.queue_start
    return {"queue": jnp.where(started, queue, state["queue"]), "ptr": jnp.where(started, ptr, state["ptr"]),
            "filled": jnp.minimum(state["filled"] + started * keys.shape[0], self.queue_length)}

  def health(self, metrics, step):
    """Collapse (Sec. 3.1: the equipartition constraint is what prevents it): the loss at log K after two epochs
    means uniform predictions; a mean-code entropy far below log K means few prototypes take every sample."""
    log_k = float(np.log(int(self.hp.num_prototypes)))
    if step < 2 * self.steps_per_epoch:
      return None
    if metrics.get("loss", 0.0) > 0.99 * log_k:
      return (f"SwAV loss {metrics['loss']:.3f} is still at log K = {log_k:.3f}: the predictions are uniform "
              "(collapse); lower optim.lr or method.temperature, or check optim.frozen_steps.")
    if metrics.get("train/code_entropy", log_k) < 0.5 * log_k:
      return (f"SwAV codes use few prototypes (entropy {metrics['train/code_entropy']:.2f} of log K = {log_k:.2f});"
              " raise method.epsilon or sinkhorn_iters.")
    return None

  def encode(self, params, state, images):
    return self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, images, train=False,
                            method=MultiCropEncoder.features)
