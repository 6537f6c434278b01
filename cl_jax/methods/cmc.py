"""CMC: contrasting views made of different channels of one image, an encoder and a memory bank per view."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import parallel
from cl_jax.data.augment import denormalize
from cl_jax.data.colorspace import VIEW_CHANNELS, channel_views
from cl_jax.losses.cmc import GRAPHS, LOSSES, cmc_loss, directed_pairs, view_pairs
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.methods import METHODS, memory_bank
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import embedding_std
from cl_jax.models import build_backbone
from cl_jax.models.encoder import Encoder
from cl_jax.models.heads import MLP
from cl_jax.schema import Field


@METHODS.register("cmc")
class CMC(Method):
  """CMC (Tian et al. 2020, Sec. 3-4; official HobbitLong/CMC train_CMC.py): one crop per image split into channel
  views (L and ab of Lab by default), a backbone + linear 128-d L2-normalised embedding per view, one memory bank
  per view (momentum 0.5), each view's features contrasted against the other views' banks with NCE (K = 16,384
  noise rows, temperature 0.07), softmax over the same rows, or the exact full softmax; features for evaluation
  are every view's backbone features concatenated (Sec. 4.1).

  config.method: views (('L', 'ab'); also 'grad', the Sobel magnitude of L), graph ('core' | 'full', Sec. 3.3),
  loss ('nce' | 'softmax' | 'full_softmax'), temperature, num_negatives, bank_momentum, proj_dim, bank_size (0:
  the training split's size). params and state["batch_stats"] hold one entry per view; state["bank_<view>"]
  [N, D] (rows split over devices) and state["z"] one NCE constant per directed pair of views.
  """

  SCHEMA = {"views": Field(("L", "ab")), "graph": Field("core", choices=GRAPHS), "loss": Field("nce", choices=LOSSES),
            "temperature": Field(0.07, low=0, open_low=True), "num_negatives": Field(16384, low=1),
            "bank_momentum": Field(0.5, low=0, high=1), "proj_dim": Field(128, low=1), "bank_size": Field(0, low=0)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    self.views = tuple(str(v) for v in ((m.views,) if isinstance(m.views, str) else m.views))
    unknown = [v for v in self.views if v not in VIEW_CHANNELS]
    if unknown or len(set(self.views)) != len(self.views):
      raise ValueError(f"method.views={self.views}: use distinct names from {', '.join(VIEW_CHANNELS)}, "
                       "e.g. ('L', 'ab').")
    self.pairs = view_pairs(len(self.views), m.graph)
    self.terms = directed_pairs(self.pairs)
    self.models = {v: Encoder(backbone=build_backbone(config.model), head=MLP((), int(m.proj_dim)))
                   for v in self.views}

  @property
  def num_data(self) -> int:
    return memory_bank.num_rows(self.config, self.num_train, "CMC")

  def _split(self, images: jax.Array) -> dict[str, jax.Array]:
    """The channel views of normalised RGB crops [b, H, W, 3] (the loop's views): back to [0, 1], to Lab."""
    return channel_views(denormalize(images), self.views)

  def init(self, key: jax.Array, views: Views):
    keys = jax.random.split(key, 2 * len(self.views))
    x = self._split(views["crops"][0][0])
    params, stats, state = {}, {}, {}
    for i, v in enumerate(self.views):
      variables = self.models[v].init(keys[i], x[v], train=False)
      params[v], stats[v] = variables["params"], variables.get("batch_stats", {})
      state[f"bank_{v}"] = memory_bank.uniform_bank(keys[len(self.views) + i], self.num_data, int(self.hp.proj_dim),
                                                    self.run_facts.num_devices)
    return params, {"batch_stats": stats, "z": -jnp.ones((len(self.terms),), jnp.float32), **state}

  def state_sharding(self, state):
    return memory_bank.row_sharding(state, tuple(f"bank_{v}" for v in self.views))

  def loss(self, params, state, views, key, step):
    del step
    crop, index = memory_bank.one_crop_with_index(views, "CMC", " (its views are channels of it)")
    axis, m = parallel.DATA, self.hp
    x = self._split(crop)
    feats, z, stats = [], [], {}
    for v in self.views:
      (h, zv), updates = self.models[v].apply({"params": params[v], "batch_stats": state["batch_stats"][v]}, x[v],
                                              train=True, mutable=["batch_stats"])
      feats.append(h)
      z.append(zv)
      stats[v] = parallel.pmean_varying(updates["batch_stats"])
    neg = memory_bank.noise_rows(key, index, int(m.num_negatives), self.num_data)
    banks = [state[f"bank_{v}"] for v in self.views]
    loss, z_const, metrics = cmc_loss(z, index, neg, banks, state["z"], self.pairs, float(m.temperature),
                                      self.num_data, m.loss, axis, self.views)
    index_all = jax.lax.all_gather(index, axis, tiled=True)
    new_state = {"batch_stats": stats, "z": jax.lax.stop_gradient(z_const)}
    for v, zv in zip(self.views, z):
      f_all = jax.lax.all_gather(jax.lax.stop_gradient(l2_normalize(zv)), axis, tiled=True)
      new_state[f"bank_{v}"] = memory_bank.momentum_update(state[f"bank_{v}"], index_all, f_all,
                                                           float(m.bank_momentum), axis)
    for v, zv in zip(self.views, z):
      metrics[f"embedding_std_{v}"] = embedding_std(zv, axis)
    metrics["embedding_std"] = jnp.mean(jnp.stack([metrics[f"embedding_std_{v}"] for v in self.views]))
    metrics["features"] = jnp.concatenate(feats, axis=-1)
    return loss, (new_state, metrics)

  def encode(self, params, state, images):
    """Every view's backbone features, concatenated (Sec. 4.1: 'we concatenate the features from both views')."""
    x = self._split(images)
    return jnp.concatenate([self.models[v].apply({"params": params[v], "batch_stats": state["batch_stats"][v]}, x[v],
                                                 train=False, method=Encoder.features) for v in self.views], axis=-1)
