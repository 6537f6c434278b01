"""MaskCLIP (Dong et al., CVPR 2023, arXiv 2208.12262): CLIP plus masked self-distillation from an EMA teacher."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import linen as nn

from cl_jax import parallel
from cl_jax.data.masking import block_masks, num_masked_patches, token_masks
from cl_jax.losses.clip import clip_loss
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.losses.masked_distill import masked_distillation_loss, masked_feature_loss, update_masked_center
from cl_jax.methods import METHODS
from cl_jax.methods.base import RunFacts
from cl_jax.methods.common import cosine_momentum, ema_init, ema_step, embedding_std, momentum_field
from cl_jax.methods.language_image import DualEncoder, LanguageImageMethod, init_tokens
from cl_jax.models.token_decoder import TokenDecoder
from cl_jax.models.vit import ViT
from cl_jax.schema import Field

LOSS_FORMS = ("ce", "l2")


class CosineHead(nn.Module):
  """Logits <x / ||x||, v_k / ||v_k||> in [-1, 1] over `out_dim` prototypes: DINO's l2-normalised input and
  weight-normalised last layer (Caron et al. 2021, App. C, g fixed to 1), so the temperatures alone set the
  sharpness (an unnormalised linear head gave the student logits of any scale: a loss of ~17 at init)."""
  out_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    v = self.param("kernel", nn.initializers.normal(1.0), (x.shape[-1], self.out_dim), jnp.float32)
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + 1e-12)
    return x @ (v * jax.lax.rsqrt(jnp.sum(v * v, axis=0, keepdims=True) + 1e-12))


class DistillBranch(nn.Module):
  """One modality's masked self-distillation head: the student's tokens -> decoder (-> head), the teacher's tokens
  (-> the same head, EMA copy). `head_dim` 0 (the l2 form) regresses the teacher's features with no head."""
  decoder: TokenDecoder
  head_dim: int

  def setup(self):
    if self.head_dim:
      self.head = CosineHead(self.head_dim, name="head")

  def predict(self, student_tokens: jax.Array) -> jax.Array:
    y = self.decoder(student_tokens)
    return self.head(y) if self.head_dim else y

  def target(self, teacher_tokens: jax.Array) -> jax.Array:
    return self.head(teacher_tokens) if self.head_dim else teacher_tokens

  def __call__(self, student_tokens: jax.Array, teacher_tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    return self.predict(student_tokens), self.target(teacher_tokens)


def _image_tokens(m: DualEncoder, images: jax.Array, mask: jax.Array | None, train: bool) -> dict[str, jax.Array]:
  return m.backbone(images, train=train, return_tokens=True, mask=mask)


def _text_tokens(m: DualEncoder, tokens: jax.Array, mask: jax.Array | None) -> dict[str, jax.Array]:
  return m.text(tokens, return_tokens=True, mask=mask)


def _project_image(m: DualEncoder, h: jax.Array) -> jax.Array:
  return m.image_proj(h) if m.image_projection else h


def _init_all(m: DualEncoder, images, tokens, image_mask, text_mask):
  """Every parameter: the two towers, the ViT's mask token and (with text_msd) the text tower's mask embedding."""
  out = m(images, tokens, train=False)
  _image_tokens(m, images, image_mask, False)
  if text_mask is not None:
    _text_tokens(m, tokens, text_mask)
  return out


@METHODS.register("maskclip")
class MaskCLIP(LanguageImageMethod):
  """MaskCLIP (Dong et al. 2023, Sec. 3, Fig. 2): L = L_CLIP + w L_MSD (+ w_text L_MSD^text).

  L_CLIP is CLIP's symmetric InfoNCE (losses/clip.py) on the student's towers, the image tower seeing the full
  image. Masked self-distillation (Sec. 3.2): the mean teacher, an EMA of the towers (state["ema"]; momentum
  cosine from `momentum` to `final_momentum`, common.ema_step), encodes the full image; the student encodes the
  same view with a block-wise mask (BEiT's algorithm, `mask_ratio` of the patches, data/masking.py) whose patch
  embeddings are replaced by a learned mask token (models/vit.py); a small Transformer decoder (the paper's
  device against the conflict between the two objectives) maps the student's output tokens to predictions of the
  teacher's patch tokens, and L_MSD is the cross-entropy between the teacher's and the student's
  softmax-normalised tokens over the masked patches (losses/masked_distill.masked_distillation_loss). With
  text_msd (Sec. 3.3), the same on the text side: BERT-style 15% of the caption's words replaced by a learned mask
  embedding, a small decoder over the student text tower's tokens, the EMA text tower's tokens of the full
  caption as targets.

  From the paper (abstract and overview): the loss's three terms, the EMA teacher seeing the full image, the
  prediction from the masked image through a small decoder, the text-side term. Choices of ours (no official code
  was released, the repository has only a README, and the paper's body could not be read when this was written,
  so its exact mask ratio, head and temperatures are unchecked): BEiT's block-wise masking at BEiT's 40%; the
  teacher temperature 0.04 with a centre (momentum 0.9) and the student temperature 0.1, as DINO / iBOT's patch
  loss; one cosine head (head_dim prototypes, DINO's normalised last layer) shared by student and teacher; the
  decoder (decoder_depth ViT blocks at the tower's width) reads every student token, CLS included; the teacher
  is the whole student (towers and heads) so one EMA tree moves; masks per example from the step key and the
  global example index (the same on 1 or 8 devices); the masked words are never the start, end or padding
  tokens and at least one per caption, and the causal text tower is kept (the decoder is bidirectional).
  `msd_loss='l2'` (cosine regression of the teacher's features, no head) and `contrastive_view='masked'` (CLIP on
  the masked view, one image pass fewer, as FLIP) are options, not the paper. `encode` (kNN, linear probe) and
  zero-shot read the student.
  """

  SCHEMA = {**LanguageImageMethod.SCHEMA,
            "msd_weight": Field(1.0, low=0),
            "msd_loss": Field("ce", choices=LOSS_FORMS),
            "mask_ratio": Field(0.4, low=0, high=0.95, open_low=True),
            "mask_min_patches": Field(16, low=1),
            "mask_min_aspect": Field(0.3, low=0, high=1, open_low=True),
            "head_dim": Field(8192, low=1),
            "student_temp": Field(0.1, low=0, open_low=True),
            "teacher_temp": Field(0.04, low=0, open_low=True),
            "center_momentum": Field(0.9, low=0, high=1),
            "decoder_depth": Field(2, low=1),
            "decoder_heads": Field(0, low=0),   # 0: the image tower's
            "momentum": momentum_field(0.999),
            "final_momentum": momentum_field(1.0),
            "contrastive_view": Field("full", choices=("full", "masked")),
            "text_msd": Field(False, choices=(True, False)),
            "text_msd_weight": Field(1.0, low=0),
            "text_mask_ratio": Field(0.15, low=0, high=0.95, open_low=True),
            "text_decoder_depth": Field(1, low=1)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    backbone = self.model.backbone
    if not isinstance(backbone, ViT):
      raise ValueError(f"maskclip masks image patches and needs a ViT image tower, got "
                       f"config.model.name='{config.model.name}'; use vit_micro, vit_tiny, vit_small or vit_base.")
    if m.final_momentum < m.momentum:
      raise ValueError(f"method.final_momentum={m.final_momentum} is below method.momentum={m.momentum}; the "
                       "cosine schedule rises from momentum to final_momentum.")
    heads = int(m.decoder_heads) or backbone.num_heads
    head_dim = int(m.head_dim) if m.msd_loss == "ce" else 0
    self.image_branch = DistillBranch(
        TokenDecoder(width=backbone.dim, depth=int(m.decoder_depth), num_heads=heads,
                     out_dim=backbone.dim, dtype=backbone.dtype), head_dim)
    self.text_branch = None
    if m.text_msd:
      text = self.model.text
      self.text_branch = DistillBranch(
          TokenDecoder(width=text.width, depth=int(m.text_decoder_depth), num_heads=text.num_heads,
                       out_dim=text.width, dtype=text.dtype), head_dim)
    self.head_dim = head_dim

  def loss_params(self) -> dict[str, jax.Array]:
    return {"logit_scale": jnp.asarray(self.hp.logit_scale_init, jnp.float32)}

  def contrastive_loss(self, params, z_img, z_txt, views):
    del views
    return clip_loss(z_img, z_txt, params["logit_scale"], axis_name=parallel.DATA)

  # ---------------------------------------------------------------- helpers
  def grid(self, images: jax.Array) -> tuple[int, int]:
    p = self.model.backbone.patch_size
    return images.shape[1] // p, images.shape[2] // p

  def image_masks(self, key: jax.Array, images: jax.Array, axis_name: str | None = parallel.DATA) -> jax.Array:
    """bool [b, patches]: this step's block-wise masks, one per example (global example index)."""
    m = self.hp
    return block_masks(key, images.shape[0], self.grid(images), float(m.mask_ratio), int(m.mask_min_patches),
                       float(m.mask_min_aspect), axis_name=axis_name)

  def maskable_tokens(self, tokens: jax.Array) -> jax.Array:
    """Content positions of token ids [b, L]: not padding, start or end of text."""
    tok = self.tokenizer
    return (tokens != 0) & (tokens != tok.sot_token) & (tokens != tok.eot_token)

  def text_masks(self, key: jax.Array, tokens: jax.Array, axis_name: str | None = parallel.DATA) -> jax.Array:
    return token_masks(key, self.maskable_tokens(tokens), float(self.hp.text_mask_ratio), axis_name=axis_name)

  def _online(self, params: Any) -> dict[str, Any]:
    """The tree the teacher follows: the towers and the distillation heads (not the loss's scalars)."""
    return {"model": params["model"], "msd": params["msd"]}

  def _branch_loss(self, branch: DistillBranch, branch_params, teacher_branch_params, student_tokens,
                   teacher_tokens, mask, valid, center, skip: int = 0):
    """(loss, new centre, metrics) of one modality: the decoder reads every student token, the loss and the centre
    only positions from `skip` on (the image's CLS token is never masked)."""
    m = self.hp
    pred = branch.apply({"params": branch_params}, student_tokens, method=DistillBranch.predict)[:, skip:]
    target = branch.apply({"params": teacher_branch_params}, teacher_tokens[:, skip:], method=DistillBranch.target)
    target = jax.lax.stop_gradient(target)
    if m.msd_loss == "ce":
      loss, metrics = masked_distillation_loss(pred, target, mask, center, m.student_temp, m.teacher_temp,
                                               axis_name=parallel.DATA)
      center = update_masked_center(center, target, valid, m.center_momentum, axis_name=parallel.DATA)
    else:
      loss, metrics = masked_feature_loss(pred, target, mask, axis_name=parallel.DATA)
    return loss, center, metrics

  # ---------------------------------------------------------------- the Method contract
  def init(self, key: jax.Array, views):
    images = views["crops"][0][0]
    tokens = init_tokens(views, self.tokenizer, images.shape[0])
    b = images.shape[0]
    gh, gw = self.grid(images)
    if num_masked_patches((gh, gw), float(self.hp.mask_ratio)) >= gh * gw:
      raise ValueError(f"method.mask_ratio={self.hp.mask_ratio} masks every one of the {gh * gw} patches; lower it "
                       "or use a smaller model.patch_size.")
    image_mask = jnp.zeros((b, gh * gw), bool)
    text_mask = jnp.zeros(tokens.shape, bool) if self.text_branch is not None else None
    k_model, k_img, k_txt = jax.random.split(key, 3)
    variables = self.model.init(k_model, images, tokens, image_mask, text_mask, method=_init_all)
    dim = self.model.backbone.dim
    msd = {"image": self.image_branch.init(k_img, jnp.zeros((1, 2, dim)), jnp.zeros((1, 2, dim)))["params"]}
    if self.text_branch is not None:
      width = self.model.text.width
      msd["text"] = self.text_branch.init(k_txt, jnp.zeros((1, 2, width)), jnp.zeros((1, 2, width)))["params"]
    params = {"model": variables["params"], "msd": msd, **self.loss_params()}
    k = self.head_dim or 1
    state = {"batch_stats": {}, "ema": ema_init(self._online(params), {}),
             "center": jnp.zeros((k,), jnp.float32), "text_center": jnp.zeros((k,), jnp.float32)}
    return params, state

  def loss(self, params, state, views, key, step):
    del step
    m = self.hp
    images = views["crops"][0][0]
    b = images.shape[0]
    tokens = self._tokens(views, b)
    k_img, k_txt = jax.random.split(key)
    student = {"params": params["model"]}
    teacher_params = state["ema"]["params"]
    teacher = {"params": teacher_params["model"]}

    image_mask = self.image_masks(k_img, images)
    masked = self.model.apply(student, images, image_mask, True, method=_image_tokens)
    if m.contrastive_view == "full":
      h, z_img, z_txt = self.model.apply(student, images, tokens, train=True)
    else:
      h = masked["cls"]
      z_img = self.model.apply(student, h, method=_project_image)
      z_txt = self.model.apply(student, tokens, method=DualEncoder.encode_text)
    loss, metrics = self.contrastive_loss(params, z_img, z_txt, views)
    metrics["clip_loss"] = loss

    t_out = self.model.apply(teacher, images, None, True, method=_image_tokens)
    s_tokens = jnp.concatenate([masked["cls"][:, None], masked["patches"]], axis=1)
    t_tokens = jnp.concatenate([t_out["cls"][:, None], t_out["patches"]], axis=1)
    msd, center, msd_metrics = self._branch_loss(
        self.image_branch, params["msd"]["image"], teacher_params["msd"]["image"], s_tokens, t_tokens,
        image_mask, jnp.ones_like(image_mask), state["center"], skip=1)
    loss = loss + m.msd_weight * msd
    metrics["msd_loss"] = msd
    metrics.update({f"msd_{k}": v for k, v in msd_metrics.items()})
    metrics["mask_ratio"] = parallel.pmean(jnp.mean(image_mask.astype(jnp.float32)), parallel.DATA)
    new_state = {**state, "center": center}

    if self.text_branch is not None:
      text_mask = self.text_masks(k_txt, tokens)
      s_text = self.model.apply(student, tokens, text_mask, method=_text_tokens)["tokens"]
      t_text = self.model.apply(teacher, tokens, None, method=_text_tokens)["tokens"]
      text_msd, text_center, text_metrics = self._branch_loss(
          self.text_branch, params["msd"]["text"], teacher_params["msd"]["text"], s_text, t_text, text_mask,
          tokens != 0, state["text_center"])
      loss = loss + m.text_msd_weight * text_msd
      metrics["text_msd_loss"] = text_msd
      metrics.update({f"text_msd_{k}": v for k, v in text_metrics.items()})
      new_state["text_center"] = text_center

    metrics["embedding_std"] = embedding_std(z_img, parallel.DATA)
    metrics["features"] = h
    return loss, (new_state, metrics)

  def after_update(self, params, state, step):
    """The mean teacher: theta_t <- lambda theta_t + (1 - lambda) theta_s, lambda cosine from `momentum` to
    `final_momentum` over the run (BYOL Sec. 3.1's schedule)."""
    momentum = cosine_momentum(self.hp.momentum, step, self.total_steps, self.hp.final_momentum)
    return {**state, "ema": ema_step(state["ema"], self._online(params), momentum)}

  # The state holds more than Flax collections (the teacher, the centres): the encoders read only the params.
  def encode(self, params, state, images):
    del state
    return self.model.apply({"params": params["model"]}, images, train=False, method=DualEncoder.features)

  def encode_image_embedding(self, params, state, images):
    del state
    _, z = self.model.apply({"params": params["model"]}, images, train=False, method=DualEncoder.encode_image)
    return l2_normalize(z)

  def encode_text(self, params, state, tokens):
    del state
    return l2_normalize(self.model.apply({"params": params["model"]}, tokens, method=DualEncoder.encode_text))
