"""Contrastive losses over L2-normalised embeddings, exact across devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses import ring

_MASKED = -1e9


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
  """x / ||x|| along the last axis, in float32."""
  x = x.astype(jnp.float32)
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def nt_xent(z1: jax.Array, z2: jax.Array, temperature: float,
            axis_name: str | None = None, impl: str = "gather") -> tuple[jax.Array, dict[str, jax.Array]]:
  """NT-Xent (SimCLR, Chen et al. 2020, Eq. 1 and Alg. 1): 2N views, each anchor's positive is its other view,
  the other 2N-2 views are negatives, mean over the 2N anchors.

  With `axis_name`, `z1`/`z2` are this device's rows; each local anchor is scored against the all-gathered global
  batch and the returned loss (replicated) and its gradient equal the one-device loss over the global batch.
  `impl="ring"` (cl_jax/losses/ring.py) passes the key blocks around the devices instead of gathering them; same
  value and gradient, with local x local logits per device.
  Returns (loss, {"contrast_acc": fraction of anchors whose positive scores highest}).
  """
  z1, z2 = l2_normalize(z1), l2_normalize(z2)
  if ring.check_impl(impl) == "ring":
    return _nt_xent_ring(z1, z2, temperature, axis_name)
  b = z1.shape[0]
  all1, all2 = parallel.all_gather(z1, axis_name), parallel.all_gather(z2, axis_name)
  offset = parallel.row_offset(b, axis_name)
  n = all1.shape[0]
  keys = jnp.concatenate([all1, all2])                       # [2N, D]
  anchors = jnp.concatenate([z1, z2])                        # [2b, D]
  logits = anchors @ keys.T / temperature                    # [2b, 2N]
  rows = offset + jnp.arange(b)
  self_idx = jnp.concatenate([rows, n + rows])
  pos_idx = jnp.concatenate([n + rows, rows])
  cols = jnp.arange(2 * n)
  logits = jnp.where(cols[None, :] == self_idx[:, None], _MASKED, logits)
  pos_logit = jnp.take_along_axis(logits, pos_idx[:, None], axis=1)[:, 0]
  per_anchor = jax.nn.logsumexp(logits, axis=1) - pos_logit
  correct = (jnp.argmax(logits, axis=1) == pos_idx).astype(jnp.float32)
  loss = parallel.psum(jnp.sum(per_anchor), axis_name) / (2 * n)
  acc = parallel.psum(jnp.sum(correct), axis_name) / (2 * n)
  return loss, {"contrast_acc": acc}


def _nt_xent_ring(z1: jax.Array, z2: jax.Array, temperature: float,
                  axis_name: str | None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """nt_xent with the keys [z1_d; z2_d] of each device d travelling around the ring (ring.softmax_rows): anchor and
  key labels are the global example index (so the positive is the other view), ids tell the views apart (self)."""
  b = z1.shape[0]
  n = b * parallel.axis_size(axis_name)
  rows = ring.global_rows(b, axis_name)
  z = jnp.concatenate([z1, z2])                              # [2b, D]: anchors, and this device's key block
  labels, ids = jnp.concatenate([rows, rows]), jnp.concatenate([rows, n + rows])
  per_anchor, hits = ring.softmax_rows(z, z, 1.0 / temperature, labels, labels, axis_name,
                                       anchor_ids=ids, key_ids=ids)
  loss = parallel.psum(jnp.sum(per_anchor), axis_name) / (2 * n)
  acc = parallel.psum(jnp.sum(hits), axis_name) / (2 * n)
  return loss, {"contrast_acc": acc}
