"""GroupViT's multi-label image-text contrastive loss (Xu et al., CVPR 2022, Sec. 3.2 Eq. 6-8; NVlabs/GroupViT
models/multi_label_contrastive.py `multi_label_loss`), exact across devices."""
from __future__ import annotations

import jax
import jax.numpy as jnp

from cl_jax import parallel
from cl_jax.losses.clip import logit_scale
from cl_jax.losses.contrastive import l2_normalize


def multi_label_loss(image_emb: jax.Array, prompt_emb: jax.Array, log_scale: jax.Array,
                     axis_name: str | None = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """L_multi-label (Sec. 3.2 Eq. 6-8): each image against the K prompt embeddings of every image of the global
  batch, with soft targets 1/K on its own K prompts (image -> text), and each prompt against every image with its
  own image as the target (text -> image); the mean of the two directions.

  image_emb [b, D], prompt_emb [b, K, D] (this device's rows, unnormalised); `log_scale` is the loss's own learnable
  log temperature (official share_temperature=False), clipped at 100 as CLIP's. With `axis_name` the images and
  prompts are gathered (global index order, the official (w b l) column order) and the per-row terms psum-ed and
  divided by the global counts, so the replicated loss and its gradient equal the one-device loss over the global
  batch. Returns (loss, {"i2p_acc": top-1 over prompts is one of its own, "p2i_acc"}).
  """
  img, txt = l2_normalize(image_emb), l2_normalize(prompt_emb)
  b, k, d = txt.shape
  scale = logit_scale(log_scale)
  all_img = parallel.all_gather(img, axis_name)                         # [N, D]
  all_txt = parallel.all_gather(txt, axis_name).reshape(-1, d)          # [N * K, D]
  n = all_img.shape[0]
  own = parallel.row_offset(b, axis_name) + jnp.arange(b)              # global index of each local image
  logits = scale * img @ all_txt.T                                      # [b, N * K]
  pos = jnp.take_along_axis(logits.reshape(b, n, k), own[:, None, None], axis=1)[:, 0]   # [b, K]
  # soft cross-entropy with targets 1/K on the K positives: logsumexp - mean of the positive logits
  loss_img = parallel.psum(jnp.sum(jax.nn.logsumexp(logits, axis=1) - jnp.mean(pos, axis=1)), axis_name) / n
  hit_img = (jnp.argmax(logits, axis=1) // k == own).astype(jnp.float32)
  logits_t = scale * txt.reshape(b * k, d) @ all_img.T                  # [b * K, N]
  target = jnp.repeat(own, k)
  pos_t = jnp.take_along_axis(logits_t, target[:, None], axis=1)[:, 0]
  loss_txt = parallel.psum(jnp.sum(jax.nn.logsumexp(logits_t, axis=1) - pos_t), axis_name) / (n * k)
  hit_txt = (jnp.argmax(logits_t, axis=1) == target).astype(jnp.float32)
  metrics = {"i2p_acc": parallel.psum(jnp.sum(hit_img), axis_name) / n,
             "p2i_acc": parallel.psum(jnp.sum(hit_txt), axis_name) / (n * k),
             "multi_label_logit_scale": scale}
  return 0.5 * (loss_img + loss_txt), metrics
