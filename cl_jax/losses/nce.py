"""Non-parametric instance discrimination losses against a memory bank (InstDisc, Wu et al. 2018).

The bank may be split by rows over devices (this device's [N/n, D] slice with `axis_name`): queries and indices
are all-gathered (B x D and B x (m+1), small) and [B x (m+1)] partial dot products are psum-ed, never the bank.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.losses.queue import bank_logsumexp

NCE_EPS = 1e-7   # the official NCECriterion's eps


def bank_dots(queries: jax.Array, bank: jax.Array, indices: jax.Array, axis_name: str | None = None,
              dense: bool | None = None) -> jax.Array:
  """v_{indices[i, j]} . queries[i] for GLOBAL bank row indices [B, M], the bank possibly split by rows.

  Each device scores the rows it owns and the [B, M] partial results are psum-ed. `dense` picks how: True scores
  the queries against all local rows and picks columns ([B, N/n] logits), False gathers the M rows per query
  ([B, M, D]); None takes the cheaper.
  """
  local = bank.shape[0]
  rel = indices - parallel.row_offset(local, axis_name)
  owned = (rel >= 0) & (rel < local)
  rel = jnp.clip(rel, 0, local - 1)
  bank = jax.lax.stop_gradient(bank).astype(queries.dtype)
  if dense is None:
    dense = local <= indices.shape[1] * bank.shape[1]
  if dense:
    dots = jnp.take_along_axis(queries @ bank.T, rel, axis=1)
  else:
    dots = jnp.einsum("bmd,bd->bm", jnp.take(bank, rel, axis=0), queries)
  return parallel.psum(jnp.where(owned, dots, 0.0), axis_name)


def instdisc_nce(features: jax.Array, index: jax.Array, neg_index: jax.Array, bank: jax.Array, z: jax.Array,
                 temperature: float, num_data: int, axis_name: str | None = None,
                 dense: bool | None = None) -> tuple[jax.Array, jax.Array, dict[str, jax.Array]]:
  """InstDisc NCE (Wu et al. 2018, Eq. 5-8; official NCEAverage + NCECriterion).

  P(i|v) = exp(v_i . f / t) / Z for bank rows v_i (no gradient), Z estimated once as n * mean(exp(v.f/t)) over the
  first batch's positive and m noise scores (Eq. 8) and then fixed. With noise P_n = 1/n and m noise samples,
  h(i, v) = P(i|v) / (P(i|v) + m P_n) and the loss is -[log h(i, v_i) + sum_j log(1 - h(j, v_j'))] per example
  (Eq. 6), averaged over the global batch (eps 1e-7 as the official code).

  `features` [b, D] (normalised here), `index` [b] dataset indices of this device's examples, `neg_index` [b, m]
  uniform noise indices, `bank` [n, D] (or the local row slice with `axis_name`), `z` the stored constant
  (<= 0: not yet estimated). Returns (loss, Z used, {"nce_pos_prob": mean h(i, v_i)}).
  """
  f = l2_normalize(features)
  m = neg_index.shape[1]
  idx = parallel.all_gather(jnp.concatenate([index[:, None], neg_index], axis=1).astype(jnp.int32), axis_name)
  f_all = parallel.all_gather(f, axis_name)
  out = jnp.exp(bank_dots(f_all, bank, idx, axis_name, dense) / temperature)              # [B, m+1]
  z = jnp.where(z > 0, z, jax.lax.stop_gradient(jnp.mean(out)) * num_data)
  p = out / z
  noise = m / num_data
  ln_model = jnp.log(p[:, 0] / (p[:, 0] + noise + NCE_EPS))
  ln_noise = jnp.log(noise / (p[:, 1:] + noise + NCE_EPS))
  loss = -jnp.mean(ln_model + jnp.sum(ln_noise, axis=1))
  return loss, z, {"nce_pos_prob": jnp.mean(jnp.exp(ln_model))}


def instdisc_softmax(features: jax.Array, index: jax.Array, bank: jax.Array, temperature: float,
                     axis_name: str | None = None, num_data: int | None = None
                     ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """InstDisc non-parametric softmax (Wu et al. 2018, Eq. 2; official LinearAverage + cross-entropy): the exact
  -log exp(v_i . f_i / t) / sum_j exp(v_j . f_i / t) over all n bank rows, mean over the global batch.
  Rows from `num_data` on (padding to a multiple of the devices) are left out.

  Returns (loss, {"contrast_acc": fraction of examples whose own bank row scores highest}).
  """
  f_all = parallel.all_gather(l2_normalize(features), axis_name)
  idx = parallel.all_gather(index.astype(jnp.int32), axis_name)[:, None]
  pos = bank_dots(f_all, bank, idx, axis_name, dense=False)[:, 0] / temperature
  lse, top = bank_logsumexp(f_all, jax.lax.stop_gradient(bank), temperature, jnp.full_like(pos, -jnp.inf),
                            axis_name, num_data)
  return jnp.mean(lse - pos), {"contrast_acc": jnp.mean((pos >= top).astype(jnp.float32))}


def sampled_softmax(features: jax.Array, index: jax.Array, neg_index: jax.Array, bank: jax.Array,
                    temperature: float, axis_name: str | None = None,
                    dense: bool | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Softmax over the positive bank row and m sampled noise rows (CMC's official NCESoftmaxLoss, the "InfoNCE" of
  CMC Eq. 2 with the bank as the contrast set): -log exp(v_i . f / t) / sum_{j in {i} + noise} exp(v_j . f / t),
  mean over the global batch. Shapes as `instdisc_nce`.

  Returns (loss, {"contrast_acc": fraction of examples whose positive scores above every noise row}).
  """
  f_all = parallel.all_gather(l2_normalize(features), axis_name)
  idx = parallel.all_gather(jnp.concatenate([index[:, None], neg_index], axis=1).astype(jnp.int32), axis_name)
  logits = bank_dots(f_all, bank, idx, axis_name, dense) / temperature                 # [B, m+1], positive first
  loss = jnp.mean(jax.nn.logsumexp(logits, axis=1) - logits[:, 0])
  return loss, {"contrast_acc": jnp.mean((logits[:, 0] >= jnp.max(logits[:, 1:], axis=1)).astype(jnp.float32))}
