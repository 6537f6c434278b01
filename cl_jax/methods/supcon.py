"""SupCon: supervised contrastive learning, the labels deciding the positives among the global batch's views."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import parallel
from cl_jax.losses.supcon import supcon
from cl_jax.methods import METHODS
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import embedding_std
from cl_jax.models import build_backbone
from cl_jax.models.encoder import Encoder
from cl_jax.models.heads import MLP
from cl_jax.schema import Field


@METHODS.register("supcon")
class SupCon(Method):
  """SupCon (Khosla et al. 2020, Sec. 3.2 Eq. 2; official HobbitLong/SupContrast main_supcon.py): two or more
  views per image, backbone + MLP head (Linear(d, hidden)-ReLU-Linear(hidden, 128), no BN, as SupConResNet's
  'mlp' head), L2-normalised, positives = every other view of the same label over the global batch.

  config.method: temperature (0.1, the paper's and the README command's), base_temperature (0.07: the official
  loss scales by t / base_t), proj_hidden (the backbone's width in the official head: 2048 for ResNet-50),
  proj_dim (128), use_labels (False: SimCLR's unsupervised loss, the official labels=None). Labels come from the
  batch's "label"; a label < 0 marks an unlabelled example (positive only with its own views).
  """

  SCHEMA = {"temperature": Field(0.1, low=0, open_low=True), "base_temperature": Field(0.07, low=0, open_low=True),
            "proj_hidden": Field(2048, low=1), "proj_dim": Field(128, low=1),
            "use_labels": Field(True, choices=(True, False))}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    self.model = Encoder(backbone=build_backbone(config.model), head=MLP((int(m.proj_hidden),), int(m.proj_dim)))

  def init(self, key: jax.Array, views: Views):
    variables = self.model.init(key, views["crops"][0][0], train=False)
    return variables["params"], {"batch_stats": variables.get("batch_stats", {})}

  def loss(self, params, state, views, key, step):
    del key, step
    crops = views["crops"][0]
    v, b = crops.shape[:2]
    if v < 2 and not self.hp.use_labels:
      raise ValueError(f"SupCon without labels needs 2 or more views per image, got {v}; "
                       "set --config.augment['global'].views=2.")
    labels = None
    if self.hp.use_labels:
      if "label" not in views:
        raise ValueError("SupCon needs labels: the training source has no 'label' field; use a labelled dataset "
                         "or set --config.method.use_labels=False (SimCLR's unsupervised loss).")
      labels = views["label"].astype(jnp.int32)
    x = crops.reshape((v * b,) + crops.shape[2:])
    (h, z), updates = self.model.apply({"params": params, **state}, x, train=True, mutable=["batch_stats"])
    z = z.reshape(v, b, -1)
    loss, metrics = supcon(z, labels, float(self.hp.temperature), float(self.hp.base_temperature), parallel.DATA)
    metrics["embedding_std"] = embedding_std(z[0], parallel.DATA)
    metrics["features"] = h[:b]
    return loss, ({"batch_stats": parallel.pmean_varying(updates["batch_stats"])}, metrics)

  def encode(self, params, state, images):
    return self.model.apply({"params": params, **state}, images, train=False, method=Encoder.features)
