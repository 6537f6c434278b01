"""Pieces the language-image methods share (a helper, not a method): the two towers, the tokenizer interface of
zero-shot and retrieval, and the init / loss / encode skeleton; CLIP, SigLIP and UniCL give only their loss."""
from __future__ import annotations

import abc
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from cl_jax import parallel
from cl_jax.data.tokenizer import Tokenizer, build_tokenizer
from cl_jax.methods.common import embedding_std
from cl_jax.losses.clip import LOGIT_SCALE_INIT
from cl_jax.losses.contrastive import l2_normalize
from cl_jax.schema import Field
from cl_jax.methods.base import Method, RunFacts, Views
from cl_jax.models import build_backbone
from cl_jax.models.text import TextTransformer, build_text_model


def batch_tokens(views: Views, batch: int, method: str) -> jax.Array:
  """The batch's int tokens [batch, context_length], or a one-line error naming config.data.text."""
  tokens = views.get("tokens")
  if tokens is None:
    raise ValueError(f"{method} found no 'tokens' in the batch; set config.data.text "
                     "(tokenizer, source) so the data source adds them.")
  if tokens.ndim != 2 or tokens.shape[0] != batch:
    raise ValueError(f"tokens must be int [batch={batch}, context_length], got shape {tokens.shape}; "
                     "check config.data.text.")
  return tokens


def init_tokens(views: Views, tokenizer: Tokenizer, batch: int) -> jax.Array:
  """Tokens for init: the batch's, or empty captions (init only needs a token row of the right length)."""
  tokens = views.get("tokens")
  return jnp.asarray(tokenizer.encode([""] * batch)) if tokens is None else tokens


