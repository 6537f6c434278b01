"""CLIP's symmetric contrastive loss over image and text embeddings, exact across devices."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses import ring
from cl_jax.losses.contrastive import l2_normalize

LOGIT_SCALE_INIT = math.log(1 / 0.07)   # CLIP Sec. 2.5: temperature initialised to 0.07
LOGIT_SCALE_MAX = math.log(100.0)       # "clipped to prevent scaling the logits by more than 100"


def logit_scale(log_scale: jax.Array) -> jax.Array:
  """exp of the learnable log-scale, clipped at 100 (CLIP Sec. 2.5; the gradient is zero above the clip)."""
  return jnp.exp(jnp.minimum(log_scale.astype(jnp.float32), LOGIT_SCALE_MAX))


def clip_loss(image_emb: jax.Array, text_emb: jax.Array, log_scale: jax.Array,
              axis_name: str | None = None, impl: str = "gather") -> tuple[jax.Array, dict[str, jax.Array]]:
  """CLIP (Radford et al. 2021, Fig. 3): (CE(image->text) + CE(text->image)) / 2 over the N x N cosine logits.

  With `axis_name`, the embeddings are this device's rows: each local image is scored against the gathered global
  texts and each local text against the gathered global images; the per-row losses are summed over devices and
  divided by N, so the returned (replicated) loss and its gradient equal the one-device loss over the global batch
  (no device-count factor: the all_gather's transpose sums the cotangents of every device's rows once).
  `impl="ring"`: the texts (for image->text) and the images (for text->image) travel around the devices instead
  (cl_jax/losses/ring.py, positives = equal global index); same value and gradient, local x local logits.
  Returns (loss, {"i2t_acc", "t2i_acc", "logit_scale"}).
  """
  img, txt = l2_normalize(image_emb), l2_normalize(text_emb)
  scale = logit_scale(log_scale)
  if ring.check_impl(impl) == "ring":
    rows = ring.global_rows(img.shape[0], axis_name)
    return ring_pair_loss(img, txt, scale, rows, axis_name)
  all_img, all_txt = parallel.all_gather(img, axis_name), parallel.all_gather(txt, axis_name)
  offset = parallel.row_offset(img.shape[0], axis_name)
  n = all_img.shape[0]
  target = offset + jnp.arange(img.shape[0])
  loss, metrics = 0.0, {}
  for name, rows, cols in (("i2t", img, all_txt), ("t2i", txt, all_img)):
    logits = scale * rows @ cols.T                                    # [b, N]
    pos = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
    loss += parallel.psum(jnp.sum(jax.nn.logsumexp(logits, axis=1) - pos), axis_name) / (2 * n)
    correct = (jnp.argmax(logits, axis=1) == target).astype(jnp.float32)
    metrics[f"{name}_acc"] = parallel.psum(jnp.sum(correct), axis_name) / n
  metrics["logit_scale"] = scale
  return loss, metrics


def ring_pair_loss(img: jax.Array, txt: jax.Array, scale: jax.Array, labels: jax.Array,
                   axis_name: str | None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(L_i2t + L_t2i) / 2 over the global batch with ring.softmax_rows, positives = pairs of equal `labels` (the
  global index for CLIP; UniCL's label classes): each direction's keys travel around the ring."""
  n = img.shape[0] * parallel.axis_size(axis_name)
  loss, metrics = 0.0, {}
  for name, anchors, keys in (("i2t", img, txt), ("t2i", txt, img)):
    per_row, hits = ring.softmax_rows(anchors, keys, scale, labels, labels, axis_name)
    loss += parallel.psum(jnp.sum(per_row), axis_name) / (2 * n)
    metrics[f"{name}_acc"] = parallel.psum(jnp.sum(hits), axis_name) / n
  metrics["logit_scale"] = scale
  return loss, metrics
