"""PACL's patch-aligned contrastive loss (Mukhoti et al., CVPR 2023), exact across devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.clip import logit_scale
from cl_jax.losses.contrastive import l2_normalize


def patch_compatibility(patches: jax.Array, texts: jax.Array) -> jax.Array:
  """PACL Sec. 3.2 (Eq. 2-3): for every image and caption, the patches' cosine similarities to the caption,
  softmaxed over the patches, weight the patch embeddings; the compatibility is the cosine of that weighted sum
  with the caption. patches [b, N, D], texts [k, D] (unnormalised) -> [b, k]."""
  x, y = l2_normalize(patches), l2_normalize(texts)
  sim = jnp.einsum("bnd,kd->bkn", x, y)
  pooled = jnp.einsum("bkn,bnd->bkd", jax.nn.softmax(sim, axis=-1), x)
  return jnp.einsum("bkd,kd->bk", l2_normalize(pooled), y)


def pacl_loss(patches: jax.Array, texts: jax.Array, log_scale: jax.Array,
              axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """PACL (Sec. 3.2, Eq. 4): CLIP's symmetric InfoNCE with the patch-aligned compatibility as the logits (x the
  learned, clipped scale). With `axis_name` each device scores its images against the gathered global captions
  (rows of the global matrix, gathered for the caption->image direction, whose columns it takes for its own
  captions); the per-row sums are psum'd and divided by 2N, so value and gradient equal the one-device loss over
  the global batch. patches [b, N, D], texts [b, D] -> (loss, {"i2t_acc", "t2i_acc", "logit_scale"})."""
  scale = logit_scale(log_scale)
  b = patches.shape[0]
  rows = scale * patch_compatibility(patches, parallel.all_gather(texts, axis_name))   # [b, N_global]
  n = rows.shape[1]
  offset = parallel.row_offset(b, axis_name)
  target = offset + jnp.arange(b)
  cols = jax.lax.dynamic_slice_in_dim(parallel.all_gather(rows, axis_name), offset, b, axis=1).T   # [b, N_global]
  loss, metrics = 0.0, {}
  for name, logits in (("i2t", rows), ("t2i", cols)):
    pos = jnp.take_along_axis(logits, target[:, None], axis=1)[:, 0]
    loss += parallel.psum(jnp.sum(jax.nn.logsumexp(logits, axis=1) - pos), axis_name) / (2 * n)
    correct = (jnp.argmax(logits, axis=1) == target).astype(jnp.float32)
    metrics[f"{name}_acc"] = parallel.psum(jnp.sum(correct), axis_name) / n
  metrics["logit_scale"] = scale
  return loss, metrics
