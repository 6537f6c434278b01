"""CPC's InfoNCE over a grid of patch vectors, exact across devices (van den Oord et al. 2018, Eq. 4; Henaff et al.
2020, Eq. 1-2)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel


def cpc_infonce(preds: jax.Array, z: jax.Array,
                axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_N of CPC (van den Oord et al. 2018, Eq. 4; CPC v2, Henaff et al. 2020, Eq. 2) averaged over every (image,
  position (i, j), offset k) with i + k < G: -log softmax of the scores z_l^T W_k c_{i,j} over all patch vectors
  z_l of the GLOBAL batch, the positive being z_{i+k,j} of the same image.

  `preds` [b, K, G, W, D] holds preds[n, k - 1, i, j] = W_k c_{i,j}; `z` [b, G, W, D] the patch vectors (both get
  gradients). With `axis_name`, both are this device's images: the patch vectors are all-gathered as negatives,
  the positive of a local query sits at (device index * b * G * W + local flat index), and the returned loss
  (replicated) and its gradient equal the one-device loss over the global batch. Returns
  (loss, {"contrast_acc": fraction of predictions whose positive scores highest}).
  """
  b, steps, g, w, d = preds.shape
  if z.shape != (b, g, w, d):
    raise ValueError(f"cpc_infonce: patch vectors {z.shape} do not match predictions {preds.shape}; "
                     "want z [b, G, W, D] and preds [b, K, G, W, D].")
  if steps >= g:
    raise ValueError(f"cpc_infonce: {steps} prediction steps need a grid of more than {steps} rows, got {g}.")
  flat = jnp.arange(b * g * w).reshape(b, g, w)                     # local flat index of each patch vector
  queries = jnp.concatenate([preds[:, k - 1, :g - k].reshape(-1, d) for k in range(1, steps + 1)])
  labels = jnp.concatenate([flat[:, k:].reshape(-1) for k in range(1, steps + 1)])
  labels = labels + parallel.row_offset(b * g * w, axis_name)
  keys = parallel.all_gather(z.reshape(-1, d).astype(jnp.float32), axis_name)   # [B * G * W, D], image-major
  logits = queries.astype(jnp.float32) @ keys.T
  per_query = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  correct = (jnp.argmax(logits, axis=1) == labels).astype(jnp.float32)
  count = parallel.psum(jnp.asarray(queries.shape[0], jnp.float32), axis_name)
  loss = parallel.psum(jnp.sum(per_query), axis_name) / count
  return loss, {"contrast_acc": parallel.psum(jnp.sum(correct), axis_name) / count}
