"""FDT's head (Chen et al., CVPR 2023, "Revisiting Multimodal Representation in Contrastive Learning: From Patch and
Token Embeddings to Finite Discrete Tokens", Sec. 3.2; yuxiaochen1103/FDT prototype/model/clip_fdt.py).

A dictionary C of K learnable token embeddings [K, d] is shared by both modalities. Each modality maps its patch /
word features to queries (Query_model.q_map: LN-Linear-GELU-LN-Linear), scores every query against every entry,
A = q C^T / sqrt(d) / T_sd (Eq. 1), pools each entry's scores over the image's patches or the caption's tokens by
max (Eq. 2; the official pool_type='max'), normalises over the dictionary by sparsemax (Eq. 3) and embeds the
example as the weights times C (Eq. 4). The official code applies the max before the sparsemax, as here.

Padding: the official Query_model multiplies the padded tokens' scores by 0, so a pad contributes a score of 0 to
the max and wins every entry whose real scores are all negative; here padded scores are -inf (they never win), so
the embedding equals that of the unpadded caption. `pad_fill="zero"` reproduces the official behaviour.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cl_jax.losses.sparsemax import sparsemax

ATTENTIONS = ("sparsemax", "softmax")
PAD_FILLS = ("neg_inf", "zero")
# PyTorch nn.Linear's default weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), as the official q_map (biases: 0).
_torch_linear_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def fdt_scores(queries: jax.Array, dictionary: jax.Array, mask: jax.Array | None, temperature: jax.Array,
               pad_fill: str = "neg_inf") -> jax.Array:
  """Per-token scores A = q C^T / sqrt(d) / T_sd [b, n, K] (FDT Eq. 1) of queries [b, n, d] against the dictionary
  [K, d]; tokens with mask False (padding) are set to -inf ("neg_inf") or 0 (the official "zero")."""
  if pad_fill not in PAD_FILLS:
    raise ValueError(f"pad_fill={pad_fill!r}: must be one of {', '.join(PAD_FILLS)}.")
  d = dictionary.shape[-1]
  scores = jnp.einsum("bnd,kd->bnk", queries.astype(jnp.float32), dictionary.astype(jnp.float32)) / math.sqrt(d)
  if mask is not None:
    fill = -jnp.inf if pad_fill == "neg_inf" else 0.0
    scores = jnp.where(mask[:, :, None], scores, fill)
  return scores / temperature


def fdt_pool(queries: jax.Array, dictionary: jax.Array, mask: jax.Array | None, temperature: jax.Array,
             attention: str = "sparsemax", pad_fill: str = "neg_inf") -> tuple[jax.Array, jax.Array]:
  """(weights [b, K], embedding [b, d]) of FDT Eq. 1-4: scores max-pooled over the tokens, sparsemax (or softmax)
  over the dictionary, weights @ C (unnormalised; the loss L2-normalises)."""
  return pool_scores(fdt_scores(queries, dictionary, mask, temperature, pad_fill), dictionary, attention)


def pool_scores(scores: jax.Array, dictionary: jax.Array, attention: str = "sparsemax"
                ) -> tuple[jax.Array, jax.Array]:
  """fdt_pool from the per-token scores [b, n, K]: max over the tokens (Eq. 2), then sparsemax (Eq. 3), @ C (Eq. 4)."""
  if attention not in ATTENTIONS:
    raise ValueError(f"attention={attention!r}: must be one of {', '.join(ATTENTIONS)}.")
  pooled = jnp.max(scores, axis=1)                                                   # [b, K]
  weights = sparsemax(pooled) if attention == "sparsemax" else jax.nn.softmax(pooled, axis=-1)
  return weights, weights @ dictionary.astype(jnp.float32)


class QueryMLP(nn.Module):
  """The official Query_model.q_map: LayerNorm, Linear(width -> d), GELU (exact), LayerNorm, Linear(d -> d)."""
  dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    dense = lambda name: nn.Dense(self.dim, kernel_init=_torch_linear_init, name=name)
    x = dense("fc1")(nn.LayerNorm(epsilon=1e-5, name="ln1")(x.astype(jnp.float32)))
    x = nn.gelu(x, approximate=False)
    return dense("fc2")(nn.LayerNorm(epsilon=1e-5, name="ln2")(x))


class FDTModel(nn.Module):
  """A ViT image tower (patch tokens), CLIP's text tower (per-token outputs), a query MLP per modality and the
  shared dictionary. Each encoder returns (sparsemax weights [b, K], FDT embedding [b, d], per-token scores)."""
  backbone: nn.Module
  text: nn.Module
  num_tokens: int
  dim: int
  attention: str = "sparsemax"
  pad_fill: str = "neg_inf"

  def setup(self):
    # The official init: torch.randn(sd_num, sd_dim), i.e. N(0, 1) entries.
    self.dictionary = self.param("dictionary", nn.initializers.normal(1.0), (self.num_tokens, self.dim),
                                 jnp.float32)
    self.image_query = QueryMLP(self.dim, name="image_query")
    self.text_query = QueryMLP(self.dim, name="text_query")

  def patch_tokens(self, images: jax.Array, train: bool) -> jax.Array:
    out = self.backbone(images, train=train, return_tokens=True)
    return out["patches"]

  def _pool(self, queries: jax.Array, mask: jax.Array | None, temperature: jax.Array):
    scores = fdt_scores(queries, self.dictionary, mask, temperature, self.pad_fill)
    return (*pool_scores(scores, self.dictionary, self.attention), scores)

  def encode_image(self, images: jax.Array, temperature: jax.Array, train: bool = False
                   ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(weights [b, K], embedding [b, d], per-patch scores [b, N, K]) of images."""
    return self._pool(self.image_query(self.patch_tokens(images, train)), None, temperature)

  def encode_text(self, tokens: jax.Array, temperature: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(weights [b, K], embedding [b, d], per-token scores [b, L, K], padding at -inf or 0) of token ids [b, L]."""
    q = self.text_query(self.text(tokens, return_tokens=True)["tokens"])
    return self._pool(q, text_mask(tokens), temperature)

  def __call__(self, images: jax.Array, tokens: jax.Array, temperature: jax.Array, train: bool) -> dict[str, Any]:
    w_img, z_img, _ = self.encode_image(images, temperature, train)
    w_txt, z_txt, _ = self.encode_text(tokens, temperature)
    return {"image_weights": w_img, "image": z_img, "text_weights": w_txt, "text": z_txt}


def text_mask(tokens: jax.Array) -> jax.Array:
  """True at <|startoftext|>, the words and <|endoftext|> (the largest id: the tokenizers end every row with it and
  pad after it), False at the padding; by position, so a real token whose id is 0 (BPE's '!') is kept."""
  eot = jnp.argmax(tokens, axis=-1)
  return jnp.arange(tokens.shape[1])[None, :] <= eot[:, None]
