"""Ring-chunked contrastive losses: key blocks travel around the devices, so no device ever holds more than a
local x local block of logits, in the forward or the backward pass.

The all-gather implementation (`contrastive_impl="gather"`, the default) scores each device's b anchors against
the N gathered keys: a [b, N] logit matrix per device, plus the same again for its softmax in the backward pass.
The ring implementation (`"ring"`) follows ring attention (Liu, Zaharia, Abbeel 2023, "Ring Attention with
Blockwise Transformers for Near-Infinite Context", Sec. 3): every device keeps its anchors and passes its key block
to the next device with `lax.ppermute`, n - 1 times, scoring one [b, b] block per visit. Device d sees its own
block first, then the blocks of devices d-1, d-2, ...

Softmax losses need each anchor row's log-sum-exp over all N keys; it is accumulated online block by block as in
flash attention (Dao et al. 2022, "FlashAttention", Sec. 3.1, the online softmax of Milakov & Gimelshein 2018):
a running row max m and sum s, merged with a block's logits l as m' = max(m, max_j l_j),
s' = s exp(m - m') + sum_j exp(l_j - m'), and lse = m + log s after the last block.

The backward pass is a `jax.custom_vjp` (flash attention's recomputation, Sec. 3.1; ring attention's blockwise
backward): it keeps only the local inputs and O(local) row statistics (row max and sum, positive counts),
rotates the key blocks around the ring again and recomputes each block's logits; a block's key cotangent travels
with the block and is back at its owner after n rotations. Per device the memory is one [b, b] block of logits (and its
cotangent) plus O(b x dim) for the travelling block, independent of the number of devices; plain autodiff through
the rotation loop would instead keep every block's residuals, i.e. [b, N] again.

`softmax_rows` gives the per-row InfoNCE terms of NT-Xent, CLIP, UniCL and MoCo v3; `sigmoid_sum` gives SigLIP's
pairwise sigmoid sum (Zhai et al. 2023, Sec. 3.3). Positives are the (anchor, key) pairs with equal labels, so
one primitive serves instance positives (label = global example index) and UniCL's label positives.
"""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp

from cl_jax import parallel

IMPLS = ("gather", "ring")
_MASKED = -1e9   # as the gathered losses: a finite mask keeps exp() and the online max free of inf - inf


def check_impl(impl: str) -> str:
  """`impl` if it is a known contrastive implementation, else a one-line error naming the allowed values."""
  if impl not in IMPLS:
    raise ValueError(f"contrastive_impl={impl!r} is unknown; set config.parallel.contrastive_impl to one of: "
                     f"{', '.join(IMPLS)}.")
  return impl


def contrastive_impl(config: Any) -> str:
  """config.parallel.contrastive_impl: 'gather' (default, all-gather the keys) or 'ring' (this module)."""
  return check_impl(config.get("parallel", {}).get("contrastive_impl", "gather"))


# ----------------------------------------------------------------------------- the ring


def _rotate(tree: Any, axis_name: str) -> Any:
  """Every leaf moves from device d to device d + 1 (mod n)."""
  n = jax.lax.axis_size(axis_name)
  perm = [(d, (d + 1) % n) for d in range(n)]
  return jax.tree.map(lambda x: jax.lax.ppermute(x, axis_name, perm), tree)


def fold(block: Callable[[Any, Any], Any], carry: Any, travel: Any, axis_name: str | None) -> Any:
  """carry <- block(carry, travelling block) over the n blocks of the ring, own block first (n - 1 rotations)."""
  carry = block(carry, travel)
  n = parallel.axis_size(axis_name)
  if n == 1:
    return carry

  def step(state, _):
    carry, travel = state
    travel = _rotate(travel, axis_name)
    return (block(carry, travel), travel), None

  (carry, _), _ = jax.lax.scan(step, (carry, travel), None, length=n - 1)
  return carry


