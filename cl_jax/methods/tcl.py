"""TCL: twin contrastive learning with noisy labels (Huang et al., CVPR 2023; official Hzzone/TCL)."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from cl_jax import parallel
from cl_jax.data.augment import view_groups
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.losses.tcl import (Weights, mix_rows, mixup_lambda, mixup_rows, noise_detect, soft_cross_entropy,
                               tcl_objective)
from cl_jax.methods import METHODS
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import bn_axis, embedding_std
from cl_jax.models import build_backbone
from cl_jax.models.norm import batch_norm
from cl_jax.schema import Field

OBJECTIVES = ("tcl", "ce")
# The rows of one step's forward (SimCLRWrapper.inference: cat([im_w, im_mix, im_q, im_k])); the mixup rows are
# the mixes of the weak, first and second strong view of each example. A row's dropout key folds in its slot.
_SLOT_WEAK, _SLOT_MIX, _SLOT_Q1, _SLOT_Q2 = 0, 1, 4, 5


class Projector(nn.Module):
  """Wrapper.create_projector: Linear(d, d)-BN-ReLU-Linear(d, out)-BN (affine), unit-normalised by the caller."""
  out_dim: int
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, h: jax.Array, train: bool) -> jax.Array:
    norm = batch_norm(train, self.bn_axis_name)
    x = nn.relu(norm(name="bn1")(nn.Dense(h.shape[-1], use_bias=False, name="dense1")(h)))
    return norm(name="bn2")(nn.Dense(self.out_dim, use_bias=False, name="dense2")(x))


class Classifier(nn.Module):
  """Wrapper.create_classifier: Linear(d, d)-BN-ReLU-Dropout(p)-Linear(d, C)-BN (affine). Dropout's mask comes
  from one key per row (`drop_keys`, derived from the global example index), so it does not depend on the mesh;
  the Linear biases of the official heads are left out where a BN follows (its shift replaces them)."""
  num_classes: int
  dropout: float = 0.25
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, h: jax.Array, train: bool, drop_keys: jax.Array | None = None) -> jax.Array:
    norm = batch_norm(train, self.bn_axis_name)
    x = nn.relu(norm(name="bn1")(nn.Dense(h.shape[-1], use_bias=False, name="dense1")(h)))
    if train and self.dropout > 0 and drop_keys is not None:
      keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1.0 - self.dropout, x.shape[-1:]))(drop_keys)
      x = jnp.where(keep, x / (1.0 - self.dropout), 0.0)
    return norm(name="bn2")(nn.Dense(self.num_classes, use_bias=False, name="dense2")(x))


class TCLNet(nn.Module):
  """The encoder, projector and classifier of Wrapper (encoder_q, projector_q, classifier_q): returns (backbone
  features, unit projections, classifier logits)."""
  backbone: nn.Module
  feat_dim: int
  num_classes: int
  dropout: float = 0.25
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, drop_keys: jax.Array | None = None):
    h = self.backbone(x, train=train)
    z = l2_normalize(Projector(self.feat_dim, self.bn_axis_name, name="projector")(h, train))
    logits = Classifier(self.num_classes, self.dropout, self.bn_axis_name, name="classifier")(h, train, drop_keys)
    return h, z, logits

  def features(self, x: jax.Array, train: bool = False) -> jax.Array:
    """Backbone features only (evaluation)."""
    return self.backbone(x, train=train)


@METHODS.register("tcl")
class TCL(Method):
  """TCL (Huang et al. 2023; official models/tcl/tcl.py TCL, tcl_wrapper.py SimCLRWrapper; losses in
  cl_jax/losses/tcl.py). One forward of the weak view, the mixup of all three views and the two strong views
  through backbone, projector and classifier; the loss is InfoNCE between the strong views over the gathered batch
  plus the cross-supervised classification of the twins and the mixup, the entropy and balance regularisers and
  the alignment of the mixup projections with the class centres. During the first `warmup_epochs` epochs the
  targets are the noisy one-hot labels (the official warm-up: cross-entropy on the noisy labels).

  Epoch start (EPOCH_START; the official psedo_labeling before every epoch, reassign=1): the whole training split
  in inference mode gives unit projections and classifier probabilities; on the host, class centres, each
  example's P(clean) from a 2-component GaussianMixture over its loss (noise_detect) and the estimated clean
  fraction (confidence > 0.5).mean(), the official scale1 = scale2 when they are not set.

  config.method (official flags and models/tcl/configs/cifar10_90_prer18.yml): temperature (--temp 0.25), feat_dim
  (256), num_classes (the training label's classes), warmup_epochs (epochs of the warm-up, 19 in the official run:
  its `warmup_epochs: 20` with epochs counted from 1), mixup_alpha (1.0), scale1 / scale2 (None: the estimated clean
  fraction), cls_weight / ent_weight / ne_weight / align_weight (1.0 each), contrastive_weight (1.0; no official
  flag), dropout (0.25, the classifier's), per_class_gmm (--sep_gmm, False), objective ("tcl"; "ce": the baseline,
  cross-entropy of the weak view's logits on the noisy labels, nothing else).

  Views: a crop group named "weak" with 1 view (official RandomCrop(32, padding=4) + flip) and one named "strong"
  with 2 views (RandomResizedCrop(0.2, 1), flip, jitter, grayscale, solarize p 0.5), of one size. The batch's
  "label" is the noisy label and "index" the example id (its P(clean)); nothing else of the batch is read.

  Differences from the official code: the mixup permutation runs over the views of the global batch (the images
  are all-gathered) rather than over each GPU's, and the balance regulariser's mean prediction is over the global
  batch, so 1 and 8 devices give the same step; the official GatherLayer hands each GPU only its own slice's
  gradient and DDP then averages, so its contrastive gradient is 1/num_gpus of the loss's (set contrastive_weight
  to 0.25 to reproduce the 4-GPU run's).

  state = {"batch_stats", "confidence" [num_train] P(clean) by example id, "prototypes" [C, feat_dim] the class
  centres, "scale" (the estimated clean fraction), "passes" (noise detections so far)}, all replicated.
  """

  SCHEMA = {"temperature": Field(0.25, low=0, open_low=True), "feat_dim": Field(256, low=1),
            "num_classes": Field(10, low=2), "warmup_epochs": Field(19, low=0),
            "mixup_alpha": Field(1.0, low=0, open_low=True), "scale1": Field(None), "scale2": Field(None),
            "cls_weight": Field(1.0, low=0), "ent_weight": Field(1.0, low=0), "ne_weight": Field(1.0, low=0),
            "align_weight": Field(1.0, low=0), "contrastive_weight": Field(1.0, low=0),
            "dropout": Field(0.25, low=0, high=0.99), "per_class_gmm": Field(False, choices=(True, False)),
            "objective": Field("tcl", choices=OBJECTIVES)}
  EPOCH_START = True

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    for name in ("scale1", "scale2"):
      value = m[name]
      if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float)) or
                                not 0 <= value <= 1):
        raise ValueError(f"method.{name}={value!r}: must be None (the estimated clean fraction) or in [0, 1].")
    if self.num_train < 1:
      raise ValueError("TCL keeps a P(clean) per training example and needs run_facts.num_train >= 1.")
    self.num_classes, self.temperature = int(m.num_classes), float(m.temperature)
    self.warmup_steps = int(m.warmup_epochs) * self.steps_per_epoch
    self.weights = Weights(cls=float(m.cls_weight), ent=float(m.ent_weight), ne=float(m.ne_weight),
                           align=float(m.align_weight), contrastive=float(m.contrastive_weight))
    self.groups = self._view_groups(config.augment, m.objective)
    self.model = TCLNet(backbone=build_backbone(config.model), feat_dim=int(m.feat_dim),
                        num_classes=self.num_classes, dropout=float(m.dropout), bn_axis_name=bn_axis(config))

  @staticmethod
  def _view_groups(recipe: ml_collections.ConfigDict, objective: str) -> dict[str, int]:
    """{"weak": index, "strong": index} in views["crops"], or a one-line error naming the recipe TCL needs."""
    groups = {name: (i, g) for i, (name, g) in enumerate(view_groups(recipe))}
    need = {"weak": 1} if objective == "ce" else {"weak": 1, "strong": 2}
    fix = ("set config.augment = {'weak': group(views=1, ...), 'strong': group(views=2, ...)} "
           "(configs/quickstart_methods/tcl.py)")
    for name, views in need.items():
      if name not in groups or groups[name][1].views != views:
        got = f"{groups[name][1].views} views" if name in groups else "no such group"
        raise ValueError(f"TCL needs a crop group '{name}' with {views} view(s), got {got}; {fix}.")
    if len({g.size for _, g in groups.values()}) > 1 and objective == "tcl":
      raise ValueError(f"TCL mixes the weak and strong views, so they need one size, got "
                       f"{ {n: g.size for n, (_, g) in groups.items()} }; give every crop group the same size.")
    return {name: groups[name][0] for name in need}

  def init(self, key: jax.Array, views: Views):
    params_key, proto_key = jax.random.split(key)
    variables = self.model.init(params_key, views["crops"][self.groups["weak"]][0], train=False)
    prototypes = l2_normalize(jax.random.normal(proto_key, (self.num_classes, int(self.hp.feat_dim))))
    state = {"batch_stats": variables.get("batch_stats", {}),
             "confidence": jnp.zeros((self.num_train,), jnp.float32), "prototypes": prototypes,
             "scale": jnp.zeros((), jnp.float32), "passes": jnp.zeros((), jnp.int32)}
    return variables["params"], state

  def _labels(self, views: Views) -> tuple[jax.Array, jax.Array]:
    if "label" not in views:
      raise ValueError("TCL needs the noisy labels: the training source has no 'label' field; use a labelled "
                       "dataset (and data.label_noise, e.g. 'symmetric:0.4').")
    if "index" not in views:
      raise ValueError("TCL needs each example's 'index' (to look up its P(clean)); the batch has none.")
    return views["label"].astype(jnp.int32), views["index"].astype(jnp.int32)

  def _forward(self, params, state, x, drop_keys):
    variables = {"params": params, "batch_stats": state["batch_stats"]}
    (h, z, logits), updates = self.model.apply(variables, x, train=True, drop_keys=drop_keys,
                                               mutable=["batch_stats"])
    return h, z, logits, {**state, "batch_stats": parallel.pmean_varying(updates["batch_stats"])}

  def loss(self, params, state, views, key, step):
    labels, index = self._labels(views)
    weak = views["crops"][self.groups["weak"]][0]
    b = weak.shape[0]
    g = parallel.global_example_index(b)
    lam_key, perm_key, drop_key = jax.random.split(key, 3)

    def drop_keys(slot):
      return jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(drop_key, slot), i))(g)

    onehot = jax.nn.one_hot(labels, self.num_classes, dtype=jnp.float32)
    if self.hp.objective == "ce":
      h, z, logits, new_state = self._forward(params, state, weak, drop_keys(_SLOT_WEAK))
      loss = soft_cross_entropy(logits, onehot, parallel.DATA)
      metrics = {"cls_loss1": loss, "embedding_std": embedding_std(z, parallel.DATA), "features": h}
      return loss, (new_state, metrics)

    strong = views["crops"][self.groups["strong"]]
    n = b * parallel.axis_size(parallel.DATA)
    # Mixup (tcl_wrapper.py `mixup`) of cat([weak, strong1, strong2]) of the GLOBAL batch: one lambda, one
    # permutation of its 3N rows (the same on every device: the loss key is replicated); this device mixes its rows.
    x_all = jnp.concatenate([parallel.all_gather(v, parallel.DATA) for v in (weak, strong[0], strong[1])])
    lam = mixup_lambda(lam_key, float(self.hp.mixup_alpha))
    perm = jax.random.permutation(perm_key, 3 * n)
    x_mix = mix_rows(x_all, mixup_rows(b, parallel.DATA), perm, lam)
    x = jnp.concatenate([weak, x_mix, strong[0], strong[1]])
    slots = (_SLOT_WEAK, _SLOT_MIX, _SLOT_MIX + 1, _SLOT_MIX + 2, _SLOT_Q1, _SLOT_Q2)
    h, z, logits, new_state = self._forward(params, state, x, jnp.concatenate([drop_keys(s) for s in slots]))
    confidence = state["confidence"][index]
    scale1 = state["scale"] if self.hp.scale1 is None else float(self.hp.scale1)
    scale2 = state["scale"] if self.hp.scale2 is None else float(self.hp.scale2)
    warm = step < self.warmup_steps   # the warm-up: the noisy one-hot labels (forward_cls_loss, self.warmup)
    loss, metrics = tcl_objective(z, logits, onehot, confidence, state["prototypes"], scale1, scale2, warm, perm,
                                  lam, self.temperature, self.weights, parallel.DATA)
    metrics.update(warmup=warm.astype(jnp.float32), mix_lambda=lam,
                   confidence=parallel.pmean(jnp.mean(confidence), parallel.DATA),
                   embedding_std=embedding_std(z[4 * b:5 * b], parallel.DATA), features=h[:b])
    return loss, (new_state, metrics)

  def _apply_eval(self, params, state, images):
    return self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, images, train=False)

  def encode(self, params, state, images):
    return self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, images, train=False,
                            method=TCLNet.features)

  def classify(self, params, state, images) -> jax.Array:
    """Classifier logits [b, C] of eval-preprocessed images (inference mode): the noisy_labels monitor's head."""
    return self._apply_eval(params, state, images)[2]

  def epoch_outputs(self, params, state, images) -> dict[str, jax.Array]:
    """Unit projections and classifier probabilities (TCL.extract_features on the memory loader)."""
    _, z, logits = self._apply_eval(params, state, images)
    return {"features": z, "probs": jax.nn.softmax(logits, axis=-1)}

  def epoch_start(self, state, split, epoch) -> tuple[Any, dict[str, float]]:
    """Host side (TCL.correct_labels + evaluate's scale update): P(clean) per example, the class centres and the
    estimated clean fraction from the whole training split's outputs and noisy labels."""
    del epoch
    labels = np.asarray(split["label"], np.int64)
    bad = (labels < 0) | (labels >= self.num_classes)
    if bad.any():
      raise ValueError(f"TCL got training label {int(labels[bad][0])} outside [0, {self.num_classes}) "
                       f"(method.num_classes={self.num_classes}); set method.num_classes to the number of classes "
                       "(every training example needs a label).")
    clean, centres = noise_detect(split["probs"], split["features"], labels, self.temperature,
                                  bool(self.hp.per_class_gmm))
    confidence = np.zeros((self.num_train,), np.float32)
    confidence[np.asarray(split["index"], np.int64)] = clean
    fraction = float((clean > 0.5).mean())
    passes = int(np.asarray(state["passes"])) + 1
    new = {**state, "confidence": confidence, "prototypes": centres.astype(np.float32),
           "scale": np.float32(fraction), "passes": np.int32(passes)}
    return new, {"clean_fraction": fraction, "confidence": float(clean.mean())}

  def clean_scores(self, state) -> np.ndarray | None:
    """Host side: P(clean) [num_train] in index order from the last noise detection (None before the first)."""
    if int(np.asarray(state["passes"])) == 0:
      return None
    return np.asarray(state["confidence"], np.float64)
