"""Optax optimizers and learning-rate schedules built from a config (SimCLR Appendix B.1).

`config.optim` is validated against SHARED plus the named optimizer's fields (FIELDS): an unknown key or an
impossible value is one line. Shared: name (sgd | adamw | lars | lamb), lr, lr_scaling (linear | sqrt | none),
base_batch; schedule (cosine | constant | step | poly), warmup_epochs or warmup_steps, end_lr; for step: decay_epochs
(lr x decay_factor at each, e.g. MoCo v1's 120, 160 of 200); for poly: poly_power (lr x (1 - t)^power, the
segmentation schedule of DeepLab and lang-seg); weight_decay, weight_decay_schedule ((start, end) cosine,
DINO Sec. 4 / App. B); exclude_bias_and_norm; clip_norm (0 = off), clip_mode (global | per_param: each tensor's
gradient clipped to the norm by itself, DINO's utils.clip_gradients); grad_accum_steps; frozen (path substrings;
always, or only for the first `frozen_steps` updates, DINO's freeze_last_layer); constant_lr (path substrings whose
lr stays at the peak lr, e.g. SimSiam's predictor, Chen & He 2021 Sec. 4.2); lr_multipliers ((path substring,
factor) pairs: that sub-tree's lr, and so its decay step, x factor; the first matching pair counts, e.g. lang-seg's
decoder at 10x the backbone's lr). Per optimizer: momentum, nesterov
(sgd, lars); trust_coefficient (lars); b1, b2, eps (adamw, lamb).
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from cl_jax.registry import Registry
from cl_jax.schema import Field, validate_variant

OPTIMIZERS: Registry[Callable[..., optax.GradientTransformation]] = Registry("optimizer")
_LR_SCALINGS = ("linear", "sqrt", "none")
_SCHEDULES = ("cosine", "constant", "step", "poly")
_CLIP_MODES = ("global", "per_param")
_BOOL = (True, False)
SHARED: dict[str, Field] = {
    "lr": Field(0.0), "lr_scaling": Field("none", choices=_LR_SCALINGS), "base_batch": Field(256, low=1),
    "schedule": Field("cosine", choices=_SCHEDULES), "warmup_epochs": Field(0.0, low=0),
    "warmup_steps": Field(0, low=0), "end_lr": Field(0.0, low=0), "decay_epochs": Field(None),
    "decay_factor": Field(0.1, low=0), "weight_decay": Field(0.0, low=0), "weight_decay_schedule": Field(None),
    "exclude_bias_and_norm": Field(True, choices=_BOOL), "clip_norm": Field(0.0, low=0),
    "clip_mode": Field("global", choices=_CLIP_MODES), "grad_accum_steps": Field(1, low=1),
    "frozen": Field(None), "frozen_steps": Field(0, low=0), "constant_lr": Field(None),
    "lr_multipliers": Field(()), "poly_power": Field(0.9, low=0, open_low=True)}
_MOMENTUM = {"momentum": Field(0.9, low=0, high=1), "nesterov": Field(False, choices=_BOOL)}
_ADAM = {"b1": Field(0.9, low=0, high=1), "b2": Field(0.999, low=0, high=1), "eps": Field(1e-8, low=0, open_low=True)}
FIELDS: dict[str, dict[str, Field]] = {   # optimizer name -> its config.optim fields (SHARED included)
    "sgd": {**SHARED, **_MOMENTUM},
    "lars": {**SHARED, **_MOMENTUM, "trust_coefficient": Field(0.001, low=0, open_low=True)},
    "adamw": {**SHARED, **_ADAM},
    "lamb": {**SHARED, **_ADAM, "eps": Field(1e-6, low=0, open_low=True)}}


def optim_section(cfg: Any) -> dict[str, Any]:
  """config.optim validated against the named optimizer's fields (name defaults to sgd), defaults filled in."""
  name = cfg["name"] if "name" in cfg else "sgd"
  OPTIMIZERS.get(name)   # an unknown name lists the known ones
  return {**validate_variant("optim", cfg, FIELDS, name), "name": name}


