"""SimCLR v1 and v2: two views, backbone + projection head, NT-Xent over the global batch."""
from __future__ import annotations

import jax
import ml_collections

from cl_jax import parallel
from cl_jax.losses.contrastive import nt_xent
from cl_jax.losses.ring import contrastive_impl
from cl_jax.methods import METHODS
from cl_jax.schema import Field
from cl_jax.methods.common import bn_axis, embedding_std, two_views
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.models import build_backbone
from cl_jax.models.encoder import Encoder
from cl_jax.models.heads import simclr_head


@METHODS.register("simclr")
class SimCLR(Method):
  """SimCLR (Chen et al. 2020, Alg. 1; v2: Chen et al. 2020b, Sec. 2, 3-layer projection head)."""

  SCHEMA = {"temperature": Field(0.1, low=0, open_low=True), "proj_hidden": Field(2048, low=1),
            "proj_dim": Field(128, low=1), "version": Field(1, choices=(1, 2))}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    self.temperature = m.temperature
    self.impl = contrastive_impl(config)   # config.parallel.contrastive_impl: gather | ring
    self.model = Encoder(
        backbone=build_backbone(config.model),
        head=simclr_head(m["version"], m.proj_hidden, m.proj_dim, bn_axis(config)))

  def init(self, key: jax.Array, views: Views):
    variables = self.model.init(key, views["crops"][0][0], train=False)
    return variables["params"], {"batch_stats": variables.get("batch_stats", {})}

  def loss(self, params, state, views, key, step):
    crops = two_views(views, "SimCLR")
    b = crops.shape[1]
    x = crops.reshape((2 * b,) + crops.shape[2:])
    (h, z), updates = self.model.apply({"params": params, **state}, x, train=True, mutable=["batch_stats"])
    loss, metrics = nt_xent(z[:b], z[b:], self.temperature, axis_name=parallel.DATA, impl=self.impl)
    metrics["embedding_std"] = embedding_std(z, parallel.DATA)
    metrics["features"] = h[:b]   # for the online linear probe
    return loss, ({"batch_stats": parallel.pmean_varying(updates["batch_stats"])}, metrics)

  def encode(self, params, state, images):
    return self.model.apply({"params": params, **state}, images, train=False, method=Encoder.features)
