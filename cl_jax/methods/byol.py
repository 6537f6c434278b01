"""BYOL: online network with a predictor regresses an EMA target network's projection (Grill et al. 2020)."""
from __future__ import annotations

import jax
import ml_collections

from cl_jax import parallel
from cl_jax.losses.regression import byol_regression
from cl_jax.methods import METHODS
from cl_jax.schema import Field
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import bn_axis, cosine_momentum, ema_init, ema_step, embedding_std, momentum_field, two_views
from cl_jax.models import build_backbone
from cl_jax.models.encoder import Encoder
from cl_jax.models.heads import MLP


def byol_mlp(hidden: int, out: int, bn_axis_name: str | None) -> MLP:
  """BYOL's projector and predictor (Grill et al. 2020, Sec. 3.3): Linear(hidden)-BN-ReLU-Linear(out), the output
  Linear without a bias as the official code (deepmind/byol byol/utils/networks.py MLP: linear2 with_bias=False;
  its first Linear's bias is cancelled by the BN that follows, so it is left out here)."""
  return MLP((hidden,), out, use_bn=True, last_bn=False, bn_axis_name=bn_axis_name, out_bias=False)


@METHODS.register("byol")
class BYOL(Method):
  """BYOL (Grill et al. 2020, Sec. 3.1, Eq. 1-2): symmetric 2 - 2cos loss, target <- EMA of the online encoder.

  params = {"encoder": backbone + projector, "predictor"}; state = {"batch_stats": online BN statistics,
  "ema": {"params", "batch_stats"}} (the target network, replicated; one key so it can be sharded as a whole).
  """

  name = "BYOL"

  SCHEMA = {"base_momentum": momentum_field(0.996), "proj_hidden": Field(4096, low=1),
            "proj_dim": Field(256, low=1), "pred_hidden": Field(4096, low=1)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    axis = bn_axis(config)
    self.base_momentum = float(m["base_momentum"])
    self.encoder = Encoder(backbone=build_backbone(config.model),
                           head=byol_mlp(m["proj_hidden"], m["proj_dim"], axis))
    self.predictor = byol_mlp(m["pred_hidden"], m["proj_dim"], axis)

  def init(self, key: jax.Array, views: Views):
    x = views["crops"][0][0]
    k_enc, k_pred = jax.random.split(key)
    # The barrier materialises the initial values once, so the online and target copies are bit-identical
    # (otherwise XLA may recompute each output with a different rounding).
    enc = jax.lax.optimization_barrier(self.encoder.init(k_enc, x, train=False))
    _, z = self.encoder.apply(enc, x, train=False)
    pred = self.predictor.init(k_pred, z, train=False)
    params = {"encoder": enc["params"], "predictor": pred["params"]}
    enc_stats = enc.get("batch_stats", {})
    state = {"batch_stats": {"encoder": enc_stats, "predictor": pred.get("batch_stats", {})},
             # The target starts as a copy of the online encoder (BYOL Sec. 3.3 / official code).
             "ema": ema_init(enc["params"], enc_stats)}
    return params, state

  def _online(self, params, stats, x):
    """(features, projection, prediction, new stats) of the online network in training mode."""
    (h, z), enc_upd = self.encoder.apply({"params": params["encoder"], "batch_stats": stats["encoder"]}, x,
                                         train=True, mutable=["batch_stats"])
    p, pred_upd = self.predictor.apply({"params": params["predictor"], "batch_stats": stats["predictor"]}, z,
                                       train=True, mutable=["batch_stats"])
    return h, z, p, {"encoder": enc_upd["batch_stats"], "predictor": pred_upd["batch_stats"]}

  def _target(self, target, x):
    """(projection, new stats) of the target network: training-mode BN, no gradient."""
    (_, z), upd = self.encoder.apply(target, x, train=True, mutable=["batch_stats"])
    return jax.lax.stop_gradient(z), upd["batch_stats"]

  def loss(self, params, state, views, key, step):
    del key
    crops = two_views(views, self.name)
    # Each view is its own forward pass (own BN batch statistics), as the official code.
    h1, z1, p1, stats = self._online(params, state["batch_stats"], crops[0])
    _, _, p2, stats = self._online(params, stats, crops[1])
    target = state["ema"]
    t1, t_stats = self._target(target, crops[0])
    t2, t_stats = self._target({"params": target["params"], "batch_stats": t_stats}, crops[1])
    loss = (byol_regression(p1, t2, parallel.DATA) + byol_regression(p2, t1, parallel.DATA))
    metrics = {"embedding_std": embedding_std(z1, parallel.DATA), "features": h1,
               "ema_momentum": cosine_momentum(self.base_momentum, step, self.total_steps)}
    new_state = {"batch_stats": parallel.pmean_varying(stats),
                 "ema": {"params": target["params"], "batch_stats": parallel.pmean_varying(t_stats)}}
    return loss, (new_state, metrics)

  def after_update(self, params, state, step):
    """xi <- tau xi + (1 - tau) theta with tau cosine from base_momentum to 1 (BYOL Sec. 3.1, Eq. 1)."""
    tau = cosine_momentum(self.base_momentum, step, self.total_steps)
    return {**state, "ema": ema_step(state["ema"], params["encoder"], tau)}

  def encode(self, params, state, images):
    return self.encoder.apply({"params": params["encoder"], "batch_stats": state["batch_stats"]["encoder"]},
                              images, train=False, method=Encoder.features)
