"""DINO: self-distillation with no labels (Caron et al. 2021): multi-crop student, EMA teacher, centring."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import parallel
from cl_jax.losses.distill import dino_loss, teacher_temperature, update_center
from cl_jax.methods import METHODS
from cl_jax.schema import Field
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import cosine_momentum, crop_roles, ema_init, ema_step, embedding_std, momentum_field
from cl_jax.models import build_backbone
from cl_jax.models.dino_head import DINOHead
from cl_jax.models.encoder import MultiCropEncoder
from cl_jax.models.registry import bn_axis_name, model_section, parse_dtype


@METHODS.register("dino")
class DINO(Method):
  """DINO (Caron et al. 2021, Alg. 1): the student matches the centred, sharpened teacher on all pairs of
  (global crop, other crop); the teacher is an EMA of the student (momentum cosine from `momentum` to 1).

  config.method: out_dim (65536), hidden_dim (2048), bottleneck_dim (256), num_layers (3), use_bn_in_head,
  norm_last_layer (True), momentum (0.996), student_temp (0.1), warmup_teacher_temp (0.04), teacher_temp,
  warmup_teacher_temp_epochs, center_momentum (0.9), encode_with ('teacher' as the official evaluation, or
  'student'). Each group of config.augment declares role='global' (its crops go to the teacher and the student)
  or role='local' (student only); the roles, not the groups' names or order, pick the teacher's crops.
  """

  SCHEMA = {"out_dim": Field(65536, low=1), "hidden_dim": Field(2048, low=1), "bottleneck_dim": Field(256, low=1),
            "num_layers": Field(3, low=1), "use_bn_in_head": Field(False, choices=(True, False)),
            "norm_last_layer": Field(True, choices=(True, False)), "momentum": momentum_field(0.996),
            "student_temp": Field(0.1, low=0, open_low=True), "warmup_teacher_temp": Field(0.04, low=0, open_low=True),
            "teacher_temp": Field(0.04, low=0, open_low=True), "warmup_teacher_temp_epochs": Field(0, low=0),
            "center_momentum": Field(0.9, low=0, high=1),
            "encode_with": Field("teacher", choices=("teacher", "student"))}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.m = self.hp
    head = DINOHead(out_dim=int(m["out_dim"]), hidden_dim=int(m["hidden_dim"]),
                    bottleneck_dim=int(m["bottleneck_dim"]), num_layers=int(m["num_layers"]),
                    use_bn=bool(m["use_bn_in_head"]), norm_last_layer=bool(m["norm_last_layer"]),
                    bn_axis_name=bn_axis_name(config.model),
                    dtype=parse_dtype(model_section(config.model)["dtype"]))
    self.model = MultiCropEncoder(backbone=build_backbone(config.model), head=head)
    global_groups, local_groups = crop_roles(config.augment, "DINO")
    # Global crops first, for the student as for the teacher: dino_loss skips student crop t for teacher crop t.
    self.crop_order, self.num_teacher_groups = global_groups + local_groups, len(global_groups)

  def init(self, key: jax.Array, views: Views):
    variables = self.model.init(key, (views["crops"][self.crop_order[0]][0],), train=False)
    params, batch_stats = variables["params"], variables.get("batch_stats", {})
    # state["ema"] is the teacher, at first a copy of the student (official: teacher.load_state_dict(student...)).
    return params, {"batch_stats": batch_stats, "ema": ema_init(params, batch_stats),
                    "center": jnp.zeros((int(self.m.out_dim),), jnp.float32)}

  def teacher_temperature(self, step: jax.Array) -> jax.Array:
    """tau_t at `step`: warm-up per epoch, then constant (DINO App. B)."""
    m = self.m
    return teacher_temperature(step, self.steps_per_epoch, m.warmup_teacher_temp, m.teacher_temp,
                               int(m.warmup_teacher_temp_epochs))

  def loss(self, params, state, views, key, step):
    del key
    groups = views["crops"]
    if sum(g.shape[0] for g in groups) < 2:
      raise ValueError(f"DINO needs at least 2 crops, got groups of {[g.shape[0] for g in groups]} views; "
                       "set config.augment['global'].views=2.")
    if len(groups) != len(self.crop_order):
      raise ValueError(f"DINO got {len(groups)} crop groups but config.augment makes {len(self.crop_order)}; "
                       "build the views with augment.make_views(images, keys, config.augment).")
    groups = tuple(groups[i] for i in self.crop_order)
    num_global = sum(g.shape[0] for g in groups[:self.num_teacher_groups])
    b = groups[0].shape[1]
    flat = tuple(g.reshape((-1,) + g.shape[2:]) for g in groups)   # [V*b, H, W, C], view-major
    mutable = ["batch_stats"]
    (feats, z, s_logits), s_updates = self.model.apply(
        {"params": params, "batch_stats": state["batch_stats"]}, flat, train=True, mutable=mutable)
    # The teacher sees only the global crops, in train mode as the official code (batch statistics in BN).
    (_, _, t_logits), t_updates = self.model.apply(state["ema"], flat[:self.num_teacher_groups], train=True,
                                                   mutable=mutable)
    t_logits = jax.lax.stop_gradient(t_logits)
    k = s_logits.shape[-1]
    student = s_logits.reshape(-1, b, k)
    teacher = t_logits.reshape(num_global, b, k)
    temp = self.teacher_temperature(step)
    loss, metrics = dino_loss(student, teacher, state["center"], self.m.student_temp, temp,
                              axis_name=parallel.DATA)
    new_state = {
        "batch_stats": parallel.pmean_varying(s_updates.get("batch_stats", {})),
        "ema": {"params": state["ema"]["params"],
                "batch_stats": parallel.pmean_varying(t_updates.get("batch_stats", {}))},
        "center": update_center(state["center"], teacher, self.m.center_momentum, axis_name=parallel.DATA),
    }
    metrics["embedding_std"] = embedding_std(z[:num_global * b], parallel.DATA)
    metrics["teacher_temp"] = temp
    metrics["features"] = feats[:b]   # backbone features of the first global view, for the online probe
    return loss, (new_state, metrics)

  def after_update(self, params, state, step):
    """EMA teacher: theta_t <- lambda theta_t + (1 - lambda) theta_s, lambda cosine 0.996 -> 1 (DINO Sec. 3.1)."""
    momentum = cosine_momentum(self.m.momentum, step, self.total_steps)
    return {**state, "ema": ema_step(state["ema"], params, momentum)}

  @property
  def knn_also(self) -> dict[str, str]:
    """The kNN monitor's second figure: the network `encode` does not use (eval/knn_top1_student by default)."""
    other = "student" if self.m.encode_with == "teacher" else "teacher"
    return {other: f"encode_{other}"}

  def encode_teacher(self, params, state, images):
    """Backbone features of the EMA teacher (the official evaluation's network)."""
    del params
    return self.model.apply(state["ema"], images, train=False, method=MultiCropEncoder.features)

  def encode_student(self, params, state, images):
    """Backbone features of the student (the network the gradients train)."""
    return self.model.apply({"params": params, "batch_stats": state["batch_stats"]}, images, train=False,
                            method=MultiCropEncoder.features)

  def encode(self, params, state, images):
    if self.m.encode_with == "teacher":
      return self.encode_teacher(params, state, images)
    return self.encode_student(params, state, images)