def fold_backward(block: Callable[[Any, Any, Any], tuple[Any, Any]], carry: Any, keys: Any, meta: Any,
                  axis_name: str | None, key_grads: bool = True) -> tuple[Any, Any]:
  """The backward ring: (carry, d_block) <- block(carry, keys block, meta block) over the n blocks, own block first.

  Each block's cotangent accumulator travels with the block (n - 1 rotations) and takes one more step home, so the
  returned cotangent is that of this device's own `keys`, summed over every device's anchors. Without
  `key_grads` (keys under stop_gradient) nothing but the keys travels and the cotangent is None.
  """
  def visit(carry, keys, meta, d_keys):
    carry, d = block(carry, keys, meta)
    return carry, (jax.tree.map(jnp.add, d_keys, d) if key_grads else None)

  carry, d_keys = visit(carry, keys, meta, jax.tree.map(jnp.zeros_like, keys) if key_grads else None)
  if parallel.axis_size(axis_name) == 1:
    return carry, d_keys

  def step(state, _):
    carry, keys, meta, d_keys = state
    keys, meta, d_keys = _rotate((keys, meta, d_keys), axis_name)
    carry, d_keys = visit(carry, keys, meta, d_keys)
    return (carry, keys, meta, d_keys), None

  (carry, _, _, d_keys), _ = jax.lax.scan(step, (carry, keys, meta, d_keys), None,
                                          length=parallel.axis_size(axis_name) - 1)
  return carry, (_rotate(d_keys, axis_name) if key_grads else None)


def _varying(x: jax.Array, axis_name: str | None) -> jax.Array:
  """`x` typed as varying over the axis (a replicated scalar such as a temperature): the custom_vjp's cotangent for
  it is then this device's partial sum, and the implicit broadcast's transpose adds the devices' parts."""
  if axis_name is None or parallel.is_varying(x, axis_name):
    return x
  return jax.lax.pcast(x, axis_name, to="varying")


# ----------------------------------------------------------------------------- softmax (InfoNCE) rows


def _softmax_block(anchors, keys, scale, a_meta, k_meta, exclude_self):
  """(dots, logits, positives) of one [m, k] block: logits = scale * a.k with excluded pairs at _MASKED."""
  (a_label, a_id), (k_label, k_id) = a_meta, k_meta
  dots = anchors @ keys.T
  logits = scale * dots
  positive = a_label[:, None] == k_label[None, :]
  if exclude_self:
    excluded = a_id[:, None] == k_id[None, :]
    logits = jnp.where(excluded, _MASKED, logits)
    positive = positive & ~excluded
  return dots, logits, positive


def _softmax_forward(anchors, keys, scale, a_meta, k_meta, axis_name, exclude_self):
  """(rows, hits, (row max, row sum of exp(l - max)), positive counts) with the online log-sum-exp over the ring's
  blocks (lse = max + log sum)."""
  def block(carry, travel):
    row_max, row_sum, pos_sum, pos_count, hit = carry
    _, logits, positive = _softmax_block(anchors, travel[0], scale, a_meta, travel[1], exclude_self)
    block_max = jnp.max(logits, axis=1)
    new_max = jnp.maximum(row_max, block_max)
    row_sum = row_sum * jnp.exp(row_max - new_max) + jnp.sum(jnp.exp(logits - new_max[:, None]), axis=1)
    pos_sum = pos_sum + jnp.sum(jnp.where(positive, logits, 0.0), axis=1)
    pos_count = pos_count + jnp.sum(positive, axis=1, dtype=jnp.float32)
    top_is_positive = jnp.take_along_axis(positive, jnp.argmax(logits, axis=1)[:, None], axis=1)[:, 0]
    hit = jnp.where(block_max > row_max, top_is_positive.astype(jnp.float32), hit)
    return new_max, row_sum, pos_sum, pos_count, hit

  m = anchors.shape[0]
  zeros = jnp.zeros((m,), jnp.float32)
  init = (jnp.full((m,), -jnp.inf, jnp.float32), zeros, zeros, zeros, zeros)
  row_max, row_sum, pos_sum, pos_count, hit = fold(block, init, (keys, k_meta), axis_name)
  return row_max + jnp.log(row_sum) - pos_sum / pos_count, hit, (row_max, row_sum), pos_count


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _softmax_rows(anchors, keys, scale, a_meta, k_meta, axis_name, exclude_self, key_grads):
  rows, hit, _, _ = _softmax_forward(anchors, keys, scale, a_meta, k_meta, axis_name, exclude_self)
  return rows, hit


