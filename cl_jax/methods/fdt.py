"""FDT: CLIP over finite discrete tokens (Chen et al., CVPR 2023, "Revisiting Multimodal Representation in
Contrastive Learning: From Patch and Token Embeddings to Finite Discrete Tokens"; yuxiaochen1103/FDT).

Both modalities are embedded as sparse mixtures of one shared learnt dictionary (cl_jax/models/fdt.py): ViT patch
tokens and the text tower's per-token outputs are mapped to queries, scored against the dictionary with
temperature T_sd, max-pooled over the patches / tokens, normalised by sparsemax and mixed. The loss is CLIP's
symmetric InfoNCE on the L2-normalised FDT embeddings only (the official forward; the towers' own CLS / EOT
embeddings are not trained by any loss).

Faithful to the official code (prototype/model/clip_fdt.py, example/clip_fdt/{config_cc3m.yaml,train_solver.py}):
the dictionary init N(0, 1); q_map = LN-Linear-GELU-LN-Linear; max-pool before sparsemax; the T_sd staircase
T(step) = max(T0 * decay ** floor(step / period), T_min) (the official config: T0 = 1000, decay 1, i.e. constant;
period 2700 steps ~ one CC3M epoch; T_min 0.01); optionally the clamp of the log logit scale after each update
(their grad_clip 'logit_scale_param_value': [3, 6]). Our choices: padded text tokens score -inf, not the official
0 (`pad_fill`, see models/fdt.py); the patch tokens are the ViT's after its final LayerNorm (the official takes them
before ln_post; q_map starts with a LayerNorm either way); `encode` (kNN, linear probe) gives the FDT image
embedding, the representation the loss trains.

The current T_sd is kept in the method state (written by `loss`), so evaluation embeds with the training value.
"""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import parallel
from cl_jax.data.tokenizer import Tokenizer, build_tokenizer
from cl_jax.losses.clip import LOGIT_SCALE_INIT, clip_loss
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.methods import METHODS
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.methods.common import embedding_std
from cl_jax.methods.language_image import batch_tokens, init_tokens, text_config
from cl_jax.models import ViT, build_backbone
from cl_jax.models.fdt import ATTENTIONS, PAD_FILLS, FDTModel
from cl_jax.models.text import build_text_model
from cl_jax.schema import Field


