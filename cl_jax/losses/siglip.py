"""SigLIP's pairwise sigmoid loss, chunked across devices by rotating the texts around the ring."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses import ring
from cl_jax.losses.contrastive import l2_normalize

LOG_TEMPERATURE_INIT = math.log(10.0)   # SigLIP Sec. 3.2: t' = log 10
BIAS_INIT = -10.0                       # SigLIP Sec. 3.2: b = -10


def _block_loss(img: jax.Array, txt: jax.Array, t: jax.Array, bias: jax.Array, diagonal: bool) -> jax.Array:
  """-sum log sigmoid(z_ij (t x_i.y_j + b)) of one local x local block; z = +1 on the diagonal when `diagonal`."""
  logits = t * img @ txt.T + bias
  z = 2.0 * jnp.eye(img.shape[0]) - 1.0 if diagonal else -1.0
  return -jnp.sum(jax.nn.log_sigmoid(z * logits))


def siglip_loss(image_emb: jax.Array, text_emb: jax.Array, log_temperature: jax.Array, bias: jax.Array,
                axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SigLIP (Zhai et al. 2023, Alg. 1 and Sec. 3.3): -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)), t = exp(t').

  With `axis_name` (Sec. 3.3, "efficient chunked implementation"): each device scores its images against its own
  texts, then passes its texts to the next device (`ppermute` around the ring) n - 1 times, so no device ever holds
  more than a local x local block of logits; the block sums are added over devices and divided by the global batch
  N. The backward pass rotates the texts again and recomputes each block (ring.sigmoid_sum, a custom_vjp): plain
  autodiff through the rotation loop would keep every block's logits, [b, N] per device. The value and gradient
  equal the one-device loss over the global batch. Returns (loss, {"temperature", "bias"}).
  """
  img, txt = l2_normalize(image_emb), l2_normalize(text_emb)
  t = jnp.exp(log_temperature.astype(jnp.float32))
  bias = bias.astype(jnp.float32)
  if axis_name is None:
    total, n = _block_loss(img, txt, t, bias, True), img.shape[0]
  else:
    rows = ring.global_rows(img.shape[0], axis_name)   # z_ij = +1 for the pair's own text only
    local = ring.sigmoid_sum(img, txt, t, bias, rows, rows, axis_name)
    total, n = parallel.psum(local, axis_name), img.shape[0] * parallel.axis_size(axis_name)
  return total / n, {"temperature": t, "bias": bias}
