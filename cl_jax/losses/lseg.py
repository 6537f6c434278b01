"""LSeg's per-pixel cross-entropy over the label set (Li et al., ICLR 2022, Sec. 3.3), exact across devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel

IGNORE = -1   # target of pixels that carry no label of the training label set


def pixel_cross_entropy(logits: jax.Array, targets: jax.Array,
                        axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Mean over every labelled pixel of the global batch of CE(softmax over the label set), and its pixel accuracy.

  logits [b, H, W, K], targets int [b, H, W] in [0, K) or IGNORE. With `axis_name` the sums and the pixel count
  are psum'd, so value and gradient equal the one-device loss over the global batch."""
  valid = targets != IGNORE
  safe = jnp.where(valid, targets, 0)
  logits = logits.astype(jnp.float32)
  pos = jnp.take_along_axis(logits, safe[..., None], axis=-1)[..., 0]
  per_pixel = jnp.where(valid, jax.nn.logsumexp(logits, axis=-1) - pos, 0.0)
  count = jnp.maximum(parallel.psum(jnp.sum(valid.astype(jnp.float32)), axis_name), 1.0)
  loss = parallel.psum(jnp.sum(per_pixel), axis_name) / count
  hits = jnp.sum((valid & (jnp.argmax(logits, axis=-1) == safe)).astype(jnp.float32))
  return loss, {"pixel_acc": parallel.psum(hits, axis_name) / count}
