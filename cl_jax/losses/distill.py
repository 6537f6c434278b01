"""Self-distillation losses: DINO's cross-entropy to a centred, sharpened EMA teacher (Caron et al. 2021)."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from cl_jax import parallel


def teacher_temperature(step: jax.Array, steps_per_epoch: int, warmup_temp: float, temp: float,
                        warmup_epochs: int) -> jax.Array:
  """Teacher temperature tau_t (DINO Sec. 3.1, App. B): linear from `warmup_temp` to `temp` over the first
  `warmup_epochs` epochs, one value per epoch as the official `np.linspace(warmup, temp, warmup_epochs)`, then
  constant."""
  epoch = jnp.asarray(step, jnp.int32) // max(int(steps_per_epoch), 1)
  if warmup_epochs <= 0:
    return jnp.full((), temp, jnp.float32)
  frac = epoch.astype(jnp.float32) / max(warmup_epochs - 1, 1)
  ramp = warmup_temp + (temp - warmup_temp) * frac
  return jnp.where(epoch < warmup_epochs, ramp, temp).astype(jnp.float32)


def batch_center(teacher: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Mean teacher output over every crop and example of the GLOBAL batch (DINO Eq. 4; psum over devices)."""
  teacher = teacher.astype(jnp.float32).reshape(-1, teacher.shape[-1])
  return parallel.psum(jnp.sum(teacher, axis=0), axis_name) / (teacher.shape[0] * parallel.axis_size(axis_name))


def update_center(center: jax.Array, teacher: jax.Array, momentum: float = 0.9,
                  axis_name: str | None = None) -> jax.Array:
  """c <- m c + (1 - m) mean_i g_t(x_i) over the global batch (DINO Eq. 4), without gradient."""
  return momentum * center + (1.0 - momentum) * jax.lax.stop_gradient(batch_center(teacher, axis_name))


def dino_loss(student: jax.Array, teacher: jax.Array, center: jax.Array, student_temp: float,
              teacher_temp: jax.Array | float, axis_name: str | None = None
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DINO loss (Caron et al. 2021, Eq. 3 and Alg. 1; official DINOLoss): for every teacher crop t and student
  crop s != t, H(P_t, P_s) = -sum_k P_t log P_s with P_t = softmax((g_t - c) / tau_t) (centred, sharpened, no
  gradient) and P_s = softmax(g_s / tau_s); mean over the batch, then over the number of (t, s) terms.

  `student` is [S, b, K] (its first T crops are the teacher's T global crops, in the same order), `teacher` is
  [T, b, K], `center` is [K]. With `axis_name`, b is this device's rows and the returned loss (replicated) and
  its gradient equal the one-device loss over the global batch. Metrics: the teacher entropy h(P_t) and the KL
  term H(P_t, P_s) - h(P_t) (the paper's Fig. 7 collapse diagnostics).
  """
  num_student, num_teacher = student.shape[0], teacher.shape[0]
  if num_teacher > num_student or student.shape[1:] != teacher.shape[1:]:
    raise ValueError(f"DINO needs student crops [S, b, K] that start with the teacher's [T, b, K] crops, got "
                     f"student {student.shape} and teacher {teacher.shape}; give the student every crop.")
  pairs = np.asarray([[t != s for s in range(num_student)] for t in range(num_teacher)], np.float32)
  num_terms = float(pairs.sum())
  if num_terms == 0:
    raise ValueError("DINO loss has no (teacher, student) pair of different views; use at least 2 crops.")
  log_p_student = jax.nn.log_softmax(student.astype(jnp.float32) / student_temp, axis=-1)
  logits_t = (jax.lax.stop_gradient(teacher).astype(jnp.float32) - center) / teacher_temp
  p_teacher = jax.nn.softmax(logits_t, axis=-1)
  cross = -jnp.einsum("tbk,sbk->tsb", p_teacher, log_p_student)            # [T, S, b]
  loss = jnp.sum(jnp.mean(cross, axis=-1) * pairs) / num_terms
  entropy = jnp.mean(-jnp.sum(p_teacher * jax.nn.log_softmax(logits_t, axis=-1), axis=-1))
  loss, entropy = parallel.pmean(loss, axis_name), parallel.pmean(entropy, axis_name)
  # Each teacher crop appears in the same number of terms, so the mean entropy over terms is `entropy`.
  return loss, {"teacher_entropy": entropy, "teacher_kl": loss - entropy}
