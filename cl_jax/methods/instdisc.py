"""InstDisc: non-parametric instance discrimination with a memory bank split by rows over devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import parallel
from cl_jax.methods.common import embedding_std
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.losses.nce import instdisc_nce, instdisc_softmax
from cl_jax.methods import METHODS, memory_bank
from cl_jax.schema import Field
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.models import build_backbone
from cl_jax.models.encoder import Encoder
from cl_jax.models.heads import MLP

_LOSSES = ("nce", "softmax")


@METHODS.register("instdisc")
class InstDisc(Method):
  """InstDisc (Wu et al. 2018): one crop per image, 128-d L2-normalised features, a memory bank of every training
  example's feature (momentum 0.5), and NCE with m = 4096 uniform noise rows (Eq. 5-8) or the full softmax (Eq. 2)."""

  SCHEMA = {"temperature": Field(0.07, low=0, open_low=True), "num_negatives": Field(4096, low=1),
            "bank_momentum": Field(0.5, low=0, high=1), "proj_dim": Field(128, low=1),
            "loss": Field("nce", choices=_LOSSES), "bank_size": Field(0, low=0)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    self.temperature = float(m["temperature"])
    self.num_negatives = int(m["num_negatives"])
    self.bank_momentum = float(m["bank_momentum"])
    self.dim = int(m["proj_dim"])
    self.loss_name = m["loss"]
    if self.loss_name not in _LOSSES:
      raise ValueError(f"Unknown InstDisc loss '{self.loss_name}'; set method.loss to one of: {', '.join(_LOSSES)}.")
    self.model = Encoder(backbone=build_backbone(config.model), head=MLP((), self.dim))   # fc to 128-d

  @property
  def num_data(self) -> int:
    return memory_bank.num_rows(self.config, self.num_train, "InstDisc")

  def init(self, key: jax.Array, views: Views):
    bkey, mkey = jax.random.split(key)
    variables = self.model.init(mkey, views["crops"][0][0], train=False)
    # padded to the mesh's size, not every device the process sees
    bank = memory_bank.uniform_bank(bkey, self.num_data, self.dim, self.run_facts.num_devices)
    return variables["params"], {"batch_stats": variables.get("batch_stats", {}), "bank": bank,
                                 "z": -jnp.ones((), jnp.float32)}

  def state_sharding(self, state):
    return memory_bank.row_sharding(state, ("bank",))

  def loss(self, params, state, views, key, step):
    del step
    crop, index = memory_bank.one_crop_with_index(views, "InstDisc")
    axis = parallel.DATA
    (h, z), updates = self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, crop,
                                       train=True, mutable=["batch_stats"])
    if self.loss_name == "nce":
      # Uniform noise indices, per example from (step key, global example position): topology independent.
      neg = memory_bank.noise_rows(key, index, self.num_negatives, self.num_data)
      loss, z_const, metrics = instdisc_nce(z, index, neg, state["bank"], state["z"], self.temperature,
                                            self.num_data, axis_name=axis)
    else:
      loss, metrics = instdisc_softmax(z, index, state["bank"], self.temperature, axis_name=axis,
                                       num_data=self.num_data)
      z_const = state["z"]
    f_all = jax.lax.all_gather(jax.lax.stop_gradient(l2_normalize(z)), axis, tiled=True)
    bank = memory_bank.momentum_update(state["bank"], jax.lax.all_gather(index, axis, tiled=True), f_all,
                                       self.bank_momentum, axis)
    metrics["embedding_std"] = embedding_std(z, axis)
    metrics["features"] = h
    new_state = {"batch_stats": parallel.pmean_varying(updates["batch_stats"]), "bank": bank,
                 "z": jax.lax.stop_gradient(z_const)}
    return loss, (new_state, metrics)

  def encode(self, params, state, images):
    return self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, images, train=False,
                            method=Encoder.features)
