"""TCL's loss terms (Huang et al., CVPR 2023, "Twin Contrastive Learning with Noisy Labels", Sec. 3), each a
transcription of the official Hzzone/TCL code, exact across devices; and its host-side noise detection.

Device side (jax, `axis_name=None` meaning one device; with an axis name every mean is over the global batch and
value and gradient equal the one-device loss over it):
  bootstrap_targets   models/tcl/tcl_wrapper.py Wrapper.forward_cls_loss `comb`: the cross-supervised targets
  soft_cross_entropy  forward_cls_loss `CE`: -(t * log_softmax(logits)).sum(-1).mean()
  regularisers        Wrapper.forward_reg_loss: mean per-example entropy and the negative entropy of the mean
  mix_rows            tcl_wrapper.py `mixup` over cat([weak, strong1, strong2]) with one lambda and a permutation
  tcl_loss            TCL.train: contrastive + w_cls (cls1 + cls2) + w_ent ent + w_ne ne + w_align align
  tcl_objective       SimCLRWrapper.forward_loss: the targets (warm-up or bootstrapped, mixed) and tcl_loss
The contrastive term is cl_jax/losses/contrastive.py nt_xent (= the official utils/infonce.py InstanceLoss).

Host side (numpy, float64; scikit-learn's GaussianMixture):
  noise_detect        models/tcl/tcl.py TCL.noise_detect: class centres from the predictions, the features'
                      posterior over them, the per-example loss -posterior[label], min-max scaled, a 2-component GMM
                      and P(clean) = the posterior of the component with the smaller mean.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from cl_jax import parallel
from cl_jax.losses.contrastive import nt_xent


# ----------------------------------------------------------------------------------------------------- device side


def comb(p1: jax.Array, p2: jax.Array, lam: jax.Array) -> jax.Array:
  """(1 - lam) p1 + lam p2 (forward_cls_loss `comb`)."""
  return (1.0 - lam) * p1 + lam * p2


def bootstrap_targets(logits1: jax.Array, logits2: jax.Array, onehot: jax.Array, confidence: jax.Array,
                      scale1: jax.Array | float, scale2: jax.Array | float) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Cross-supervision targets (Sec. 3.3; forward_cls_loss): each strong view is taught by the other's prediction
  mixed with the noisy one-hot label by weight w = P(clean) * scale1, t1 = comb(p2, y, w), t2 = comb(p1, y, w); the
  mixup target bootstraps the twins' mean, comb((p1 + p2) / 2, y, P(clean) * scale2). No gradient (torch.no_grad).

  `logits1`, `logits2` [b, C] the classifier logits of the two strong views, `onehot` [b, C] the noisy labels,
  `confidence` [b] P(clean) from the last noise detection. Returns (t1, t2, t_mix), each [b, C].
  """
  p1 = jax.nn.softmax(jax.lax.stop_gradient(logits1), axis=-1)
  p2 = jax.nn.softmax(jax.lax.stop_gradient(logits2), axis=-1)
  c = confidence[:, None]
  return comb(p2, onehot, c * scale1), comb(p1, onehot, c * scale1), comb((p1 + p2) * 0.5, onehot, c * scale2)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array, axis_name: str | None = None) -> jax.Array:
  """-(targets * log_softmax(logits)).sum(-1), the mean over the global rows (forward_cls_loss `CE`)."""
  per_row = -jnp.sum(jax.lax.stop_gradient(targets) * jax.nn.log_softmax(logits, axis=-1), axis=-1)
  rows = per_row.shape[0] * parallel.axis_size(axis_name)
  return parallel.psum(jnp.sum(per_row), axis_name) / rows