class DualEncoder(nn.Module):
  """Image backbone + linear projection (CLIP's W_i) and a text Transformer, both into the joint space."""
  backbone: nn.Module
  text: TextTransformer
  embed_dim: int
  image_projection: bool = True

  def setup(self):
    if self.image_projection:
      self.image_proj = nn.Dense(self.embed_dim, use_bias=False, name="image_projection")

  def features(self, images: jax.Array, train: bool = False) -> jax.Array:
    """Backbone features (evaluation by kNN / linear probe)."""
    return self.backbone(images, train=train)

  def encode_image(self, images: jax.Array, train: bool = False) -> tuple[jax.Array, jax.Array]:
    """(backbone features, unnormalised joint-space image embedding)."""
    h = self.backbone(images, train=train)
    return h, (self.image_proj(h) if self.image_projection else h)

  def encode_text(self, tokens: jax.Array) -> jax.Array:
    """Unnormalised joint-space text embedding of token ids [b, L]."""
    return self.text(tokens)

  def encode_dense(self, images: jax.Array) -> jax.Array:
    """Unnormalised joint-space embeddings of a ViT's patch tokens [b, gh, gw, D]: the image projection applied
    to every patch (the dense CLIP readout, the baseline of open-vocabulary segmentation)."""
    patch = getattr(self.backbone, "patch_size", None)
    if patch is None:
      raise ValueError(f"a dense readout needs a ViT image tower (patch tokens), not {type(self.backbone).__name__}; "
                       "set config.model.name to a vit_* model.")
    tokens = self.backbone(images, train=False, return_tokens=True)["patches"]
    z = self.image_proj(tokens) if self.image_projection else tokens
    return z.reshape(images.shape[0], images.shape[1] // patch, images.shape[2] // patch, -1)

  def __call__(self, images: jax.Array, tokens: jax.Array, train: bool) -> tuple[jax.Array, jax.Array, jax.Array]:
    h, z_img = self.encode_image(images, train)
    return h, z_img, self.encode_text(tokens)


def text_config(config: ml_collections.ConfigDict) -> Any:
  """config.data.text, or a one-line error saying how to set it."""
  text = config.data.get("text", None)
  if not text:
    raise ValueError(f"{config.method.name} needs text in the batch; set config.data.text = dict(tokenizer='shapes' "
                     "or 'bpe', context_length=..., source='caption' | 'label_prompt' | 'mixed').")
  return text


class LanguageImageMethod(Method):
  """Two towers into a joint space trained on one augmented view per image (`views["crops"][0][0]`; CLIP used
  only random square crops) and `views["tokens"]`. `encode` gives backbone features (kNN/linear);
  `encode_image_embedding` and `encode_text` the normalised joint-space embeddings (zero-shot, retrieval).
  A subclass gives `loss_params` (the loss's learnable scalars) and `contrastive_loss`."""

  # SigLIP keeps logit_scale_init (it reads its own t', b) so that every language-image config keeps its keys.
  SCHEMA = {"embed_dim": Field(256, low=1), "image_projection": Field(True, choices=(True, False)),
            "logit_scale_init": Field(LOGIT_SCALE_INIT, low=0, open_low=True)}

  def __init__(self, config: ml_collections.ConfigDict, run_facts: RunFacts):
    super().__init__(config, run_facts)
    m = self.hp
    self.tokenizer: Tokenizer = build_tokenizer(self.text_settings(config))
    self.embed_dim = int(m["embed_dim"])
    text = build_text_model(config.get("text_model", ml_collections.ConfigDict()), self.tokenizer.vocab_size,
                            self.tokenizer.context_length, self.embed_dim)
    self.model = DualEncoder(build_backbone(config.model), text, self.embed_dim,
                             bool(m["image_projection"]))

  # ---------------------------------------------------------------- per-method hooks
  def text_settings(self, config: ml_collections.ConfigDict) -> Any:
    """The tokenizer's settings: config.data.text (a method whose text is not in the batch may look elsewhere)."""
    return text_config(config)

  @abc.abstractmethod
  def loss_params(self) -> dict[str, jax.Array]:
    """The learnable scalars of the loss (temperature, bias), trained with the towers."""

  @abc.abstractmethod
  def contrastive_loss(self, params: Any, z_img: jax.Array, z_txt: jax.Array,
                       views: Views) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(global loss, metrics) of this device's unnormalised image and text embeddings [b, d]."""

  # ---------------------------------------------------------------- the Method contract
  def _tokens(self, views: Views, batch: int) -> jax.Array:
    return batch_tokens(views, batch, self.config.method.name)

  def init(self, key: jax.Array, views: Views):
    images = views["crops"][0][0]
    tokens = init_tokens(views, self.tokenizer, images.shape[0])
    variables = self.model.init(key, images, tokens, train=False)
    params = {"model": variables["params"], **self.loss_params()}
    return params, {"batch_stats": variables.get("batch_stats", {})}

  def loss(self, params, state, views, key, step):
    del key, step
    images = views["crops"][0][0]
    tokens = self._tokens(views, images.shape[0])
    (h, z_img, z_txt), updates = self.model.apply({"params": params["model"], **state}, images, tokens, train=True,
                                                  mutable=["batch_stats"])
    loss, metrics = self.contrastive_loss(params, z_img, z_txt, views)
    metrics["embedding_std"] = embedding_std(z_img, parallel.DATA)
    metrics["features"] = h
    return loss, ({"batch_stats": parallel.pmean_varying(updates.get("batch_stats", {}))}, metrics)

  def encode(self, params, state, images):
    return self.model.apply({"params": params["model"], **state}, images, train=False, method=DualEncoder.features)

  def encode_image_embedding(self, params: Any, state: Any, images: jax.Array) -> jax.Array:
    """L2-normalised joint-space embeddings of preprocessed images (inference mode)."""
    _, z = self.model.apply({"params": params["model"], **state}, images, train=False,
                            method=DualEncoder.encode_image)
    return l2_normalize(z)

  def encode_dense(self, params: Any, state: Any, images: jax.Array) -> jax.Array:
    """L2-normalised joint-space embeddings per patch [b, gh, gw, D] of preprocessed images (segmentation)."""
    variables = {"params": params["model"], "batch_stats": state.get("batch_stats", {})}
    return l2_normalize(self.model.apply(variables, images, method=DualEncoder.encode_dense))

  def encode_text(self, params: Any, state: Any, tokens: jax.Array) -> jax.Array:
    """L2-normalised joint-space embeddings of token ids [b, L]."""
    return l2_normalize(self.model.apply({"params": params["model"], **state}, tokens,
                                         method=DualEncoder.encode_text))