def clip_per_param(max_norm: float) -> optax.GradientTransformation:
  """Scales each tensor's gradient to norm <= max_norm on its own (DINO, utils.clip_gradients: coef max/(n+1e-6))."""
  def clip(updates, params=None):
    del params
    def one(g):
      return g * jnp.minimum(1.0, max_norm / (jnp.linalg.norm(g.ravel()) + 1e-6)).astype(g.dtype)
    return jax.tree.map(one, updates)
  return optax.stateless(clip)


def _clip(cfg: dict[str, Any]) -> optax.GradientTransformation | None:
  norm, mode = float(cfg["clip_norm"]), cfg["clip_mode"]
  if norm <= 0:
    return None
  return optax.clip_by_global_norm(norm) if mode == "global" else clip_per_param(norm)


def scaled_lr(lr: float, batch_size: int, scaling: str, base_batch: int = 256) -> float:
  """Base lr scaled by batch size: linear lr*B/256 or square-root lr*sqrt(B/256) (SimCLR App. B.1)."""
  if scaling not in _LR_SCALINGS:
    raise ValueError(f"Unknown lr_scaling '{scaling}'; set optim.lr_scaling to one of {', '.join(_LR_SCALINGS)}.")
  ratio = batch_size / base_batch
  return {"linear": lr * ratio, "sqrt": lr * math.sqrt(ratio), "none": lr}[scaling]


