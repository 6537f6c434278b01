"""MoCo v3: query encoder with a predictor against a momentum key encoder, keys from the global batch, no queue
(Chen, Xie, He 2021)."""
from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from cl_jax import parallel
from cl_jax.losses.infonce import moco_v3_ctr
from cl_jax.losses.ring import contrastive_impl
from cl_jax.methods import METHODS
from cl_jax.schema import Field
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import bn_axis, cosine_momentum, ema_init, ema_step, embedding_std, momentum_field, two_views
from cl_jax.models import build_backbone
from cl_jax.models.encoder import Encoder
from cl_jax.models.norm import batch_norm
from cl_jax.models.registry import model_section


class MoCoV3MLP(nn.Module):
  """MoCo v3's heads (Sec. 4, official `_build_mlp`): bias-free Linear layers, BN + ReLU after each hidden layer,
  and on the output a BN without affine parameters when `last_bn` (projector) or nothing (ResNet predictor)."""
  hidden_dims: Sequence[int]
  out_dim: int
  last_bn: bool = True
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train, self.bn_axis_name)
    x = x.astype(jnp.float32)
    for i, h in enumerate(self.hidden_dims):
      x = nn.relu(norm(name=f"bn{i + 1}")(nn.Dense(h, use_bias=False, name=f"dense{i + 1}")(x)))
    i = len(self.hidden_dims) + 1
    x = nn.Dense(self.out_dim, use_bias=False, name=f"dense{i}")(x)
    if self.last_bn:
      x = norm(use_bias=False, use_scale=False, name=f"bn{i}")(x)
    return x


@METHODS.register("moco_v3")
class MoCoV3(Method):
  """MoCo v3 (Chen, Xie, He 2021, Alg. 1): loss ctr(q1, k2) + ctr(q2, k1), momentum encoder <- EMA of the query
  encoder (backbone + projector) with momentum cosine from `base_momentum` (0.99) to 1.

  params = {"encoder": backbone + projector, "predictor"}; state = {"batch_stats": query-side BN statistics,
  "ema": {"params", "batch_stats"}} (the momentum encoder, replicated; one key so it can be sharded as a whole).
  Official defaults: ViT projector 3 layers, predictor with output BN; ResNet projector 2 layers, predictor without.
  """

  SCHEMA = {"temperature": Field(1.0, low=0, open_low=True), "base_momentum": momentum_field(0.99),
            "dim": Field(256, low=1), "mlp_dim": Field(4096, low=1), "proj_layers": Field(3, low=1),
            "pred_last_bn": Field(True, choices=(True, False))}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    axis = bn_axis(config)
    self.temperature = float(m["temperature"])
    self.base_momentum = float(m["base_momentum"])
    self.impl = contrastive_impl(config)   # config.parallel.contrastive_impl: gather | ring
    if self.temperature <= 0:
      raise ValueError(f"method.temperature={self.temperature} must be > 0; MoCo v3 uses 0.2 (ViT) or 1.0 (ResNet).")
    frozen = tuple(config.optim.get("frozen", None) or ())
    vit_frozen = model_section(config.model).get("frozen_patch_embed", False)   # a ViT field
    if vit_frozen and not any("patch_embed" in f for f in frozen):
      raise ValueError("model.frozen_patch_embed stops the patch projection's gradient but weight decay would still "
                       "shrink it; also set optim.frozen=('patch_embed',).")
    hidden, dim, layers = m["mlp_dim"], m["dim"], m["proj_layers"]
    if layers < 1:
      raise ValueError(f"method.proj_layers={layers} must be >= 1; MoCo v3 uses 3 (ViT) or 2 (ResNet).")
    self.encoder = Encoder(backbone=build_backbone(config.model),
                           head=MoCoV3MLP((hidden,) * (layers - 1), dim, True, axis))
    self.predictor = MoCoV3MLP((hidden,), dim, bool(m["pred_last_bn"]), axis)

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
             # The momentum encoder starts as a copy of the query encoder (official code).
             "ema": ema_init(enc["params"], enc_stats)}
    return params, state

  def _query(self, params, stats, x):
    """(features, projection, query q, new stats) of the query encoder + predictor in training mode."""
    (h, z), enc_upd = self.encoder.apply({"params": params["encoder"], "batch_stats": stats["encoder"]}, x,
                                         train=True, mutable=["batch_stats"])
    q, pred_upd = self.predictor.apply({"params": params["predictor"], "batch_stats": stats["predictor"]}, z,
                                       train=True, mutable=["batch_stats"])
    return h, z, q, {"encoder": enc_upd.get("batch_stats", {}), "predictor": pred_upd.get("batch_stats", {})}

  def _key(self, target, x):
    """(key k, new stats) of the momentum encoder: training-mode BN, no gradient."""
    (_, k), upd = self.encoder.apply(target, x, train=True, mutable=["batch_stats"])
    return jax.lax.stop_gradient(k), upd.get("batch_stats", {})

  def _momentum(self, step: jax.Array) -> jax.Array:
    # The official code updates the momentum encoder at the start of iteration k+1 with m(k+1); here that update
    # runs at the end of iteration k, with the same m.
    return cosine_momentum(self.base_momentum, step + 1, self.total_steps)

  def loss(self, params, state, views, key, step):
    del key
    crops = two_views(views, "MoCo v3")
    h1, z1, q1, stats = self._query(params, state["batch_stats"], crops[0])
    _, _, q2, stats = self._query(params, stats, crops[1])
    target = state["ema"]
    k1, t_stats = self._key(target, crops[0])
    k2, t_stats = self._key({"params": target["params"], "batch_stats": t_stats}, crops[1])
    l1, m1 = moco_v3_ctr(q1, k2, self.temperature, parallel.DATA, impl=self.impl)
    l2, m2 = moco_v3_ctr(q2, k1, self.temperature, parallel.DATA, impl=self.impl)
    metrics = {"embedding_std": embedding_std(z1, parallel.DATA), "features": h1,
               "contrast_acc": (m1["contrast_acc"] + m2["contrast_acc"]) / 2, "ema_momentum": self._momentum(step)}
    new_state = {"batch_stats": parallel.pmean_varying(stats),
                 "ema": {"params": target["params"], "batch_stats": parallel.pmean_varying(t_stats)}}
    return l1 + l2, (new_state, metrics)

  def after_update(self, params, state, step):
    """Momentum encoder <- m * momentum encoder + (1 - m) * query encoder (Alg. 1), m on a cosine to 1."""
    return {**state, "ema": ema_step(state["ema"], params["encoder"], self._momentum(step))}

  def encode(self, params, state, images):
    return self.encoder.apply({"params": params["encoder"], "batch_stats": state["batch_stats"]["encoder"]},
                              images, train=False, method=Encoder.features)
