"""CLIP's text encoder: a causal pre-LN Transformer pooled at the end-of-text token, projected to the joint space."""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cl_jax.models.registry import DTYPES, parse_dtype
from cl_jax.schema import Field, validate

ACTIVATIONS = {"quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x), "gelu": functools.partial(nn.gelu,
                                                                                                approximate=False)}


class TextBlock(nn.Module):
  """Pre-LN residual attention block with a causal mask: x + attn(LN(x)), then x + MLP(LN(x)) (CLIP Sec. 2.4)."""
  num_heads: int
  mlp_ratio: int
  attn_std: float
  proj_std: float
  fc_std: float
  act: str = "quick_gelu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    d = x.shape[-1]
    norm = functools.partial(nn.LayerNorm, epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32)
    normal = nn.initializers.normal
    y = nn.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=normal(self.attn_std),
        out_kernel_init=normal(self.proj_std), name="attn")(norm(name="ln_1")(x), mask=mask)
    x = x + y
    y = nn.Dense(self.mlp_ratio * d, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=normal(self.fc_std),
                 name="c_fc")(norm(name="ln_2")(x))
    y = nn.Dense(d, dtype=self.dtype, param_dtype=jnp.float32, kernel_init=normal(self.proj_std),
                 name="c_proj")(ACTIVATIONS[self.act](y))
    return x + y


class TextTransformer(nn.Module):
  """CLIP's text tower (Radford et al. 2021, Sec. 2.4): token + learned position embeddings, `depth` causal
  pre-LN blocks, final LN, the feature at the end-of-text token (the largest id, as CLIP's `argmax`), a linear
  projection (no bias) to `embed_dim`. Init as CLIP's `initialize_parameters`.

  `__call__(tokens [b, L] int, return_tokens=False) -> [b, embed_dim]` float32 (unnormalised); with
  `return_tokens`, {"pooled": [b, embed_dim], "tokens": [b, L, width] after the final LN}.
  With `mask` (bool [b, L], True = masked) the token embeddings at masked positions are replaced by one learned
  `mask_embedding` (BERT's [MASK], Devlin et al. 2019, Sec. 3.1) before the positions are added; pooling still
  reads `tokens` (the end-of-text position), so mask only content tokens. The parameter exists only in models
  initialised with a mask, so other parameter trees are unchanged.
  """
  vocab_size: int
  context_length: int = 77
  width: int = 512
  depth: int = 12
  num_heads: int = 8
  embed_dim: int = 512
  mlp_ratio: int = 4
  act: str = "quick_gelu"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, return_tokens: bool = False,
               mask: jax.Array | None = None) -> jax.Array | dict[str, jax.Array]:
    b, length = tokens.shape
    if length > self.context_length:
      raise ValueError(f"tokens have length {length} > the text model's context_length {self.context_length}; "
                       "set text_model.context_length to the tokenizer's context_length.")
    if self.width % self.num_heads:
      raise ValueError(f"text_model.width {self.width} is not divisible by heads {self.num_heads}; "
                       "pick heads dividing the width (CLIP: width // 64).")
    w = self.width
    x = nn.Embed(self.vocab_size, w, embedding_init=nn.initializers.normal(0.02), param_dtype=jnp.float32,
                 name="token_embedding")(tokens)
    if mask is not None:
      if mask.shape != tokens.shape:
        raise ValueError(f"the text mask has shape {mask.shape}; it needs the tokens' shape {tokens.shape}.")
      mask_embedding = self.param("mask_embedding", nn.initializers.normal(0.02), (w,), jnp.float32)
      x = jnp.where(mask[..., None], mask_embedding, x)
    pos = self.param("positional_embedding", nn.initializers.normal(0.01), (self.context_length, w), jnp.float32)
    x = (x + pos[:length]).astype(self.dtype)
    causal = nn.make_causal_mask(tokens)
    attn_std, proj_std, fc_std = w ** -0.5, w ** -0.5 * (2 * self.depth) ** -0.5, (2 * w) ** -0.5
    for i in range(self.depth):
      x = TextBlock(self.num_heads, self.mlp_ratio, attn_std, proj_std, fc_std, self.act, self.dtype,
                    name=f"block{i + 1}")(x, causal)
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, param_dtype=jnp.float32, name="ln_final")(x)
    x = x.astype(jnp.float32)
    eot = jnp.argmax(tokens, axis=-1)
    pooled = x[jnp.arange(b), eot]
    proj = self.param("text_projection", nn.initializers.normal(w ** -0.5), (w, self.embed_dim), jnp.float32)
    pooled = pooled @ proj
    if return_tokens:
      return {"pooled": pooled, "tokens": x}
    return pooled


TEXT_SCHEMA = {"width": Field(512, low=1), "depth": Field(12, low=1), "heads": Field(8, low=1),
               "mlp_ratio": Field(4, low=1), "act": Field("quick_gelu", choices=tuple(ACTIVATIONS)),
               "dtype": Field("float32", choices=tuple(DTYPES)), "vocab_size": Field(None),
               "context_length": Field(None)}   # None: the tokenizer's


def build_text_model(cfg: Any, vocab_size: int, context_length: int, embed_dim: int) -> TextTransformer:
  """A TextTransformer from the validated config.text_model (TEXT_SCHEMA); vocab_size / context_length default to
  the tokenizer's (a larger config value is allowed)."""
  hp = validate("text_model", cfg, TEXT_SCHEMA, ignore=())
  vocab = int(hp["vocab_size"] or vocab_size)
  if vocab < vocab_size:
    raise ValueError(f"text_model.vocab_size {vocab} is smaller than the tokenizer's {vocab_size}; "
                     "unset it (it defaults to the tokenizer's).")
  return TextTransformer(vocab_size=vocab, context_length=int(hp["context_length"] or context_length),
                         width=int(hp["width"]), depth=int(hp["depth"]), num_heads=int(hp["heads"]),
                         embed_dim=int(embed_dim), mlp_ratio=int(hp["mlp_ratio"]), act=hp["act"],
                         dtype=parse_dtype(hp["dtype"]))
