"""MoCo v3's InfoNCE: local queries against the keys of the whole global batch (Chen, Xie, He 2021, Alg. 1)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses import ring
from cl_jax.losses.contrastive import l2_normalize


def moco_v3_ctr(q: jax.Array, k: jax.Array, temperature: float,
                axis_name: str | None = None, impl: str = "gather") -> tuple[jax.Array, dict[str, jax.Array]]:
  """ctr(q, k) of MoCo v3 (Chen, Xie, He 2021, Eq. 1 and Alg. 1): cross-entropy of q_i against all keys with
  k_i as the positive, scaled by 2 * tau as the official code.

  `k` comes from the momentum encoder and gets no gradient. With `axis_name`, `q`/`k` are this device's rows;
  keys are all-gathered, each local query's positive sits at (device index * local batch + row), and the returned
  loss (replicated) and its gradient equal the one-device loss over the global batch. Returns
  (loss, {"contrast_acc": fraction of queries whose positive key scores highest}).
  `impl="ring"` (cl_jax/losses/ring.py): the keys travel around the devices instead of being gathered (and, having
  no gradient, travel back with none); same value and gradient, local x local logits.
  """
  q, k = l2_normalize(q), l2_normalize(jax.lax.stop_gradient(k))
  b = q.shape[0]
  if ring.check_impl(impl) == "ring":
    rows = ring.global_rows(b, axis_name)
    per_query, hits = ring.softmax_rows(q, k, 1.0 / temperature, rows, rows, axis_name, key_grads=False)
    count = b * parallel.axis_size(axis_name)
    total, hits = parallel.psum(jnp.sum(per_query), axis_name), parallel.psum(jnp.sum(hits), axis_name)
    return total / count * (2.0 * temperature), {"contrast_acc": hits / count}
  keys, offset = parallel.all_gather(k, axis_name), parallel.row_offset(b, axis_name)
  logits = q @ keys.T / temperature                                    # [b, N]
  labels = offset + jnp.arange(b)
  per_query = jax.nn.logsumexp(logits, axis=1) - jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  correct = (jnp.argmax(logits, axis=1) == labels).astype(jnp.float32)
  total, hits, count = (parallel.psum(x, axis_name)
                        for x in (jnp.sum(per_query), jnp.sum(correct), jnp.asarray(b, jnp.float32)))
  return total / count * (2.0 * temperature), {"contrast_acc": hits / count}
