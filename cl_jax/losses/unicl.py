"""UniCL's bidirectional image-text-label contrastive loss, exact across devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses import ring
from cl_jax.losses.clip import logit_scale, ring_pair_loss
from cl_jax.losses.contrastive import l2_normalize


def unicl_loss(image_emb: jax.Array, text_emb: jax.Array, labels: jax.Array, log_scale: jax.Array,
               axis_name: str | None = None, impl: str = "gather") -> tuple[jax.Array, dict[str, jax.Array]]:
  """UniCL (Yang et al. 2022, Eq. 3-5): every pair (i, j) with y_i == y_j is a positive, in both directions.

  `labels` int [b]: the class id of image-label pairs (text = a class-name prompt), -1 for image-text pairs (each
  its own label). L_i2t = -mean_i 1/|P(i)| sum_{k in P(i)} log softmax_k(s_i. / T) over the N texts, L_t2i likewise
  over the N images; returned as (L_i2t + L_t2i) / 2 (the paper's Eq. 5 sum halved, so it equals `clip_loss` when
  every label is unique). With `axis_name`: local rows against the gathered global batch; the value and gradient
  equal the one-device loss over the global batch. Returns (loss, {"i2t_acc", "t2i_acc", "logit_scale"}), an
  accuracy counting the top-scored column correct when it is a positive.

  `impl="ring"` (cl_jax/losses/ring.py): the other modality's rows travel around the devices with their labels,
  positives are equal ring labels (the class id, or -1 - global index for a free caption, so a caption's only
  positive is its own pair), and |P(i)| and the positive logits are summed block by block; same value and gradient.
  """
  img, txt = l2_normalize(image_emb), l2_normalize(text_emb)
  scale = logit_scale(log_scale)
  if ring.check_impl(impl) == "ring":
    labels = labels.astype(jnp.int32)
    own = -1 - ring.global_rows(img.shape[0], axis_name)
    return ring_pair_loss(img, txt, scale, jnp.where(labels >= 0, labels, own), axis_name)
  all_img, all_txt = parallel.all_gather(img, axis_name), parallel.all_gather(txt, axis_name)
  all_labels = parallel.all_gather(labels.astype(jnp.int32), axis_name)
  offset = parallel.row_offset(img.shape[0], axis_name)
  n = all_img.shape[0]
  rows = offset + jnp.arange(img.shape[0])
  local_labels = labels.astype(jnp.int32)
  positive = (((local_labels[:, None] == all_labels[None, :]) & (local_labels[:, None] >= 0))
              | (rows[:, None] == jnp.arange(n)[None, :]))                       # [b, N], symmetric in i, j
  target = positive / jnp.sum(positive, axis=1, keepdims=True)
  loss, metrics = 0.0, {}
  for name, anchors, cols in (("i2t", img, all_txt), ("t2i", txt, all_img)):
    log_p = jax.nn.log_softmax(scale * anchors @ cols.T, axis=1)
    loss += parallel.psum(-jnp.sum(target * log_p), axis_name) / (2 * n)
    hit = jnp.take_along_axis(positive, jnp.argmax(log_p, axis=1)[:, None], axis=1)[:, 0]
    metrics[f"{name}_acc"] = parallel.psum(jnp.sum(hit.astype(jnp.float32)), axis_name) / n
  metrics["logit_scale"] = scale
  return loss, metrics