def lr_schedule(peak: float, *, total_steps: int, warmup_steps: int = 0, kind: str = "cosine",
                end_lr: float = 0.0, boundaries: tuple[int, ...] = (), factor: float = 0.1,
                power: float = 0.9) -> optax.Schedule:
  """Linear warmup from 0 to `peak`, then cosine decay to `end_lr` (SimCLR Sec. 3, SGDR), constant, step decay by
  `factor` at each of the step `boundaries` (MoCo v1 Sec. 4: x0.1 at epochs 120 and 160), or poly decay
  end_lr + (peak - end_lr) (1 - t)^power (DeepLab Sec. 4.1; lang-seg's LambdaLR, power 0.9)."""
  if kind not in _SCHEDULES:
    raise ValueError(f"Unknown schedule '{kind}'; set optim.schedule to one of {', '.join(_SCHEDULES)}.")
  if kind == "step" and not boundaries:
    raise ValueError("schedule='step' needs optim.decay_epochs, e.g. (120, 160): the epochs where lr drops.")

  def schedule(step: jax.Array) -> jax.Array:
    step = jnp.asarray(step, jnp.float32)
    warm = peak * step / max(warmup_steps, 1)
    if kind == "constant":
      after = jnp.full_like(step, peak)
    elif kind == "step":
      drops = sum((step >= b).astype(jnp.float32) for b in boundaries)
      after = peak * factor ** drops
    else:
      t = jnp.clip((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0, 1.0)
      shape = (1.0 - t) ** power if kind == "poly" else 0.5 * (1.0 + jnp.cos(jnp.pi * t))
      after = end_lr + (peak - end_lr) * shape
    return jnp.where(step < warmup_steps, warm, after)

  return schedule


def cosine_schedule(start: float, end: float, total_steps: int) -> optax.Schedule:
  """Cosine ramp from `start` to `end` over `total_steps`, e.g. DINO's weight decay 0.04 -> 0.4."""
  def schedule(step: jax.Array) -> jax.Array:
    t = jnp.clip(jnp.asarray(step, jnp.float32) / max(total_steps, 1), 0.0, 1.0)
    return end + (start - end) * 0.5 * (1.0 + jnp.cos(jnp.pi * t))
  return schedule


def decay_mask(exclude_bias_and_norm: bool) -> Callable[[Any], Any]:
  """Mask fn: True for params that get weight decay / trust ratio; 1-D (bias, norm) excluded (SimCLR LARS)."""
  return lambda params: jax.tree.map(lambda p: not exclude_bias_and_norm or p.ndim > 1, params)


@OPTIMIZERS.register("sgd")
def _sgd(cfg, lr, wd, mask):
  return optax.chain(optax.add_decayed_weights(wd, mask),
                     optax.sgd(lr, momentum=cfg["momentum"], nesterov=cfg["nesterov"]))


@OPTIMIZERS.register("adamw")
def _adamw(cfg, lr, wd, mask):
  return optax.adamw(lr, b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"],
                     weight_decay=wd, mask=mask)


@OPTIMIZERS.register("lars")
def _lars(cfg, lr, wd, mask):
  return optax.lars(lr, weight_decay=wd, weight_decay_mask=mask, trust_ratio_mask=mask,
                    trust_coefficient=cfg["trust_coefficient"], momentum=cfg["momentum"],
                    nesterov=cfg["nesterov"])


@OPTIMIZERS.register("lamb")
def _lamb(cfg, lr, wd, mask):
  # optax.lamb has no trust-ratio mask, so compose it (You et al. 2020, Alg. 2).
  return optax.chain(
      optax.scale_by_adam(b1=cfg["b1"], b2=cfg["b2"], eps=cfg["eps"]),
      optax.add_decayed_weights(wd, mask),
      optax.masked(optax.scale_by_trust_ratio(), mask),
      optax.scale_by_learning_rate(lr))


def _path_name(path: Any) -> str:
  """A parameter's '/'-joined path, e.g. 'model/decoder/head/kernel' (what the path-substring options match)."""
  return jax.tree_util.keystr(path, simple=True, separator="/")


def _path_labels(substrings: tuple[str, ...], hit: str, miss: str) -> Callable[[Any], Any]:
  """Label fn: `hit` for params whose '/'-joined path contains one of `substrings`, else `miss`."""
  def labels(params):
    def label(path, _):
      return hit if any(s in _path_name(path) for s in substrings) else miss
    return jax.tree_util.tree_map_with_path(label, params)
  return labels


def lr_multipliers(pairs: Any) -> tuple[tuple[str, float], ...]:
  """config.optim.lr_multipliers -> ((path substring, factor), ...), checked (one-line errors)."""
  example = "e.g. --config.optim.lr_multipliers=\"(('decoder', 10.0),)\""
  try:
    out = tuple((str(s), float(f)) for s, f in (pairs or ()))
  except (TypeError, ValueError):
    raise ValueError(f"optim.lr_multipliers={pairs!r} must be (path substring, factor) pairs; {example}.") from None
  for s, f in out:
    if not s or not math.isfinite(f) or f <= 0:
      raise ValueError(f"optim.lr_multipliers has ({s!r}, {f}): the substring must be non-empty and the factor "
                       f"a positive number; {example}.")
  return out


def _scale_paths(pairs: tuple[tuple[str, float], ...]) -> optax.GradientTransformation:
  """Multiplies the final update of each sub-tree matching a pair by its factor: every optimizer here ends in
  scale_by_learning_rate, so this is that sub-tree's lr (and decay step) x factor. A substring in no parameter's
  path fails at init in one line (a typo)."""
  def labels(params):
    names = [_path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    for s, _ in pairs:
      if not any(s in n for n in names):
        raise ValueError(f"optim.lr_multipliers names {s!r}, which is in no parameter's path (they look like "
                         f"{names[0]!r}); fix the substring.")
    return jax.tree_util.tree_map_with_path(
        lambda path, _: next((f"pair{i}" for i, (s, _) in enumerate(pairs) if s in _path_name(path)), "x1"), params)

  return optax.multi_transform({"x1": optax.identity(), **{f"pair{i}": optax.scale(f) for i, (_, f) in
                                                           enumerate(pairs)}}, labels)


def _frozen_for(inner: optax.GradientTransformation, steps: int) -> optax.GradientTransformation:
  """`inner` with zero gradients and zero updates for its first `steps` updates (no weight decay either), as
  DINO's cancel_gradients_last_layer (grad=None in epoch 0). Schedules and Adam's count still advance."""
  def init(params):
    return inner.init(params), jnp.zeros([], jnp.int32)

  def update(updates, state, params=None):
    inner_state, count = state
    active = count >= steps
    mask = lambda tree: jax.tree.map(lambda u: jnp.where(active, u, jnp.zeros_like(u)), tree)
    new_updates, inner_state = inner.update(mask(updates), inner_state, params)
    return mask(new_updates), (inner_state, count + 1)

  return optax.GradientTransformation(init, update)


def _freeze(tx: optax.GradientTransformation, frozen: tuple[str, ...], steps: int = 0
            ) -> optax.GradientTransformation:
  """Zero the updates of every parameter whose '/'-joined path contains one of `frozen`: always when steps=0,
  else during the first `steps` updates only."""
  return optax.multi_transform({"train": tx, "frozen": _frozen_for(tx, steps) if steps else optax.set_to_zero()},
                               _path_labels(frozen, "frozen", "train"))


def build_optimizer(cfg: Any, *, total_steps: int, steps_per_epoch: int,
                    batch_size: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Optimizer and lr schedule from the validated `cfg` (optim_section); steps count optimizer updates."""
  cfg = optim_section(cfg)
  make = OPTIMIZERS.get(cfg["name"])
  lr = cfg["lr"]
  if lr <= 0:
    raise ValueError(f"optim.lr must be > 0, got {lr}; set --config.optim.lr to a positive base learning rate.")
  if total_steps <= 0:
    raise ValueError(f"total_steps must be > 0, got {total_steps}; train for at least one step.")
  peak = scaled_lr(lr, batch_size, cfg["lr_scaling"], cfg["base_batch"])
  warmup = int(cfg["warmup_steps"]) or round(cfg["warmup_epochs"] * steps_per_epoch)
  if warmup > total_steps:
    raise ValueError(f"Warmup of {warmup} steps exceeds total_steps={total_steps}; "
                     "lower optim.warmup_epochs/warmup_steps or train longer.")
  boundaries = tuple(round(e * steps_per_epoch) for e in (cfg["decay_epochs"] or ()))
  schedule = lr_schedule(peak, total_steps=total_steps, warmup_steps=warmup, kind=cfg["schedule"],
                         end_lr=cfg["end_lr"], boundaries=boundaries, factor=float(cfg["decay_factor"]),
                         power=float(cfg["poly_power"]))

  wd = float(cfg["weight_decay"])
  wd_schedule = cfg["weight_decay_schedule"]
  if wd_schedule is not None:
    if len(wd_schedule) != 2:
      raise ValueError(f"optim.weight_decay_schedule must be (start, end), got {wd_schedule}.")
    wd = cosine_schedule(float(wd_schedule[0]), float(wd_schedule[1]), total_steps)
  mask = decay_mask(cfg["exclude_bias_and_norm"])
  tx = make(cfg, schedule, wd, mask)
  constant = tuple(cfg["constant_lr"] or ())
  if constant:
    tx = optax.multi_transform({"scheduled": tx, "constant": make(cfg, peak, wd, mask)},
                               _path_labels(constant, "constant", "scheduled"))

  frozen = tuple(cfg["frozen"] or ())
  if frozen:
    tx = _freeze(tx, frozen, int(cfg["frozen_steps"]))
  # Clipping sees every gradient, frozen ones included, before the freeze (as DINO clips, then cancels the last
  # layer's gradients): inside the freeze's multi_transform a global norm would be taken per group.
  pairs = lr_multipliers(cfg["lr_multipliers"])
  if pairs:   # outside the freeze: its labels see every parameter (a frozen one's zero update stays zero)
    tx = optax.chain(tx, _scale_paths(pairs))
  if (clip := _clip(cfg)) is not None:
    tx = optax.chain(clip, tx)
  accum = int(cfg["grad_accum_steps"])
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum).gradient_transformation()
  return tx, schedule
