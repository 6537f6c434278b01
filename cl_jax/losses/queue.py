"""MoCo's InfoNCE against a queue of negative keys, exact with the queue split by rows over devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.contrastive import l2_normalize


def bank_logsumexp(queries: jax.Array, bank: jax.Array, temperature: float, extra: jax.Array,
                   axis_name: str | None = None, num_valid: int | None = None) -> tuple[jax.Array, jax.Array]:
  """log(exp(extra_i) + sum_j exp(q_i . v_j / t)) over ALL rows v_j of a row-sharded bank, for every query.

  `queries` [B, D] and `extra` [B] are the same on every device (all-gathered); `bank` is this device's row slice.
  Each device scores the B queries against its R/n rows and the per-query max and sum of exponentials are combined
  with pmax/psum: O(B) communication per step instead of all-gathering the R x D bank. Global rows >= `num_valid`
  (padding) are left out. Returns (lse [B], the max
  bank logit per query [B], for the top-1 accuracy).
  """
  logits = queries @ bank.T.astype(queries.dtype) / temperature            # [B, R/n]
  if num_valid is not None:
    local = bank.shape[0]
    rows = jnp.arange(local) + parallel.row_offset(local, axis_name)
    logits = jnp.where(rows[None, :] < num_valid, logits, -jnp.inf)
  top = parallel.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=1)), axis_name)
  shift = jnp.maximum(top, jax.lax.stop_gradient(extra))
  total = parallel.psum(jnp.sum(jnp.exp(logits - shift[:, None]), axis=1), axis_name) + jnp.exp(extra - shift)
  return shift + jnp.log(total), top


def queue_info_nce(q: jax.Array, k: jax.Array, queue: jax.Array, temperature: float,
                   axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """MoCo InfoNCE (He et al. 2020, Eq. 1 and Alg. 1): logits [q.k+, q.queue^T] / t with the positive at index 0,
  cross-entropy with label 0, mean over the global batch. Keys and queue get no gradient.

  `q`, `k` [b, D] are this device's rows (normalised here, as MoCo's `nn.functional.normalize`); `queue` is [K, D]
  on one device or this device's [K/n, D] row slice with `axis_name`. The returned loss is the global one.
  Returns (loss, {"contrast_acc": fraction of queries whose positive beats every queued key}).
  """
  q = l2_normalize(q)
  k = jax.lax.stop_gradient(l2_normalize(k))
  queue = jax.lax.stop_gradient(queue)
  pos = jnp.sum(q * k, axis=-1) / temperature                                 # [b]
  all_q, all_pos = parallel.all_gather(q, axis_name), parallel.all_gather(pos, axis_name)
  lse, top = bank_logsumexp(all_q, queue, temperature, all_pos, axis_name)
  b = q.shape[0]
  offset = parallel.row_offset(b, axis_name)      # every device scored the whole batch; keep this device's rows
  lse, top = jax.lax.dynamic_slice(lse, (offset,), (b,)), jax.lax.dynamic_slice(top, (offset,), (b,))
  n = b * parallel.axis_size(axis_name)
  loss = parallel.psum(jnp.sum(lse - pos), axis_name) / n
  acc = parallel.psum(jnp.sum((pos >= top).astype(jnp.float32)), axis_name) / n
  return loss, {"contrast_acc": acc}
