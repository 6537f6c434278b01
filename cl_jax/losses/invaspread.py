"""InvaSpread's instance loss within the batch (Ye et al. 2019, Eq. 3-6; official BatchCriterion, negM = 1)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.contrastive import l2_normalize

_MASKED = -1e9


def invaspread_loss(z1: jax.Array, z2: jax.Array, temperature: float,
                    axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Invariant and spreading instance loss (Ye et al. 2019, Eq. 3-6) over the 2N views of the global batch.

  For each of the 2N views x_a (anchor) with positive p(a) (the other view of its image), the probability of being
  recognised as instance p(a) is P_a = exp(x_a.x_p/t) / sum_{b != a} exp(x_a.x_b/t) (Eq. 3), and each other view b
  is recognised as instance a with P_ab = exp(x_a.x_b/t) / sum_{c != a} exp(x_a.x_c/t) (Eq. 4). The loss is
  -(sum_a log P_a + sum_a sum_{b != a, p(a)} log(1 - P_ab)) / 2N (Eq. 5-6: the positive term plus the binary
  classification negative term). As the official code, the views in the columns are constants (no gradient:
  `x.t().data`), the gradient flows through the anchors.

  With `axis_name`, `z1`/`z2` are this device's rows; the loss (replicated) and its gradient equal the one-device
  loss over the global batch. Returns (loss, {"contrast_acc": fraction of anchors whose positive scores highest}).
  """
  z1, z2 = l2_normalize(z1), l2_normalize(z2)
  b = z1.shape[0]
  all1, all2 = parallel.all_gather(z1, axis_name), parallel.all_gather(z2, axis_name)
  offset = parallel.row_offset(b, axis_name)
  n = all1.shape[0]
  targets = jax.lax.stop_gradient(jnp.concatenate([all1, all2]))       # [2N, D]
  anchors = jnp.concatenate([z1, z2])                                  # [2b, D]
  logits = anchors @ targets.T / temperature                           # [2b, 2N]
  rows = offset + jnp.arange(b)
  self_idx = jnp.concatenate([rows, n + rows])
  pos_idx = jnp.concatenate([n + rows, rows])
  cols = jnp.arange(2 * n)[None, :]
  is_self, is_pos = cols == self_idx[:, None], cols == pos_idx[:, None]
  logits = jnp.where(is_self, _MASKED, logits)
  lse = jax.nn.logsumexp(logits, axis=1)                               # log sum_{b != a} exp(s_ab)
  log_p_pos = jnp.take_along_axis(logits, pos_idx[:, None], axis=1)[:, 0] - lse
  log_p = logits - lse[:, None]
  neg = jnp.sum(jnp.where(is_self | is_pos, 0.0, jnp.log1p(-jnp.exp(jnp.minimum(log_p, -1e-7)))), axis=1)
  local = parallel.psum(jnp.sum(log_p_pos + neg), axis_name)
  correct = parallel.psum(jnp.sum((jnp.argmax(logits, axis=1) == pos_idx).astype(jnp.float32)), axis_name)
  return -local / (2 * n), {"contrast_acc": correct / (2 * n)}
