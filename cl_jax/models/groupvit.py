"""GroupViT's image encoder (Xu et al., CVPR 2022, Sec. 3.1, Fig. 2; NVlabs/GroupViT models/group_vit.py).

Stages of Transformer blocks over [segment tokens; learnable group tokens]; between stages a grouping block
assigns every segment to one group (Gumbel-softmax over the groups with a straight-through hard assignment,
Sec. 3.1 Eq. 1-3) and merges the segments of each group. The official pieces, in order: PatchEmbed (conv
p x p, then LayerNorm), learned positions ('simple', trunc-normal 0.02), GroupingLayer (blocks over the
concatenation, then the GroupingBlock), the group-token projector (LN + MixerMlp from the previous stage's
group tokens, added to the zero-initialised new group tokens), the final LayerNorm and average pooling.
Differences from the official code: no drop-path (the paper's 0.1) and ViT blocks from cl_jax/models/vit.py
(LayerNorm eps 1e-6, Xavier init instead of trunc-normal 0.02); positions are resized bilinearly, not bicubic.

Registered as backbone `groupvit` (config.model: width, depths, num_heads, num_group_tokens, num_output_groups,
patch_size, gumbel_tau, hard_assignment); the defaults are the paper's GroupViT-S (384, [6, 3, 3], [64, 8]).
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn

from cl_jax.models.registry import parse_dtype, register
from cl_jax.models.vit import Block, PatchEmbed, interpolate_posemb
from cl_jax.schema import Field

_trunc = nn.initializers.truncated_normal(0.02)
_LN = functools.partial(nn.LayerNorm, epsilon=1e-5)
_gelu = functools.partial(nn.gelu, approximate=False)


def hard_softmax(logits: jax.Array, axis: int) -> jax.Array:
  """One-hot argmax of softmax(logits) in the forward pass, softmax's gradient (official `hard_softmax`)."""
  soft = jax.nn.softmax(logits, axis=axis)
  hard = jax.nn.one_hot(jnp.argmax(soft, axis=axis), logits.shape[axis], axis=axis, dtype=soft.dtype)
  return hard - jax.lax.stop_gradient(soft) + soft


def gumbel_softmax(logits: jax.Array, noise: jax.Array, tau: float = 1.0, hard: bool = True,
                   axis: int = -1) -> jax.Array:
  """softmax((logits + g) / tau), g ~ Gumbel(0, 1) given as `noise`; `hard`: straight-through one-hot (Jang et
  al. 2017; official `gumbel_softmax`, GroupViT Sec. 3.1 Eq. 2-3)."""
  y = (logits + noise) / tau
  return hard_softmax(y, axis) if hard else jax.nn.softmax(y, axis=axis)


class Mlp(nn.Module):
  """fc1 -> GELU -> fc2 (official `Mlp`)."""
  hidden: int
  out: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.out, kernel_init=_trunc, name="fc2")(_gelu(nn.Dense(self.hidden, kernel_init=_trunc,
                                                                            name="fc1")(x)))