def _softmax_rows_fwd(anchors, keys, scale, a_meta, k_meta, axis_name, exclude_self, key_grads):
  del key_grads
  rows, hit, stats, count = _softmax_forward(anchors, keys, scale, a_meta, k_meta, axis_name, exclude_self)
  return (rows, hit), (anchors, keys, scale, a_meta, k_meta, stats, count)


def _softmax_rows_bwd(axis_name, exclude_self, key_grads, residuals, cotangents):
  anchors, keys, scale, a_meta, k_meta, (row_max, row_sum), count = residuals
  g = cotangents[0]   # the hits carry no gradient

  def block(carry, keys_blk, meta_blk):
    d_anchors, d_scale = carry
    dots, logits, positive = _softmax_block(anchors, keys_blk, scale, a_meta, meta_blk, exclude_self)
    # d row_i / d l_ij = softmax_ij - [j in P(i)] / |P(i)|; excluded pairs have softmax 0 and are not positives.
    # softmax = exp(l - max) / sum as jax.nn.logsumexp's own gradient: exp(l - lse) would carry lse's rounding
    # (~1 ulp of the largest logit) into every probability, seen in the learned scale's gradient at logits ~100.
    softmax = jnp.exp(logits - row_max[:, None]) / row_sum[:, None]
    d_logits = g[:, None] * (softmax - positive / count[:, None])
    d_anchors = d_anchors + scale * (d_logits @ keys_blk)
    d_scale = d_scale + jnp.sum(d_logits * dots)
    return (d_anchors, d_scale), (scale * (d_logits.T @ anchors) if key_grads else None)

  (d_anchors, d_scale), d_keys = fold_backward(block, (jnp.zeros_like(anchors), jnp.zeros_like(scale)), keys,
                                               k_meta, axis_name, key_grads)
  return d_anchors, (jnp.zeros_like(keys) if d_keys is None else d_keys), d_scale, None, None


_softmax_rows.defvjp(_softmax_rows_fwd, _softmax_rows_bwd)


def softmax_rows(anchors: jax.Array, keys: jax.Array, scale: jax.Array | float, anchor_labels: jax.Array,
                 key_labels: jax.Array, axis_name: str | None, *, anchor_ids: jax.Array | None = None,
                 key_ids: jax.Array | None = None, key_grads: bool = True) -> tuple[jax.Array, jax.Array]:
  """Per local anchor i, the InfoNCE term over the keys of every device (ring, custom backward):

    row_i = log sum_j exp(l_ij) - 1/|P(i)| sum_{j in P(i)} l_ij,   l_ij = scale * a_i . k_j,

  P(i) the keys whose label equals anchor i's; with `anchor_ids`/`key_ids`, pairs with equal ids are left out of
  both sums (NT-Xent's self-similarity). With |P(i)| = 1 this is the cross-entropy of SimCLR's Eq. 1, CLIP's Fig. 3
  (per direction) and MoCo v3's ctr (Alg. 1); with label classes it is UniCL's Eq. 3-4.
  Returns (rows [m], hits [m]: 1 where the top-scored key is a positive). `keys` [k, D] are this device's keys;
  every device must hold the same k. `scale` may be learned (CLIP); `key_grads=False` skips the keys' cotangent
  (MoCo's momentum keys).
  """
  exclude_self = anchor_ids is not None
  a_meta = (anchor_labels.astype(jnp.int32), (anchor_ids if exclude_self else anchor_labels).astype(jnp.int32))
  k_meta = (key_labels.astype(jnp.int32), (key_ids if exclude_self else key_labels).astype(jnp.int32))
  anchors, keys = _varying(anchors, axis_name), _varying(keys, axis_name)
  scale = _varying(jnp.asarray(scale, jnp.float32), axis_name)
  a_meta, k_meta = jax.tree.map(lambda x: _varying(x, axis_name), (a_meta, k_meta))
  return _softmax_rows(anchors, keys, scale, a_meta, k_meta, axis_name, exclude_self, key_grads)


