"""SimSiam: siamese network with a predictor and a stop-gradient, no negatives, no momentum (Chen & He 2021)."""
from __future__ import annotations

import jax
import ml_collections

from cl_jax import parallel
from cl_jax.losses.regression import negative_cosine
from cl_jax.methods import METHODS
from cl_jax.schema import Field
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import bn_axis, embedding_std, two_views
from cl_jax.models import build_backbone
from cl_jax.models.encoder import Encoder
from cl_jax.models.heads import MLP


def simsiam_projector(layers: int, hidden: int, out: int, bn_axis_name: str | None) -> MLP:
  """SimSiam's projection MLP (Chen & He 2021, Sec. 4): BN on every layer, ReLU on all but the output, whose BN
  has no affine parameters (official code); 3 layers on ImageNet, 2 on CIFAR (Appendix D)."""
  if layers < 2:
    raise ValueError(f"SimSiam's projector has at least 2 layers, got method.proj_layers={layers}; use 3 "
                     "(ImageNet) or 2 (CIFAR).")
  return MLP((hidden,) * (layers - 1), out, use_bn=True, last_bn=True, last_bn_scale=False,
             bn_axis_name=bn_axis_name)


def simsiam_predictor(hidden: int, out: int, bn_axis_name: str | None) -> MLP:
  """SimSiam's prediction MLP h (Sec. 4): Linear(512 bottleneck)-BN-ReLU-Linear(out), no BN on the output."""
  return MLP((hidden,), out, use_bn=True, last_bn=False, bn_axis_name=bn_axis_name)


@METHODS.register("simsiam")
class SimSiam(Method):
  """SimSiam (Chen & He 2021, Alg. 1, Eq. 1-4): L = D(p1, sg(z2))/2 + D(p2, sg(z1))/2 with D = -cos.

  params = {"encoder": backbone + projector f, "predictor": h}; state = {"batch_stats"}. The predictor's fixed
  learning rate (Sec. 4.2) is the optimizer's `constant_lr=("predictor",)`.
  """

  SCHEMA = {"proj_dim": Field(2048, low=1), "proj_hidden": Field(2048, low=1),
            "proj_layers": Field(3, low=1), "pred_hidden": Field(512, low=1)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    axis = bn_axis(config)
    dim = m["proj_dim"]
    self.encoder = Encoder(backbone=build_backbone(config.model),
                           head=simsiam_projector(m["proj_layers"], m["proj_hidden"], dim, axis))
    self.predictor = simsiam_predictor(m["pred_hidden"], dim, axis)

  def init(self, key: jax.Array, views: Views):
    x = views["crops"][0][0]
    k_enc, k_pred = jax.random.split(key)
    enc = self.encoder.init(k_enc, x, train=False)
    _, z = self.encoder.apply(enc, x, train=False)
    pred = self.predictor.init(k_pred, z, train=False)
    params = {"encoder": enc["params"], "predictor": pred["params"]}
    return params, {"batch_stats": {"encoder": enc.get("batch_stats", {}), "predictor": pred["batch_stats"]}}

  def _forward(self, params, stats, x):
    """(features, projection z, prediction p, new stats) in training mode."""
    (h, z), enc_upd = self.encoder.apply({"params": params["encoder"], "batch_stats": stats["encoder"]}, x,
                                         train=True, mutable=["batch_stats"])
    p, pred_upd = self.predictor.apply({"params": params["predictor"], "batch_stats": stats["predictor"]}, z,
                                       train=True, mutable=["batch_stats"])
    return h, z, p, {"encoder": enc_upd["batch_stats"], "predictor": pred_upd["batch_stats"]}

  def loss(self, params, state, views, key, step):
    del key, step
    crops = two_views(views, "SimSiam")
    # Each view is its own forward pass (own BN batch statistics), as the official code.
    h1, z1, p1, stats = self._forward(params, state["batch_stats"], crops[0])
    _, z2, p2, stats = self._forward(params, stats, crops[1])
    loss = 0.5 * negative_cosine(p1, z2, parallel.DATA) + 0.5 * negative_cosine(p2, z1, parallel.DATA)
    metrics = {"embedding_std": embedding_std(z1, parallel.DATA), "features": h1}
    return loss, ({"batch_stats": parallel.pmean_varying(stats)}, metrics)

  def encode(self, params, state, images):
    return self.encoder.apply({"params": params["encoder"], "batch_stats": state["batch_stats"]["encoder"]},
                              images, train=False, method=Encoder.features)
