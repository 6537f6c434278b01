"""MaskCon's loss (Feng & Patras, CVPR 2023; official MrChenFeng/MaskCon_CVPR2023 models/model.py MaskCon.forward):
MoCo's query-vs-[key, queue] logits with a soft target, exact with the queue split by rows over devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.contrastive import l2_normalize


def maskcon_targets(k: jax.Array, queue: jax.Array, queue_labels: jax.Array, labels: jax.Array,
                    soft_temperature: float, axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """The unnormalised soft weights of the queue rows, MaskCon.forward's `tmp`: for each key, softmax over the queue
  rows of its coarse class of k . v / T2, rescaled so that its largest entry is 1, i.e. exp((s_j - max s) / T2) on
  same-coarse rows and 0 elsewhere. Returns (tmp [B, K/n] on this device's queue rows, S [B] = sum_j tmp_j over the
  whole queue).

  `k` [B, D] and `labels` [B] are the global batch's (all-gathered), `queue` [K/n, D] / `queue_labels` [K/n] this
  device's rows. A label < 0 (an unlabelled example, or an empty queue row) matches nothing; a key without any
  same-coarse row gets tmp = 0 (its target is then its own key only: the official code would divide 0 by 0).
  """
  sim = k @ queue.T.astype(k.dtype) / soft_temperature                                  # [B, K/n]
  same = (labels[:, None] == queue_labels[None, :]) & (labels[:, None] >= 0)
  top = parallel.pmax(jnp.max(jnp.where(same, sim, -jnp.inf), axis=1), axis_name)        # [B]
  top = jnp.where(jnp.isfinite(top), top, 0.0)
  tmp = jnp.where(same, jnp.exp(jnp.where(same, sim - top[:, None], 0.0)), 0.0)
  return tmp, parallel.psum(jnp.sum(tmp, axis=1), axis_name)


def maskcon_loss(q: jax.Array, k: jax.Array, queue: jax.Array, queue_labels: jax.Array, labels: jax.Array,
                 temperature: float, soft_temperature: float, w: float,
                 axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """MaskCon.forward (mode 'maskcon'): logits [q.k, q.queue^T] / T1 (the key at index 0), target
  w * [1, tmp] / (1 + sum tmp) + (1 - w) * [1, 0, ..., 0] (maskcon_targets' tmp: the key's similarity to the queue
  rows of its coarse class at T2), loss = -sum target * log_softmax(logits), mean over the global batch. w = 0 is
  MoCo's InfoNCE. Targets, keys and queue get no gradient.

  `q`, `k` [b, D] and `labels` [b] (coarse ids) are this device's rows (q, k normalised here); `queue` [K, D] and
  `queue_labels` [K] on one device, or this device's row slices with `axis_name`. Only [B]-sized partial sums cross
  devices (the queue is never gathered); the returned loss is the global one. Returns (loss, {"contrast_acc":
  fraction of queries whose key beats every queued row, "self_weight": mean target mass on the own key,
  "same_coarse": mean fraction of the queue sharing the query's coarse label}).
  """
  q = l2_normalize(q)
  k = jax.lax.stop_gradient(l2_normalize(k))
  queue = jax.lax.stop_gradient(queue)
  labels = labels.astype(jnp.int32)
  pos = jnp.sum(q * k, axis=-1) / temperature                                           # [b]
  all_q, all_pos = parallel.all_gather(q, axis_name), parallel.all_gather(pos, axis_name)
  all_k, all_labels = parallel.all_gather(k, axis_name), parallel.all_gather(labels, axis_name)
  tmp, total = maskcon_targets(all_k, queue, queue_labels, all_labels, soft_temperature, axis_name)
  tmp, total = jax.lax.stop_gradient(tmp), jax.lax.stop_gradient(total)
  logits = all_q @ queue.T.astype(all_q.dtype) / temperature                            # [B, K/n]
  # log-sum-exp over [pos, queue], shifted by the (gradient-free) global max for a stable, order-free sum.
  top = parallel.pmax(jax.lax.stop_gradient(jnp.max(logits, axis=1)), axis_name)
  shift = jnp.maximum(top, jax.lax.stop_gradient(all_pos))
  lse = shift + jnp.log(parallel.psum(jnp.sum(jnp.exp(logits - shift[:, None]), axis=1), axis_name)
                        + jnp.exp(all_pos - shift))
  soft = parallel.psum(jnp.sum(tmp * logits, axis=1), axis_name)                         # sum_j tmp_j l_j
  b = q.shape[0]
  offset = parallel.row_offset(b, axis_name)   # every device scored the whole batch; keep this device's rows
  take = lambda x: jax.lax.dynamic_slice(x, (offset,), (b,))
  lse, top, soft, total = take(lse), take(top), take(soft), take(total)
  self_weight = w / (1.0 + total) + (1.0 - w)                                           # target on index 0
  per_query = lse - self_weight * pos - (w / (1.0 + total)) * soft
  n = b * parallel.axis_size(axis_name)
  loss = parallel.psum(jnp.sum(per_query), axis_name) / n
  same = (all_labels[:, None] == queue_labels[None, :]) & (all_labels[:, None] >= 0)
  same_frac = take(parallel.psum(jnp.sum(same, axis=1).astype(jnp.float32), axis_name))
  rows = queue.shape[0] * parallel.axis_size(axis_name)
  metrics = {"contrast_acc": parallel.psum(jnp.sum((pos >= top).astype(jnp.float32)), axis_name) / n,
             "self_weight": parallel.psum(jnp.sum(self_weight), axis_name) / n,
             "same_coarse": parallel.psum(jnp.sum(same_frac), axis_name) / (n * rows)}
  return loss, metrics
