"""Supervised contrastive loss (Khosla et al. 2020, Eq. 2 "L^sup_out"; official HobbitLong/SupContrast losses.py
SupConLoss, contrast_mode='all'), exact across devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.contrastive import l2_normalize

_MASKED = -1e9   # a finite "minus infinity": exp underflows to exactly 0 and no row can be all -inf (no NaN)


def supcon(z: jax.Array, labels: jax.Array | None, temperature: float, base_temperature: float = 0.07,
           axis_name: str | None = None, labelled_only: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Every view of the global batch is an anchor and the contrast set is all other views; an anchor's positives
  are the other views of its own example and of every example with the same label; per anchor the loss is
  -(t / base_t) * mean over positives of log softmax, then the mean over all anchors.

  `z` [V, b, D] this device's views (normalised here), `labels` [b] ints or None (SimCLR's NT-Xent: only the
  example's own views are positive). A label < 0 marks an unlabelled example: it is positive only with its own
  views. An anchor with no positive (V = 1 and a unique label) contributes 0, as the official code (no NaN).
  With `axis_name` the views and labels of the whole batch are all-gathered and the loss and its gradient equal
  the one-device loss over the global batch. Returns (loss, {"contrast_acc": fraction of anchors whose
  highest-scoring other view is a positive, "positives": mean positives per anchor}).

  `labelled_only` is SupCon as GCD and DCCL call it (official GCD/DCCL `sup_con_crit(feats[label_masks],
  labels[label_masks])`): unlabelled examples are neither anchor nor contrast, the mean runs over the labelled
  anchors that have a positive, and a global batch without a label gives 0.
  """
  v, b, _ = z.shape
  z = l2_normalize(z)
  offset = parallel.row_offset(b, axis_name)
  local_ids = offset + jnp.arange(b)
  if labels is None:
    local_key = -(local_ids + 1)
  else:
    local_key = jnp.where(labels >= 0, labels.astype(jnp.int32), -(local_ids + 1))
  keys = parallel.all_gather(local_key, axis_name)                                   # [N]
  n = keys.shape[0]
  gathered = z if axis_name is None else jax.lax.all_gather(z, axis_name, axis=1, tiled=True)     # [V, N, D]
  contrast = gathered.reshape(v * n, -1)
  anchors = z.reshape(v * b, -1)                                                     # view-major, as contrast
  logits = anchors @ contrast.T / temperature                                        # [V b, V N]
  self_col = (jnp.arange(v)[:, None] * n + local_ids[None, :]).reshape(-1)
  usable = jnp.arange(v * n)[None, :] != self_col[:, None]
  if labelled_only:
    usable = usable & (jnp.tile(keys, v)[None, :] >= 0)
  positive = (jnp.tile(keys, v)[None, :] == jnp.tile(local_key, v)[:, None]) & usable
  logits = jnp.where(usable, logits, _MASKED)
  log_prob = logits - jax.nn.logsumexp(logits, axis=1, keepdims=True)
  count = jnp.sum(positive, axis=1)
  mean_pos = jnp.sum(jnp.where(positive, log_prob, 0.0), axis=1) / jnp.maximum(count, 1)
  anchor = ((jnp.tile(local_key, v) >= 0) & (count > 0)) if labelled_only else jnp.ones((v * b,), bool)
  per_anchor = jnp.where(anchor, -(temperature / base_temperature) * mean_pos, 0.0)
  total = jnp.maximum(parallel.psum(jnp.sum(anchor).astype(jnp.float32), axis_name), 1.0)
  loss = parallel.psum(jnp.sum(per_anchor), axis_name) / total
  hit = anchor & jnp.take_along_axis(positive, jnp.argmax(logits, axis=1)[:, None], axis=1)[:, 0]
  acc = parallel.psum(jnp.sum(hit.astype(jnp.float32)), axis_name) / total
  positives = parallel.psum(jnp.sum(jnp.where(anchor, count, 0)).astype(jnp.float32), axis_name) / total
  return loss, {"contrast_acc": acc, "positives": positives}
