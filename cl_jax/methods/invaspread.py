"""InvaSpread: one encoder end to end, positives and negatives from the same mini-batch."""
from __future__ import annotations

import jax
import ml_collections

from cl_jax import parallel
from cl_jax.methods.common import embedding_std
from cl_jax.losses.invaspread import invaspread_loss
from cl_jax.methods import METHODS
from cl_jax.schema import Field
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.models import build_backbone
from cl_jax.models.encoder import Encoder
from cl_jax.models.heads import MLP


@METHODS.register("invaspread")
class InvaSpread(Method):
  """InvaSpread (Ye et al. 2019, Sec. 3.2, Fig. 2): a Siamese pass of two views through one encoder with a linear
  128-d L2-normalised embedding; each image's other view is its positive, the rest of the global batch negatives."""

  SCHEMA = {"temperature": Field(0.1, low=0, open_low=True), "proj_dim": Field(128, low=1)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    self.temperature = float(m["temperature"])
    self.model = Encoder(backbone=build_backbone(config.model), head=MLP((), int(m["proj_dim"])))

  def init(self, key: jax.Array, views: Views):
    variables = self.model.init(key, views["crops"][0][0], train=False)
    return variables["params"], {"batch_stats": variables.get("batch_stats", {})}

  def loss(self, params, state, views, key, step):
    del key, step
    crops = views["crops"][0]
    if crops.shape[0] != 2:
      raise ValueError(f"InvaSpread takes 2 views per image, got {crops.shape[0]}; "
                       "set --config.augment['global'].views=2.")
    b = crops.shape[1]
    x = crops.reshape((2 * b,) + crops.shape[2:])    # one forward pass over both views, as the official code
    (h, z), updates = self.model.apply({"params": params, **state}, x, train=True, mutable=["batch_stats"])
    loss, metrics = invaspread_loss(z[:b], z[b:], self.temperature, axis_name=parallel.DATA)
    metrics["embedding_std"] = embedding_std(z, parallel.DATA)
    metrics["features"] = h[:b]
    return loss, ({"batch_stats": parallel.pmean_varying(updates["batch_stats"])}, metrics)

  def encode(self, params, state, images):
    return self.model.apply({"params": params, **state}, images, train=False, method=Encoder.features)