# ----------------------------------------------------------------------------- sigmoid (SigLIP) sum


def _sigmoid_block(img, txt, t, bias, a_label, k_label):
  """(dots, z, logits) of one block: z_ij = +1 for equal labels, -1 otherwise; logits = t x.y + b."""
  dots = img @ txt.T
  z = jnp.where(a_label[:, None] == k_label[None, :], 1.0, -1.0)
  return dots, z, t * dots + bias


def _sigmoid_forward(img, txt, t, bias, a_label, k_label, axis_name):
  def block(total, travel):
    _, z, logits = _sigmoid_block(img, travel[0], t, bias, a_label, travel[1])
    return total - jnp.sum(jax.nn.log_sigmoid(z * logits))
  return fold(block, jnp.zeros((), jnp.float32), (txt, k_label), axis_name)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _sigmoid_sum(img, txt, t, bias, a_label, k_label, axis_name):
  return _sigmoid_forward(img, txt, t, bias, a_label, k_label, axis_name)


def _sigmoid_sum_fwd(img, txt, t, bias, a_label, k_label, axis_name):
  return (_sigmoid_forward(img, txt, t, bias, a_label, k_label, axis_name),
          (img, txt, t, bias, a_label, k_label))


def _sigmoid_sum_bwd(axis_name, residuals, g):
  img, txt, t, bias, a_label, k_label = residuals

  def block(carry, txt_blk, label_blk):
    d_img, d_t, d_bias = carry
    dots, z, logits = _sigmoid_block(img, txt_blk, t, bias, a_label, label_blk)
    d_logits = -g * z * jax.nn.sigmoid(-z * logits)          # d/dl of -log sigmoid(z l)
    return ((d_img + t * (d_logits @ txt_blk), d_t + jnp.sum(d_logits * dots), d_bias + jnp.sum(d_logits)),
            t * (d_logits.T @ img))

  (d_img, d_t, d_bias), d_txt = fold_backward(
      block, (jnp.zeros_like(img), jnp.zeros_like(t), jnp.zeros_like(bias)), txt, k_label, axis_name)
  return d_img, d_txt, d_t, d_bias, None, None


_sigmoid_sum.defvjp(_sigmoid_sum_fwd, _sigmoid_sum_bwd)


def sigmoid_sum(img: jax.Array, txt: jax.Array, t: jax.Array, bias: jax.Array, img_labels: jax.Array,
                txt_labels: jax.Array, axis_name: str | None) -> jax.Array:
  """This device's part of SigLIP's sum (Zhai et al. 2023, Alg. 1): -sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b))
  over its images i and the texts j of every device (ring, custom backward); z_ij = +1 when the labels are equal."""
  v = lambda x: _varying(x, axis_name)
  return _sigmoid_sum(v(img), v(txt), v(jnp.asarray(t, jnp.float32)), v(jnp.asarray(bias, jnp.float32)),
                      v(img_labels.astype(jnp.int32)), v(txt_labels.astype(jnp.int32)), axis_name)


def global_rows(local_rows: int, axis_name: str | None) -> jax.Array:
  """The global example index of each of this device's rows (contiguous blocks of `local_rows` per device)."""
  return parallel.row_offset(local_rows, axis_name) + jnp.arange(local_rows)