def regularisers(logits: jax.Array, axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """(ent, ne) of forward_reg_loss (Sec. 3.3 entropy regularisation): ent = the mean over rows of each prediction's
  entropy (minimised: confident predictions), ne = sum_k pbar_k log pbar_k with pbar the mean prediction (minimised:
  balanced classes). pbar is the mean over the GLOBAL batch (the official takes it per GPU)."""
  log_p = jax.nn.log_softmax(logits, axis=-1)
  p = jnp.exp(log_p)
  rows = logits.shape[0] * parallel.axis_size(axis_name)
  ent = -parallel.psum(jnp.sum(p * log_p), axis_name) / rows
  p_mean = parallel.psum(jnp.sum(p, axis=0), axis_name) / rows
  return ent, jnp.sum(p_mean * jnp.log(p_mean))


def mixup_lambda(key: jax.Array, alpha: float) -> jax.Array:
  """One lambda for the batch: Beta(alpha, alpha), folded to max(lam, 1 - lam) (tcl_wrapper.py `mixup`)."""
  lam = jax.random.beta(key, alpha, alpha)
  return jnp.maximum(lam, 1.0 - lam)


def mixup_rows(b: int, axis_name: str | None = None) -> jax.Array:
  """[3b] this device's rows of the global mixup input cat([weak, strong1, strong2]) [3N, ...] (view-major over
  the global batch, as `mixup`'s torch.cat([im_w, im_q, im_k])): the rows of its own b examples in each view."""
  g = parallel.row_offset(b, axis_name) + jnp.arange(b)
  n = b * parallel.axis_size(axis_name)
  return jnp.concatenate([g, n + g, 2 * n + g])


def mix_rows(x_all: jax.Array, rows: jax.Array, perm: jax.Array, lam: jax.Array) -> jax.Array:
  """lam * x[rows] + (1 - lam) * x[perm[rows]]: rows `rows` of the mixup of the global `x_all` [M, ...] with its
  permutation `perm` [M] (`mixup`: input = lam * input + (1 - lam) * input[randind]). Applied to the images and, with
  the same perm and lam, to the targets (forward_cls_loss: comb(t[randind], t, lam))."""
  lam = lam.astype(x_all.dtype)
  return lam * x_all[rows] + (1.0 - lam) * x_all[perm[rows]]


class Weights(NamedTuple):
  """The weights of TCL.train's sum (official --cls_loss_weight, --ent_loss_weight, --ne_loss_weight,
  --align_loss_weight, all 1.0); `contrastive` has no official flag (1.0)."""
  cls: float = 1.0
  ent: float = 1.0
  ne: float = 1.0
  align: float = 1.0
  contrastive: float = 1.0


def tcl_loss(z1: jax.Array, z2: jax.Array, logits1: jax.Array, logits2: jax.Array, mix_logits: jax.Array,
             mix_z: jax.Array, prototypes: jax.Array, t1: jax.Array, t2: jax.Array, t_mix: jax.Array,
             temperature: float, weights: Weights = Weights(),
             axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """TCL's objective (TCL.train, SimCLRWrapper.forward_loss), every mean over the global batch:

    contrastive  nt_xent(z1, z2) at `temperature` over the gathered strong views (InstanceLoss, Sec. 3.4)
    cls          CE(logits1, t1) + CE(logits2, t2) + CE(mix_logits, t_mix)   (cls_loss1 + cls_loss2, Sec. 3.3)
    ent, ne      regularisers(cat([logits1, logits2, mix_logits]))           (forward_reg_loss)
    align        CE(mix_z @ prototypes.T / temperature, t_mix)                (align_loss: mixup images aligned
                                                                              with the class centres, Sec. 3.4)

  `z1`, `z2` [b, D] and `mix_z` [3b, D] unit projections; `logits*` classifier logits ([b, C], [3b, C]);
  `prototypes` [C, D] the class centres of the last noise detection; targets as `bootstrap_targets` (the mixup
  target already mixed by `mix_rows`; in the warm-up the one-hot noisy labels). Returns (loss, metrics).
  """
  contrastive, metrics = nt_xent(z1, z2, temperature, axis_name)
  cls1 = soft_cross_entropy(logits1, t1, axis_name) + soft_cross_entropy(logits2, t2, axis_name)
  cls2 = soft_cross_entropy(mix_logits, t_mix, axis_name)
  ent, ne = regularisers(jnp.concatenate([logits1, logits2, mix_logits]), axis_name)
  align = soft_cross_entropy(mix_z @ jax.lax.stop_gradient(prototypes).T / temperature, t_mix, axis_name)
  w = weights
  loss = w.contrastive * contrastive + w.cls * (cls1 + cls2) + w.ent * ent + w.ne * ne + w.align * align
  return loss, {**metrics, "contrastive": contrastive, "cls_loss1": cls1, "cls_loss2": cls2, "ent_loss": ent,
                "ne_loss": ne, "align_loss": align}


def tcl_objective(z: jax.Array, logits: jax.Array, onehot: jax.Array, confidence: jax.Array,
                  prototypes: jax.Array, scale1: jax.Array | float, scale2: jax.Array | float, warmup: jax.Array,
                  perm: jax.Array, lam: jax.Array, temperature: float, weights: Weights = Weights(),
                  axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """TCL's loss from one forward (SimCLRWrapper.forward_loss): `z` [6b, D] unit projections and `logits` [6b, C]
  of the rows [weak (b), mixup (3b, this device's `mixup_rows`), strong1 (b), strong2 (b)]; `onehot` [b, C] the
  noisy labels, `confidence` [b] their P(clean), `perm` [3N] and `lam` the mixup's. The targets are
  `bootstrap_targets`, or during the `warmup` (a traced bool) the one-hot noisy labels; the mixup target is mixed
  over the gathered batch with the images' perm and lam (targets_mix.repeat((3, 1)), comb(t[randind], t, lam)).
  Returns tcl_loss(...)."""
  b = onehot.shape[0]
  _, z_mix, z1, z2 = jnp.split(z, [b, 4 * b, 5 * b])
  _, logits_mix, logits1, logits2 = jnp.split(logits, [b, 4 * b, 5 * b])
  t1, t2, t_mix = bootstrap_targets(logits1, logits2, onehot, confidence, scale1, scale2)
  t1, t2, t_mix = (jnp.where(warmup, onehot, t) for t in (t1, t2, t_mix))
  t_mix_all = jnp.tile(parallel.all_gather(t_mix, axis_name), (3, 1))
  t_mix = mix_rows(t_mix_all, mixup_rows(b, axis_name), perm, lam)
  return tcl_loss(z1, z2, logits1, logits2, logits_mix, z_mix, prototypes, t1, t2, t_mix, temperature, weights,
                  axis_name)


# ------------------------------------------------------------------------------------------------------- host side


def class_centres(probs: np.ndarray, features: np.ndarray) -> np.ndarray:
  """[C, D] unit centres normalize(probs.T @ features) (noise_detect `centers`: the GMM means of Sec. 3.1)."""
  centres = np.asarray(probs, np.float64).T @ np.asarray(features, np.float64)
  return centres / np.maximum(np.linalg.norm(centres, axis=1, keepdims=True), 1e-12)


def detection_losses(probs: np.ndarray, features: np.ndarray, labels: np.ndarray, temperature: float
                     ) -> tuple[np.ndarray, np.ndarray]:
  """(centres [C, D], per-example loss [N]): -softmax(features @ centres.T / T)[i, label_i], min-max scaled to
  [0, 1] (noise_detect `losses`); a constant loss (no spread) scales to 0."""
  feats = np.asarray(features, np.float64)
  centres = class_centres(probs, feats)
  logits = feats @ centres.T / temperature
  logits -= logits.max(axis=1, keepdims=True)
  posterior = np.exp(logits)
  posterior /= posterior.sum(axis=1, keepdims=True)
  losses = -posterior[np.arange(len(labels)), np.asarray(labels, np.int64)]
  spread = losses.max() - losses.min()
  return centres, (losses - losses.min()) / (spread if spread > 0 else 1.0)


def gmm_clean_probability(losses: np.ndarray) -> np.ndarray:
  """P(clean) [N] of each loss under a 2-component GaussianMixture (random_state=0): the posterior of the
  component with the smaller mean (noise_detect, Sec. 3.2 out-of-distribution label noise detection)."""
  from sklearn.mixture import GaussianMixture  # pylint: disable=g-import-not-at-top (host side only)

  x = np.asarray(losses, np.float64).reshape(-1, 1)
  gm = GaussianMixture(n_components=2, random_state=0).fit(x)
  posterior = gm.predict_proba(x)
  posterior = posterior / posterior.sum(axis=1, keepdims=True)
  return posterior[:, int(np.argmin(gm.means_))]


def noise_detect(probs: np.ndarray, features: np.ndarray, labels: np.ndarray, temperature: float,
                 per_class: bool = False) -> tuple[np.ndarray, np.ndarray]:
  """(P(clean) [N], class centres [C, D]) of the training split from its classifier probabilities [N, C], unit
  features [N, D] and noisy labels [N] (TCL.noise_detect); `per_class` fits one GMM per noisy label (--sep_gmm)."""
  labels = np.asarray(labels, np.int64)
  centres, losses = detection_losses(probs, features, labels, temperature)
  if not per_class:
    return gmm_clean_probability(losses), centres
  confidence = np.zeros(len(labels), np.float64)
  for k in np.unique(labels):
    mask = labels == k
    confidence[mask] = gmm_clean_probability(losses[mask]) if mask.sum() > 1 else 1.0
  return confidence, centres