def sd_temperature(step: jax.Array, start: float, decay: float, period: int, floor: float) -> jax.Array:
  """T_sd at `step`: max(start * decay ** floor(step / period), floor), the official staircase (train_solver.py
  updates the temperature every `period` iterations)."""
  n = (jnp.asarray(step, jnp.int32) // int(period)).astype(jnp.float32)
  return jnp.maximum(jnp.float32(start) * jnp.float32(decay) ** n, jnp.float32(floor))


@METHODS.register("fdt")
class FDT(Method):
  """FDT (Chen et al. 2023): CLIP's loss on sparsemax mixtures of a shared token dictionary (see the module doc).

  Language-image interface (zero-shot, retrieval): `encode_text`, `encode_image_embedding`, `tokenizer`; the token
  report (cl_jax/eval/fdt_tokens.py) reads `image_token_weights` and `text_token_weights`."""

  SCHEMA = {
      "embed_dim": Field(512, low=1),                 # d: the dictionary's and the joint space's width (sd_dim)
      "num_tokens": Field(16384, low=1),              # K: dictionary entries (sd_num)
      "logit_scale_init": Field(LOGIT_SCALE_INIT, low=0, open_low=True),
      "logit_scale_clamp": Field(None),               # None, or [low, high] on the log scale after each update
      "sd_temperature": Field(1000.0, low=0, open_low=True),   # T_sd at step 0 (official 1000)
      "sd_decay": Field(1.0, low=0, high=1, open_low=True),    # factor per period (official 1: constant)
      "sd_decay_steps": Field(0, low=0),              # the period in steps; 0 = one epoch
      "sd_min": Field(0.01, low=0, open_low=True),    # the floor of T_sd
      "attention": Field("sparsemax", choices=ATTENTIONS),
      "pad_fill": Field("neg_inf", choices=PAD_FILLS),
  }

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    if m.sd_min > m.sd_temperature:
      raise ValueError(f"method.sd_min={m.sd_min} is above method.sd_temperature={m.sd_temperature}: T_sd would "
                       "never leave the floor; set sd_min <= sd_temperature.")
    self.clamp = None
    if m.logit_scale_clamp is not None:
      clamp = tuple(m.logit_scale_clamp) if isinstance(m.logit_scale_clamp, (list, tuple)) else ()
      if len(clamp) != 2 or not all(isinstance(v, (int, float)) for v in clamp) or clamp[0] > clamp[1]:
        raise ValueError(f"method.logit_scale_clamp={m.logit_scale_clamp!r}: must be None or [low, high] with "
                         "low <= high on the log scale (the official FDT config: [3, 6]).")
      self.clamp = (float(clamp[0]), float(clamp[1]))
    backbone = build_backbone(config.model)
    if not isinstance(backbone, ViT):
      raise ValueError(f"fdt needs patch tokens from a ViT image tower; model.name={config.model.name!r} is not "
                       "one (use vit_micro, vit_tiny, vit_small, vit_base ...).")
    self.tokenizer: Tokenizer = build_tokenizer(text_config(config))
    self.embed_dim = int(m.embed_dim)
    text = build_text_model(config.get("text_model", ml_collections.ConfigDict()), self.tokenizer.vocab_size,
                            self.tokenizer.context_length, self.embed_dim)
    self.model = FDTModel(backbone, text, int(m.num_tokens), self.embed_dim, m.attention, m.pad_fill)
    self.decay_steps = int(m.sd_decay_steps) or self.steps_per_epoch

  def temperature(self, step: jax.Array) -> jax.Array:
    m = self.hp
    return sd_temperature(step, m.sd_temperature, m.sd_decay, self.decay_steps, m.sd_min)

  # ---------------------------------------------------------------- the Method contract
  def _tokens(self, views: Views, batch: int) -> jax.Array:
    return batch_tokens(views, batch, "fdt")

  def init(self, key: jax.Array, views: Views):
    images = views["crops"][0][0]
    tokens = init_tokens(views, self.tokenizer, images.shape[0])
    t = self.temperature(0)
    variables = self.model.init(key, images, tokens, t, train=False)
    params = {"model": variables["params"], "logit_scale": jnp.asarray(self.hp.logit_scale_init, jnp.float32)}
    return params, {"sd_temperature": t}

  def loss(self, params, state, views, key, step):
    del key
    images = views["crops"][0][0]
    tokens = self._tokens(views, images.shape[0])
    t = self.temperature(step)
    out = self.model.apply({"params": params["model"]}, images, tokens, t, train=True)
    loss, metrics = clip_loss(out["image"], out["text"], params["logit_scale"], axis_name=parallel.DATA)
    metrics["sd_temperature"] = t
    # Dictionary entries with a non-zero weight per example (the loop averages over devices).
    metrics["active_tokens_image"] = jnp.mean(jnp.sum(out["image_weights"] > 0, axis=-1).astype(jnp.float32))
    metrics["active_tokens_text"] = jnp.mean(jnp.sum(out["text_weights"] > 0, axis=-1).astype(jnp.float32))
    metrics["embedding_std"] = embedding_std(out["image"], parallel.DATA)
    metrics["features"] = out["image"]
    return loss, ({"sd_temperature": t}, metrics)

  def project_params(self, params):
    if self.clamp is None:
      return params
    return {**params, "logit_scale": jnp.clip(params["logit_scale"], *self.clamp)}

  def _apply(self, params, state, method, *args):
    return self.model.apply({"params": params["model"]}, *args, state["sd_temperature"], method=method)

  def encode(self, params, state, images):
    """The FDT image embedding (unnormalised) of preprocessed images: what kNN and the linear probe read."""
    return self._apply(params, state, FDTModel.encode_image, images)[1]

  def encode_image_embedding(self, params: Any, state: Any, images: jax.Array) -> jax.Array:
    """L2-normalised FDT image embeddings (zero-shot, retrieval)."""
    return l2_normalize(self.encode(params, state, images))

  def encode_text(self, params: Any, state: Any, tokens: jax.Array) -> jax.Array:
    """L2-normalised FDT text embeddings of token ids [b, L]."""
    return l2_normalize(self._apply(params, state, FDTModel.encode_text, tokens)[1])

  # ---------------------------------------------------------------- the token report's reads
  def image_token_weights(self, params: Any, state: Any, images: jax.Array) -> jax.Array:
    """Sparsemax weights over the dictionary [b, K] of preprocessed images."""
    return self._apply(params, state, FDTModel.encode_image, images)[0]

  def text_token_weights(self, params: Any, state: Any, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(sparsemax weights [b, K], the position of the token that wins each entry's max-pool [b, K]) of token ids."""
    weights, _, scores = self._apply(params, state, FDTModel.encode_text, tokens)
    return weights, jnp.argmax(scores, axis=1).astype(jnp.int32)
