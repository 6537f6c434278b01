"""DCCL: GCD's contrastive losses plus a concept loss against concepts re-estimated by clustering every epoch."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cl_jax import parallel
from cl_jax.eval import concepts
from cl_jax.losses.dccl import concept_weight, dccl_loss, gather_invariant, memory_update
from cl_jax.methods import METHODS
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import embedding_std, two_views
from cl_jax.models import build_backbone
from cl_jax.models.dino_head import DINOHead
from cl_jax.models.encoder import Encoder
from cl_jax.schema import Field



@METHODS.register("dccl")
class DCCL(Method):
  """DCCL (Pu, Zhong & Sebe, "Dynamic Conceptional Contrastive Learning for Generalized Category Discovery",
  CVPR 2023; official TPCD/DCCL G0_CUB200.py): per step

    loss = (1 - sup_weight) InfoNCE(all views) + sup_weight SupCon(labelled views) + w_e L_concept

  GCD's representation learning (Vaze et al. 2022, Sec. 3.1: `info_nce_logits` at temperature 1.0 and SupConLoss
  at 0.07 on the L2-normalised output of a DINO head, backbone -> 2048 -> 2048 -> 256 -> weight-normalised 65536)
  and DCCL's concept loss (Sec. 3.3, `ClusterMemory`): cross-entropy of the backbone features against a concept
  memory at temperature 0.05, whose rows move towards each batch's features (momentum 0.1, `CM.backward`). Before
  every epoch (the loop's epoch-start pass) the backbone features of the whole training split are clustered into
  concepts on the host (cl_jax/eval/concepts.py: the paper's semi-supervised Infomap on a kNN graph, k 15,
  similarity >= 0.6, clusters of <= 4 examples outliers; the number of concepts is found, not given) and the memory
  restarts at the concepts' centroids (`generate_cluster_features`). w_e ramps linearly from 0.1 x 0.4 = 0.04 to
  0.4 over the first 100 epochs (`contrastive_cluster_weight_schedule`). concept_weight=0 is GCD (no clustering).

  config.method (official argparse defaults): sup_weight (--sup_con_weight 0.35), temperature (InfoNCE, 1.0),
  supcon_temperature / supcon_base_temperature (0.07 / 0.07), head_hidden / head_bottleneck / head_out /
  head_layers (2048 / 256 / 65536 / 3), concept_weight (0.4), concept_ramp_from (0.1 of it), concept_ramp_epochs
  (100), concept_temperature (--temp 0.05), memory_momentum (0.1), knn_k (--k1 15), min_sim (--eps 0.6), min_size
  (--k2 4), max_sim (True), clustering ('auto': infomap if installed, else semi-supervised k-means with an estimated
  K), max_concepts (the fixed size of the memory: the largest clusters are kept).

  Differences from the official code: the concept loss runs on the contrastive batch's two views (the official
  draws a second batch from the pseudo-labelled, outlier-free examples with 16 per concept, a PK sampler); the
  labelled batch share is the data's (the official weights the sampler to balance labelled and unlabelled); the
  semi-supervised edge rule uses the neighbour's label (see cl_jax/eval/concepts.py); the DINO ViT-B/16
  initialisation and its frozen first 11 blocks are not available (the loop has no pretrained weights).

  Batch: "label" (-1 = unlabelled, data.discovery) and "index"; the kept truths never reach the method.
  state = {"batch_stats", "memory" [max_concepts, d] unit rows, "valid" [max_concepts] bool, "concept_ids"
  [num_train] int32 (-1: outlier)}, replicated.
  """

  SCHEMA = {"sup_weight": Field(0.35, low=0, high=1), "temperature": Field(1.0, low=0, open_low=True),
            "supcon_temperature": Field(0.07, low=0, open_low=True),
            "supcon_base_temperature": Field(0.07, low=0, open_low=True),
            "head_hidden": Field(2048, low=1), "head_bottleneck": Field(256, low=1), "head_out": Field(65536, low=1),
            "head_layers": Field(3, low=1), "concept_weight": Field(0.4, low=0),
            "concept_ramp_from": Field(0.1, low=0, high=1), "concept_ramp_epochs": Field(100, low=0),
            "concept_temperature": Field(0.05, low=0, open_low=True), "memory_momentum": Field(0.1, low=0, high=1),
            "knn_k": Field(15, low=2), "min_sim": Field(0.6, low=-1, high=1), "min_size": Field(4, low=0),
            "max_sim": Field(True, choices=(True, False)),
            "markov_time": Field(1.0, low=0, open_low=True), "clustering": Field("auto", choices=concepts.METHODS),
            "max_concepts": Field(1024, low=1)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    for name in ("knn_k", "min_size", "max_concepts", "concept_ramp_epochs", "head_layers"):
      if isinstance(m[name], float) and not float(m[name]).is_integer():
        raise ValueError(f"method.{name}={m[name]!r}: must be a whole number.")
    self.use_concepts = float(m.concept_weight) > 0
    self.EPOCH_START = self.use_concepts   # GCD (concept_weight=0) needs no clustering pass
    if self.use_concepts and self.num_train < 1:
      raise ValueError("DCCL needs the training split's size for its per-example concept ids; build it with "
                       "RunFacts(num_train=len(train split)).")
    if self.use_concepts and m.clustering == "infomap" and not concepts.have_infomap():
      raise ValueError("DCCL method.clustering='infomap' needs the infomap package; pip install 'cl_jax[dccl]' "
                       "(or infomap), or set method.clustering='auto' (semi-supervised k-means without it).")
    self.model = Encoder(backbone=build_backbone(config.model),
                         head=DINOHead(out_dim=int(m.head_out), hidden_dim=int(m.head_hidden),
                                       bottleneck_dim=int(m.head_bottleneck), num_layers=int(m.head_layers)))

  def init(self, key: jax.Array, views: Views):
    x = views["crops"][0][0]
    variables = self.model.init(key, x, train=False)
    dim = jax.eval_shape(lambda v: self.model.apply(v, x, train=False, method=Encoder.features), variables).shape[-1]
    k = int(self.hp.max_concepts)
    return variables["params"], {"batch_stats": variables.get("batch_stats", {}),
                                 "memory": jnp.zeros((k, dim), jnp.float32), "valid": jnp.zeros((k,), bool),
                                 "concept_ids": jnp.full((max(self.num_train, 1),), -1, jnp.int32)}

  def loss(self, params, state, views, key, step):
    del key
    m = self.hp
    crops = two_views(views, "DCCL")
    if "label" not in views:
      raise ValueError("DCCL needs labels: the training source has no 'label' field; use a labelled dataset with "
                       "a discovery split, e.g. --config.data.discovery=old=0-4,labelled=0.5.")
    if self.use_concepts and "index" not in views:
      raise ValueError("DCCL needs each example's dataset 'index' in the batch (its concept); use a source that "
                       "provides it.")
    b = crops.shape[1]
    x = crops.reshape((2 * b,) + crops.shape[2:])
    variables = {"params": params, "batch_stats": state["batch_stats"]}
    (h, (_, p)), updates = self.model.apply(variables, x, train=True, mutable=["batch_stats"])
    labels = views["label"].astype(jnp.int32)
    ids = cw = None
    if self.use_concepts:
      ids = jnp.take(state["concept_ids"], views["index"].astype(jnp.int32), axis=0)
      cw = concept_weight(step, self.steps_per_epoch, float(m.concept_weight), float(m.concept_ramp_from),
                          int(m.concept_ramp_epochs))
    loss, metrics = dccl_loss(h, p, labels, ids, state["memory"], state["valid"], sup_weight=float(m.sup_weight),
                              temperature=float(m.temperature), supcon_temperature=float(m.supcon_temperature),
                              supcon_base_temperature=float(m.supcon_base_temperature),
                              concept_temperature=float(m.concept_temperature), concept_w=cw,
                              axis_name=parallel.DATA)
    new_state = {**state, "batch_stats": parallel.pmean_varying(updates["batch_stats"])}
    if self.use_concepts:
      feats = gather_invariant(h.reshape(2, b, -1), parallel.DATA, axis=1)               # [2, N, d]
      targets = jnp.tile(gather_invariant(ids, parallel.DATA), 2)                        # views-major
      new_state["memory"] = memory_update(state["memory"], feats.reshape(-1, feats.shape[-1]), targets,
                                          float(m.memory_momentum))
      metrics.update({"concept_weight": cw, "num_concepts": jnp.sum(state["valid"]).astype(jnp.float32)})
    metrics["embedding_std"] = embedding_std(p[:b], parallel.DATA)
    metrics["features"] = h[:b]
    return loss, (new_state, metrics)

  def epoch_start(self, state, split, epoch):
    """Clusters the split's backbone features into concepts (cl_jax/eval/concepts.py); the memory restarts at
    their centroids. Logs the number of concepts, the outlier fraction, the clusters the cap dropped and the
    labelled purity (share of labelled examples whose concept's most common training label is theirs)."""
    m = self.hp
    found = concepts.find_concepts(split["features"], split["label"], method=m.clustering, k=int(m.knn_k),
                                   min_sim=float(m.min_sim), min_size=int(m.min_size),
                                   max_concepts=int(m.max_concepts), max_sim=bool(m.max_sim),
                                   markov_time=float(m.markov_time),
                                   seed=int(self.config.get("seed", 0)) * 1009 + int(epoch))
    memory = np.zeros(state["memory"].shape, np.float32)
    memory[:found.num] = found.centroids
    valid = np.arange(memory.shape[0]) < found.num
    ids = np.full(state["concept_ids"].shape, -1, np.int32)
    ids[np.asarray(split["index"], np.int64)] = found.ids
    labels = np.asarray(split["label"])
    lab = (labels >= 0) & (found.ids >= 0)
    purity = 0.0
    if lab.any():
      table = np.zeros((found.num, labels.max() + 1), np.int64)
      np.add.at(table, (found.ids[lab], labels[lab]), 1)
      purity = float(table.max(1).sum() / lab.sum())
    metrics = {"num_concepts": found.num, "outlier_frac": float(np.mean(found.ids < 0)),
               "concepts_dropped": found.dropped, "labelled_purity": purity}
    return {**state, "memory": memory, "valid": valid, "concept_ids": ids}, metrics

  def encode(self, params, state, images):
    return self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, images, train=False,
                            method=Encoder.features)
