"""Vision Transformers (Dosovitskiy et al. 2021): CLS token, learned positions, pre-LN blocks."""
from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from cl_jax.models.registry import parse_dtype, register
from cl_jax.schema import Field

_dense_init = nn.initializers.xavier_uniform()
_embed_init = nn.initializers.truncated_normal(0.02)
POSEMBS = ("learn", "sincos2d")


def sincos_posemb_2d(gh: int, gw: int, dim: int, temperature: float = 10000.0) -> jax.Array:
  """Fixed 2-D sin-cos positions [gh * gw, dim] of MoCo v3 (Sec. 4.2; build_2d_sincos_position_embedding):
  channels [sin, cos] of the row index then [sin, cos] of the column index, frequencies 1 / T^(k / (dim / 4))."""
  if dim % 4:
    raise ValueError(f"sincos2d position embeddings need a width divisible by 4, got {dim}; use posemb='learn'.")
  rows, cols = jnp.meshgrid(jnp.arange(gh, dtype=jnp.float32), jnp.arange(gw, dtype=jnp.float32), indexing="ij")
  omega = 1.0 / temperature ** (jnp.arange(dim // 4, dtype=jnp.float32) / (dim // 4))
  out_r, out_c = rows.reshape(-1, 1) * omega, cols.reshape(-1, 1) * omega
  return jnp.concatenate([jnp.sin(out_r), jnp.cos(out_r), jnp.sin(out_c), jnp.cos(out_c)], axis=1)


def interpolate_posemb(posemb: jax.Array, grid: tuple[int, int]) -> jax.Array:
  """Bilinearly resizes a [1, gh, gw, D] position grid to `grid` (half-pixel centres, no antialias).

  The multi-crop recipe (DINO, Caron et al. 2021, Sec. 3.1 / Appendix) feeds 224 px and 96 px crops
  through one model; positions learned for the init grid are interpolated to the input's grid.
  """
  if tuple(posemb.shape[1:3]) == tuple(grid):
    return posemb
  shape = (posemb.shape[0], grid[0], grid[1], posemb.shape[-1])
  return jax.image.resize(posemb, shape, method="linear", antialias=False)


class PatchEmbed(nn.Module):
  """Linear projection of p x p patches (ViT Eq. 1); optionally frozen (MoCo v3 Sec. 4.2)."""
  patch_size: int
  dim: int
  frozen: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    p = self.patch_size
    # Xavier-uniform over the flattened (p*p*3 -> dim) projection, as MoCo v3's ViT.
    init = nn.initializers.variance_scaling(1.0, "fan_avg", "uniform", in_axis=(0, 1, 2),
                                            out_axis=-1)
    kernel = self.param("kernel", init, (p, p, x.shape[-1], self.dim), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.dim,), jnp.float32)
    if self.frozen:  # random projection that never receives a gradient
      kernel, bias = jax.lax.stop_gradient(kernel), jax.lax.stop_gradient(bias)
    y = jax.lax.conv_general_dilated(x.astype(self.dtype), kernel.astype(self.dtype), (p, p),
                                     "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias.astype(self.dtype)


class Attention(nn.Module):
  """Multi-head self-attention, fused qkv, softmax in float32 (Vaswani et al. 2017, Eq. 1)."""
  num_heads: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, n, d = x.shape
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                              kernel_init=_dense_init)
    qkv = dense(3 * d, name="qkv")(x).reshape(b, n, 3, self.num_heads, d // self.num_heads)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(d // self.num_heads).astype(self.dtype)
    attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    y = jnp.einsum("bhqk,bkhc->bqhc", attn, v).reshape(b, n, d)
    return dense(d, name="proj")(y)


class Block(nn.Module):
  """Pre-LN transformer block: x + MSA(LN(x)), then x + MLP(LN(x)) with GELU (ViT Eq. 2-3)."""
  num_heads: int
  mlp_ratio: int = 4
  dtype: Any = jnp.float32
  eps: float = 1e-6
  act: str = "gelu"

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    norm = functools.partial(nn.LayerNorm, epsilon=self.eps, dtype=self.dtype, param_dtype=jnp.float32)
    dense = functools.partial(nn.Dense, dtype=self.dtype, param_dtype=jnp.float32,
                              kernel_init=_dense_init)
    x = x + Attention(self.num_heads, self.dtype, name="attn")(norm(name="norm1")(x))
    y = dense(self.mlp_ratio * x.shape[-1], name="fc1")(norm(name="norm2")(x))
    y = nn.gelu(y, approximate=False) if self.act == "gelu" else y * jax.nn.sigmoid(1.702 * y)   # quick_gelu
    return x + dense(x.shape[-1], name="fc2")(y)


class ViT(nn.Module):
  """ViT encoder: `__call__(x, train, return_tokens=False)` -> CLS feature [b, D] after final LN.

  With return_tokens it returns {"cls": [b, D], "patches": [b, N, D]}; outputs are float32.
  With `mask` (bool [b, N], True = masked, patches in row-major grid order) the embeddings of the masked patches
  are replaced by one learned `mask_token` before the position embeddings are added (BEiT, Bao et al. 2022,
  Sec. 2.2); the parameter exists only in models initialised with a mask, so other parameter trees are unchanged.
  Position embeddings are learned at the init resolution and bilinearly interpolated for other
  input sizes, or (posemb="sincos2d") fixed 2-D sin-cos with a zero CLS position, computed for any grid.
  `frozen_patch_embed` stops the gradient of the patch projection; both are MoCo v3's (Sec. 4.2).
  """
  dim: int
  depth: int
  num_heads: int
  patch_size: int = 16
  mlp_ratio: int = 4
  frozen_patch_embed: bool = False
  posemb: str = "learn"
  dtype: Any = jnp.float32
  arch: str = "vit"
  norm_eps: float = 1e-6
  pre_norm: bool = False
  act: str = "gelu"

  @property
  def feature_dim(self) -> int:
    """Size D of the CLS feature, known without running the model."""
    return self.dim

  def _check_input(self, x: jax.Array) -> None:
    if x.ndim != 4:
      raise ValueError(f"{self.arch} expects images [batch, height, width, channels], "
                       f"got shape {x.shape}.")
    h, w = x.shape[1:3]
    if h % self.patch_size or w % self.patch_size:
      raise ValueError(f"image size {h}x{w} is not a multiple of the patch size "
                       f"{self.patch_size} for {self.arch}; use a data.image_size (and crop "
                       f"sizes) divisible by {self.patch_size}.")

  @nn.compact
  def __call__(self, x: jax.Array, train: bool, return_tokens: bool = False,
               mask: jax.Array | None = None) -> jax.Array | dict:
    del train  # no dropout / drop-path: kept for a uniform backbone signature
    self._check_input(x)
    x = PatchEmbed(self.patch_size, self.dim, self.frozen_patch_embed, self.dtype,
                   name="patch_embed")(x)
    b, gh, gw, d = x.shape
    if mask is not None:
      if mask.shape != (b, gh * gw):
        raise ValueError(f"{self.arch} got a patch mask of shape {mask.shape}; it needs [batch, patches] = "
                         f"[{b}, {gh * gw}] for a {gh}x{gw} patch grid.")
      mask_token = self.param("mask_token", _embed_init, (1, 1, d), jnp.float32)
      x = jnp.where(mask.reshape(b, gh, gw, 1), mask_token.reshape(1, 1, 1, d).astype(x.dtype), x)
    if self.posemb == "sincos2d":
      posemb, cls_pos = sincos_posemb_2d(gh, gw, d)[None], jnp.zeros((1, 1, d), jnp.float32)
    else:
      # The parameter's shape records the init grid; other grids are interpolated from it.
      grid_shape = (1, gh, gw, d)
      if self.has_variable("params", "pos_embedding"):
        grid_shape = self.get_variable("params", "pos_embedding").shape
      posemb = self.param("pos_embedding", _embed_init, grid_shape, jnp.float32)
      posemb = interpolate_posemb(posemb, (gh, gw)).reshape(1, gh * gw, d)
      cls_pos = self.param("cls_pos_embedding", _embed_init, (1, 1, d), jnp.float32)
    cls = self.param("cls_token", _embed_init, (1, 1, d), jnp.float32)
    x = x.reshape(b, gh * gw, d) + posemb.astype(self.dtype)
    cls = jnp.broadcast_to((cls + cls_pos).astype(self.dtype), (b, 1, d))
    x = jnp.concatenate([cls, x], axis=1)
    if self.pre_norm:   # CLIP's ln_pre
      x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=jnp.float32, name="norm_pre")(x)
    for i in range(self.depth):
      x = Block(self.num_heads, self.mlp_ratio, self.dtype, self.norm_eps, self.act, name=f"block{i + 1}")(x)
    x = nn.LayerNorm(epsilon=self.norm_eps, dtype=self.dtype, param_dtype=jnp.float32, name="norm")(x)
    x = x.astype(jnp.float32)
    if return_tokens:
      return {"cls": x[:, 0], "patches": x[:, 1:]}
    return x[:, 0]


_ARCHS = {
    "vit_micro": dict(dim=64, depth=2, num_heads=2),
    "vit_tiny": dict(dim=192, depth=12, num_heads=3),
    "vit_small": dict(dim=384, depth=12, num_heads=6),
    "vit_base": dict(dim=768, depth=12, num_heads=12),
    "vit_large": dict(dim=1024, depth=24, num_heads=16),
}


SCHEMA = {"patch_size": Field(16, low=1), "frozen_patch_embed": Field(False, choices=(True, False)),
          "posemb": Field("learn", choices=POSEMBS),
          # CLIP's image tower (Radford et al. 2021, OpenAI clip/model.py VisionTransformer): ln_pre, eps 1e-5,
          # QuickGELU in OpenAI's weights; the defaults are the ViT paper's and leave every other tree unchanged.
          "pre_norm": Field(False, choices=(True, False)), "norm_eps": Field(1e-6, low=0.0, open_low=True),
          "act": Field("gelu", choices=("gelu", "quick_gelu"))}


def vit_from_config(hp: dict[str, Any], arch: str) -> ViT:
  """Builds ViT `arch` from the validated model fields (SCHEMA and registry.SHARED; bn is its heads')."""
  return ViT(**_ARCHS[arch], patch_size=int(hp["patch_size"]), frozen_patch_embed=bool(hp["frozen_patch_embed"]),
             posemb=hp["posemb"], dtype=parse_dtype(hp["dtype"]), arch=arch, pre_norm=bool(hp["pre_norm"]),
             norm_eps=float(hp["norm_eps"]), act=hp["act"])


for _name in _ARCHS:
  register(_name, SCHEMA)(functools.partial(vit_from_config, arch=_name))