class CrossAttention(nn.Module):
  """Multi-head attention of queries over keys, separate q/k/v projections with bias (official `Attention`)."""
  num_heads: int

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array) -> jax.Array:
    b, n, d = query.shape
    h = self.num_heads
    dense = functools.partial(nn.Dense, d, kernel_init=_trunc)
    q = dense(name="q_proj")(query).reshape(b, n, h, d // h)
    k = dense(name="k_proj")(key).reshape(b, key.shape[1], h, d // h)
    v = dense(name="v_proj")(key).reshape(b, key.shape[1], h, d // h)
    attn = jax.nn.softmax(jnp.einsum("bqhc,bkhc->bhqk", q, k) * (d // h) ** -0.5, axis=-1)
    return dense(name="proj")(jnp.einsum("bhqk,bkhc->bqhc", attn, v).reshape(b, n, d))


class CrossAttnBlock(nn.Module):
  """x = q + Attn(q, k); x = x + MLP(LN(x)); LN(x) (official `CrossAttnBlock` with post_norm=True)."""
  num_heads: int

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array) -> jax.Array:
    d = query.shape[-1]
    x = query + CrossAttention(self.num_heads, name="attn")(query, key)
    x = x + Mlp(4 * d, d, name="mlp")(_LN(name="norm2")(x))
    return _LN(name="norm_post")(x)


class AssignAttention(nn.Module):
  """One-head assignment of segments to groups (Sec. 3.1 Eq. 1-3; official `AssignAttention`, hard, gumbel,
  assign_eps 1): A = gumbel/hard softmax over the GROUP axis of q(groups) k(segments)^T / sqrt(d), then
  out = proj((A / (sum_segments A + 1)) v(segments)). Returns (out [b, G, d], hard A [b, G, N], soft A)."""
  hard: bool = True
  gumbel_tau: float = 1.0
  assign_eps: float = 1.0

  @nn.compact
  def __call__(self, query: jax.Array, key: jax.Array, noise: jax.Array | None):
    d = query.shape[-1]
    dense = functools.partial(nn.Dense, d, kernel_init=_trunc)
    q, k, v = dense(name="q_proj")(query), dense(name="k_proj")(key), dense(name="v_proj")(key)
    raw = jnp.einsum("bgc,bnc->bgn", q, k) * d ** -0.5
    if noise is not None:            # training with Gumbel noise
      attn = gumbel_softmax(raw, noise, self.gumbel_tau, self.hard, axis=-2)
    else:
      attn = hard_softmax(raw, axis=-2) if self.hard else jax.nn.softmax(raw, axis=-2)
    soft = jax.nn.softmax(raw, axis=-2)
    out = jnp.einsum("bgn,bnc->bgc", attn / (jnp.sum(attn, axis=-1, keepdims=True) + self.assign_eps), v)
    return dense(name="proj")(out), attn, soft


class GroupingBlock(nn.Module):
  """Merges N segments into `num_output_group` new segments (Sec. 3.1; official `GroupingBlock`): the group
  tokens are projected over the token axis (MLP num_group_token -> 0.5 d -> num_output_group), attend to the
  segments (CrossAttnBlock), assign them (AssignAttention) and pass an MLP with a residual."""
  num_heads: int
  num_output_group: int
  hard: bool = True
  gumbel_tau: float = 1.0

  @nn.compact
  def __call__(self, x: jax.Array, group_tokens: jax.Array, noise: jax.Array | None):
    d = x.shape[-1]
    g = _LN(name="norm_tokens")(group_tokens)
    x = _LN(name="norm_x")(x)
    proj = Mlp(d // 2, self.num_output_group, name="mlp_inter")(g.transpose(0, 2, 1)).transpose(0, 2, 1)
    proj = _LN(name="norm_post_tokens")(proj)
    proj = CrossAttnBlock(self.num_heads, name="pre_assign_attn")(proj, x)
    new_x, hard, soft = AssignAttention(self.hard, self.gumbel_tau, name="assign")(proj, x, noise)
    new_x = new_x + proj
    new_x = new_x + Mlp(4 * d, d, name="mlp_channels")(_LN(name="norm_new_x")(new_x))
    return new_x, hard, soft


class GroupViT(nn.Module):
  """GroupViT image encoder (Sec. 3.1): `__call__(x, train, noise_keys=None, return_groups=False)`.

  Without `return_groups`: the average-pooled final segment tokens [b, width] (after the final LN). With it, a
  dict {"pooled", "groups": [b, G_last, width], "assign": per grouping stage the assignment A^T [b, N_in, G_out]
  as used in the forward pass (one-hot rows when hard), "soft": the noise-free softmax assignments}. Gumbel noise
  is drawn only when `noise_keys` (one key per example, [b]) is given, from fold_in(key, stage): training; without
  keys the assignment is the hard argmax (the official eval mode), whatever `train` says.
  """
  width: int = 384
  depths: Sequence[int] = (6, 3, 3)
  num_heads: int = 6
  num_group_tokens: Sequence[int] = (64, 8, 0)
  num_output_groups: Sequence[int] = (64, 8)
  patch_size: int = 16
  gumbel_tau: float = 1.0
  hard_assignment: bool = True
  dtype: Any = jnp.float32

  @property
  def feature_dim(self) -> int:
    return self.width

  def grid(self, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The patch grid of an image of (height, width)."""
    return image_hw[0] // self.patch_size, image_hw[1] // self.patch_size

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False, noise_keys: jax.Array | None = None,
               return_groups: bool = False) -> jax.Array | dict[str, Any]:
    del train  # no dropout / drop-path; noise comes only with noise_keys
    if x.ndim != 4 or x.shape[1] % self.patch_size or x.shape[2] % self.patch_size:
      raise ValueError(f"groupvit expects images [batch, H, W, 3] with H, W multiples of patch_size="
                       f"{self.patch_size}, got shape {x.shape}; set data.image_size / crop sizes accordingly.")
    d = self.width
    x = PatchEmbed(self.patch_size, d, name="patch_embed")(x)
    b, gh, gw, _ = x.shape
    x = _LN(name="patch_norm")(x.reshape(b, gh * gw, d))
    shape = (1, gh, gw, d)
    if self.has_variable("params", "pos_embed"):
      shape = self.get_variable("params", "pos_embed").shape
    pos = self.param("pos_embed", _trunc, shape, jnp.float32)
    x = x + interpolate_posemb(pos, (gh, gw)).reshape(1, gh * gw, d)
    prev_groups, assigns, softs = None, [], []
    for i, depth in enumerate(self.depths):
      n_group = int(self.num_group_tokens[i]) if i < len(self.num_group_tokens) else 0
      groups = None
      if n_group:
        init = nn.initializers.zeros if prev_groups is not None else _trunc   # official zero_init_group_token
        groups = jnp.broadcast_to(self.param(f"group_token{i}", init, (1, n_group, d), jnp.float32), (b, n_group, d))
        if prev_groups is not None:   # official group_projector: LN + MixerMlp over the token axis
          p = _LN(name=f"group_projector{i}_norm")(prev_groups).transpose(0, 2, 1)
          groups = groups + Mlp(d // 2, n_group, name=f"group_projector{i}_mlp")(p).transpose(0, 2, 1)
        x = jnp.concatenate([x, groups], axis=1)
      for j in range(depth):
        x = Block(self.num_heads, 4, self.dtype, name=f"stage{i}_block{j}")(x)
      if n_group:
        x, groups = x[:, :-n_group], x[:, -n_group:]
      if i < len(self.depths) - 1:
        n_out = int(self.num_output_groups[i])
        noise = None
        if noise_keys is not None:
          noise = jax.vmap(lambda k: jax.random.gumbel(jax.random.fold_in(k, i), (n_out, x.shape[1])))(noise_keys)
        x, hard, soft = GroupingBlock(self.num_heads, n_out, self.hard_assignment, self.gumbel_tau,
                                      name=f"grouping{i}")(x, groups, noise)
        assigns.append(hard.transpose(0, 2, 1))
        softs.append(soft.transpose(0, 2, 1))
        prev_groups = groups
    x = _LN(name="norm")(x).astype(jnp.float32)
    pooled = jnp.mean(x, axis=1)
    if return_groups:
      return {"pooled": pooled, "groups": x, "assign": assigns, "soft": softs}
    return pooled


def compose_assignments(assigns: Sequence[jax.Array], hard: bool = True) -> jax.Array:
  """Patch -> final-group map [b, N_patches, G_last] from the stages' [b, N_in, G_out] maps (official
  get_attn_maps: prev @ attn); `hard` makes each row one-hot at its argmax (one final group per patch)."""
  out = assigns[0]
  for a in assigns[1:]:
    out = out @ a
  if hard:
    out = jax.nn.one_hot(jnp.argmax(out, axis=-1), out.shape[-1], dtype=out.dtype)
  return out


SCHEMA = {"width": Field(384, low=1), "depths": Field((6, 3, 3)), "num_heads": Field(6, low=1),
          "num_group_tokens": Field((64, 8, 0)), "num_output_groups": Field((64, 8)),
          "patch_size": Field(16, low=1), "gumbel_tau": Field(1.0, low=0, open_low=True),
          "hard_assignment": Field(True, choices=(True, False))}


@register("groupvit", SCHEMA)
def groupvit_from_config(hp: dict[str, Any]) -> GroupViT:
  """GroupViT from the validated model fields; stage lists must agree (one-line errors)."""
  depths, tokens, outs = (tuple(int(v) for v in hp[k]) for k in ("depths", "num_group_tokens", "num_output_groups"))
  if len(tokens) != len(depths) or len(outs) != len(depths) - 1:
    raise ValueError(f"groupvit needs len(num_group_tokens) == len(depths) and len(num_output_groups) == "
                     f"len(depths) - 1, got depths={depths}, num_group_tokens={tokens}, num_output_groups={outs}.")
  if any(t == 0 for t in tokens[:-1]) or tokens[-1] != 0:
    raise ValueError(f"groupvit num_group_tokens={tokens}: every stage but the last needs group tokens and the "
                     "last none (the paper: (64, 8, 0)).")
  if int(hp["width"]) % int(hp["num_heads"]):
    raise ValueError(f"groupvit width={hp['width']} is not divisible by num_heads={hp['num_heads']}.")
  return GroupViT(width=int(hp["width"]), depths=depths, num_heads=int(hp["num_heads"]), num_group_tokens=tokens,
                  num_output_groups=outs, patch_size=int(hp["patch_size"]), gumbel_tau=float(hp["gumbel_tau"]),
                  hard_assignment=bool(hp["hard_assignment"]), dtype=parse_dtype(hp["dtype"]))
