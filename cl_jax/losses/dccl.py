"""DCCL's losses (Pu, Zhong & Sebe, CVPR 2023; official TPCD/DCCL G0_CUB200.py `train`): GCD's SupCon over the
labelled views (Vaze et al. 2022, Sec. 3.1, Eq. 2), the concept loss against a concept memory (DCCL Sec. 3.3,
official project_utils/cluster_memory_utils.py `ClusterMemory`) and the memory's momentum update (`CM.backward`),
all exact across devices. GCD's unsupervised InfoNCE is cl_jax/losses/contrastive.py `nt_xent` (the official
`info_nce_logits` + cross-entropy is NT-Xent over the two views)."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.contrastive import l2_normalize, nt_xent
from cl_jax.losses.supcon import supcon

_MASKED = -1e9   # a finite "minus infinity": exp underflows to exactly 0 and no row can be all -inf (no NaN)


def gather_invariant(x: jax.Array, axis_name: str | None, axis: int = 0) -> jax.Array:
  """The rows of `x` of every device along `axis`, in device order, as a device-INVARIANT value (a psum of each
  device's rows placed in zeros, exact: x + 0 = x), so it can update replicated state; identity on one device."""
  if axis_name is None:
    return x
  x = jax.lax.stop_gradient(x)
  b, n = x.shape[axis], parallel.axis_size(axis_name)
  shape = x.shape[:axis] + (n * b,) + x.shape[axis + 1:]
  start = [0] * x.ndim
  start[axis] = parallel.row_offset(b, axis_name)
  return jax.lax.psum(jax.lax.dynamic_update_slice(jnp.zeros(shape, x.dtype), x, start), axis_name)


def labelled_supcon(z: jax.Array, labels: jax.Array, temperature: float, base_temperature: float = 0.07,
                    axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """SupCon (Khosla et al. 2020, Eq. 2) over the LABELLED views only, as GCD and DCCL call it (official
  G0_CUB200.py: `sup_con_crit(sup_con_feats[label_masks], labels[label_masks])`): cl_jax/losses/supcon.py with
  `labelled_only`. `z` [V, b, D], `labels` [b] (< 0 = unlabelled). Returns (loss, {"labelled_frac"})."""
  loss, _ = supcon(z, labels, temperature, base_temperature, axis_name, labelled_only=True)
  all_labels = parallel.all_gather(labels.astype(jnp.int32), axis_name)
  return loss, {"labelled_frac": jnp.mean((all_labels >= 0).astype(jnp.float32))}


def concept_loss(features: jax.Array, targets: jax.Array, memory: jax.Array, valid: jax.Array, temperature: float,
                 axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DCCL's conceptional contrastive loss (Sec. 3.3; official `ClusterMemory.forward`): cross-entropy of the
  L2-normalised features against the concept memory at `temperature`, target = the example's concept, mean over
  the anchors that have one.

  `features` [M, d] this device's anchors (all views), `targets` [M] their concept ids (< 0: an outlier of the
  clustering, no term), `memory` [K, d] unit rows (no gradient), `valid` [K] the rows holding a concept (the others
  are masked out, as the official memory has exactly the found number of rows). No anchor with a concept gives 0.
  Returns (loss, {"concept_acc": fraction of those anchors whose nearest concept is their own,
  "concept_coverage": fraction of anchors with a concept}).
  """
  f = l2_normalize(features)
  logits = f @ jax.lax.stop_gradient(memory).T / temperature                       # [M, K]
  logits = jnp.where(valid[None, :], logits, _MASKED)
  has = targets >= 0
  safe = jnp.where(has, targets, 0).astype(jnp.int32)
  target_logit = jnp.take_along_axis(logits, safe[:, None], axis=1)[:, 0]
  ce = jax.nn.logsumexp(logits, axis=1) - target_logit
  total = parallel.psum(jnp.sum(has).astype(jnp.float32), axis_name)
  loss = parallel.psum(jnp.sum(jnp.where(has, ce, 0.0)), axis_name) / jnp.maximum(total, 1.0)
  hit = has & (jnp.argmax(logits, axis=1) == safe)
  acc = parallel.psum(jnp.sum(hit).astype(jnp.float32), axis_name) / jnp.maximum(total, 1.0)
  anchors = parallel.psum(jnp.asarray(features.shape[0], jnp.float32), axis_name)
  return loss, {"concept_acc": acc, "concept_coverage": total / anchors}


def memory_update(memory: jax.Array, features: jax.Array, targets: jax.Array, momentum: float) -> jax.Array:
  """The concept memory's momentum update (official `CM.backward`): for each anchor in order, its concept's row
  m_y <- normalize(momentum * m_y + (1 - momentum) * f) with f its L2-normalised feature; anchors without a
  concept (< 0) change nothing. Sequential, as the official loop over the batch: two anchors of one concept in a
  batch compound. Pass the GLOBAL batch's anchors in global order (views-major: all first views, then all second
  views, the official torch.cat(images)) so every device computes the same memory."""
  f = l2_normalize(jax.lax.stop_gradient(features)).astype(memory.dtype)

  def one(mem, xy):
    x, y = xy
    row_id = jnp.maximum(y, 0)
    row = jax.lax.dynamic_slice_in_dim(mem, row_id, 1, axis=0)[0]
    new = momentum * row + (1.0 - momentum) * x
    new = new * jax.lax.rsqrt(jnp.maximum(jnp.sum(new * new), 1e-24))
    new = jnp.where(y >= 0, new, row)
    return jax.lax.dynamic_update_slice_in_dim(mem, new[None], row_id, axis=0), None

  memory, _ = jax.lax.scan(one, memory, (f, targets.astype(jnp.int32)))
  return memory


def concept_weight(step: jax.Array, steps_per_epoch: int, weight: float, ramp_from: float,
                   ramp_epochs: int) -> jax.Array:
  """The concept-loss weight of the step's epoch (official `contrastive_cluster_weight_schedule`):
  linspace(ramp_from * weight, weight, ramp_epochs)[epoch] for the first `ramp_epochs` epochs, then `weight`."""
  epoch = jnp.asarray(step, jnp.int32) // max(int(steps_per_epoch), 1)
  start = ramp_from * weight
  if ramp_epochs <= 1:
    return jnp.where(epoch < ramp_epochs, start, weight).astype(jnp.float32)
  frac = jnp.minimum(epoch, ramp_epochs - 1).astype(jnp.float32) / (ramp_epochs - 1)
  return jnp.where(epoch < ramp_epochs, start + (weight - start) * frac, weight).astype(jnp.float32)


def dccl_loss(h: jax.Array, p: jax.Array, labels: jax.Array, concept_ids: jax.Array, memory: jax.Array,
              valid: jax.Array, *, sup_weight: float, temperature: float, supcon_temperature: float,
              supcon_base_temperature: float, concept_temperature: float, concept_w: jax.Array | float | None,
              axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """DCCL's objective (official G0_CUB200.py `base_total_loss`): (1 - sup_weight) InfoNCE over all views +
  sup_weight SupCon over the labelled views (GCD, Vaze et al. 2022, Eq. 3) + concept_w x the concept loss.

  `h` [2b, d] backbone features and `p` [2b, D] head outputs of this device's two views (views-major: all first
  views, then all second views), `labels` [b] (< 0 unlabelled), `concept_ids` [b] (< 0 outliers), `memory` [K, d],
  `valid` [K]; `concept_w` None leaves the concept term out (GCD). InfoNCE is NT-Xent (`info_nce_logits` +
  cross-entropy). Returns (loss, metrics)."""
  b = labels.shape[0]
  nce, nce_metrics = nt_xent(p[:b], p[b:], temperature, axis_name=axis_name)
  sup, sup_metrics = labelled_supcon(p.reshape(2, b, -1), labels, supcon_temperature, supcon_base_temperature,
                                     axis_name)
  loss = (1.0 - sup_weight) * nce + sup_weight * sup
  metrics = {"infonce": nce, "supcon": sup, "contrast_acc": nce_metrics["contrast_acc"], **sup_metrics}
  if concept_w is not None:
    closs, cmetrics = concept_loss(h, jnp.tile(concept_ids, 2), memory, valid, concept_temperature, axis_name)
    loss = loss + concept_w * closs
    metrics.update({"concept": closs, **cmetrics})
  return loss, metrics
