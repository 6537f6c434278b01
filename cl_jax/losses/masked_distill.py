"""Masked self-distillation losses (MaskCLIP, Dong et al. CVPR 2023, Sec. 3.2-3.3): the student's predictions at
the masked positions of a masked input against an EMA teacher's representations of the full input.

Both are means over examples of a mean over each example's masked positions, so every example weighs the same
whatever its number of masked patches or tokens; an example with none contributes 0 (and still counts in the
mean). With `axis_name` the per-example terms are summed over devices and divided by the global batch, so the
returned (replicated) loss and its gradient equal the one-device loss over the global batch.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel


def _check(student: jax.Array, teacher: jax.Array, mask: jax.Array) -> None:
  if student.ndim != 3 or student.shape != teacher.shape or mask.shape != student.shape[:2]:
    raise ValueError(f"masked distillation needs student and teacher [b, N, K] and a mask [b, N], got student "
                     f"{student.shape}, teacher {teacher.shape}, mask {mask.shape}.")


def _masked_mean(per_position: jax.Array, mask: jax.Array, axis_name: str | None) -> jax.Array:
  """mean_b [sum_n m_bn x_bn / max(sum_n m_bn, 1)] over the global batch."""
  m = mask.astype(jnp.float32)
  per_example = jnp.sum(per_position * m, axis=1) / jnp.maximum(jnp.sum(m, axis=1), 1.0)
  total = parallel.psum(jnp.sum(per_example), axis_name)
  return total / (per_example.shape[0] * parallel.axis_size(axis_name))


def masked_distillation_loss(student: jax.Array, teacher: jax.Array, mask: jax.Array, center: jax.Array,
                             student_temp: float, teacher_temp: float, axis_name: str | None = None
                             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_MSD (MaskCLIP Sec. 3.2): cross-entropy between the teacher's and the student's softmax-normalised tokens at
  the masked positions, -sum_k P_t log P_s with P_t = softmax((g_t - c) / tau_t) (centred and sharpened as DINO
  Eq. 4 / iBOT's patch loss, no gradient) and P_s = softmax(g_s / tau_s).

  `student` and `teacher` are head outputs [b, N, K] (N patches or tokens), `mask` bool [b, N] (True = masked in
  the student's input), `center` [K]. Metrics: `teacher_entropy`, the mean entropy of P_t at the masked positions,
  and `kl`, the loss minus it (0 when the student matches the teacher).
  """
  _check(student, teacher, mask)
  log_p_student = jax.nn.log_softmax(student.astype(jnp.float32) / student_temp, axis=-1)
  logits_t = (jax.lax.stop_gradient(teacher).astype(jnp.float32) - center) / teacher_temp
  p_teacher = jax.nn.softmax(logits_t, axis=-1)
  cross = -jnp.sum(p_teacher * log_p_student, axis=-1)                       # [b, N]
  entropy = -jnp.sum(p_teacher * jax.nn.log_softmax(logits_t, axis=-1), axis=-1)
  loss = _masked_mean(cross, mask, axis_name)
  entropy = _masked_mean(entropy, mask, axis_name)
  return loss, {"teacher_entropy": entropy, "kl": loss - entropy}


def masked_feature_loss(student: jax.Array, teacher: jax.Array, mask: jax.Array, axis_name: str | None = None
                        ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The L2 alternative: mean over the masked positions of ||s/||s|| - t/||t|| ||^2 = 2 - 2 cos(s, t) between the
  student's prediction and the teacher's feature (no gradient), both [b, N, D]. Metrics: `cosine`, the mean cosine
  similarity at the masked positions."""
  _check(student, teacher, mask)
  s = student.astype(jnp.float32)
  t = jax.lax.stop_gradient(teacher).astype(jnp.float32)
  s = s / jnp.sqrt(jnp.sum(s * s, axis=-1, keepdims=True) + 1e-12)
  t = t / jnp.sqrt(jnp.sum(t * t, axis=-1, keepdims=True) + 1e-12)
  cos = jnp.sum(s * t, axis=-1)
  loss = _masked_mean(2.0 - 2.0 * cos, mask, axis_name)
  return loss, {"cosine": 1.0 - loss / 2.0}


def masked_center(teacher: jax.Array, valid: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Mean teacher output [K] over the valid positions (bool [b, N]) of the global batch."""
  v = valid.astype(jnp.float32)[..., None]
  total = parallel.psum(jnp.sum(teacher.astype(jnp.float32) * v, axis=(0, 1)), axis_name)
  count = parallel.psum(jnp.sum(v), axis_name)
  return total / jnp.maximum(count, 1.0)


def update_masked_center(center: jax.Array, teacher: jax.Array, valid: jax.Array, momentum: float,
                         axis_name: str | None = None) -> jax.Array:
  """c <- m c + (1 - m) mean of the teacher outputs over every valid position of the global batch (DINO Eq. 4
  over patches/tokens, as iBOT's patch centre), without gradient."""
  mean = jax.lax.stop_gradient(masked_center(teacher, valid, axis_name))
  return momentum * center + (1.0 - momentum) * mean
