"""timm VisionTransformer (timm/models/vision_transformer.py; the layout DeiT, DINO and MoCo v3 publish:
patch_embed.proj, cls_token, pos_embed [1, 1 + N, D] with the CLS position first, blocks.N.{norm1, attn.qkv,
attn.proj, norm2, mlp.fc1, mlp.fc2}, norm) <-> cl_jax ViT (cl_jax/models/vit.py, posemb='learn')."""
from __future__ import annotations

import math
import re
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cl_jax.convert import keys
from cl_jax.models import vit

# timm names -> (cl_jax ViT size, patch, input size); the ViT size fixes width, depth and heads.
ARCHS = {
    "vit_tiny_patch16_224": ("vit_tiny", 16, 224),
    "vit_small_patch16_224": ("vit_small", 16, 224),
    "vit_base_patch16_224": ("vit_base", 16, 224),
    "vit_base_patch32_224": ("vit_base", 32, 224),
    "vit_large_patch16_224": ("vit_large", 16, 224),
}
# Heads and pre-logits a checkpoint may carry besides the backbone (the classifier, DINO/MoCo heads elsewhere).
_IGNORED = re.compile(r"^(head|head_dist|fc_norm|pre_logits)\.")


def model_fields(arch: str) -> dict[str, Any]:
  """The cl_jax config.model of timm's `arch` (e.g. vit_small, patch 16), or of 'vit_micro/8'-style cl_jax names."""
  if arch in ARCHS:
    size, patch, _ = ARCHS[arch]
  elif arch.split("/")[0] in vit._ARCHS:   # pylint: disable=protected-access
    size, patch = arch.split("/")[0], int(arch.split("/")[1]) if "/" in arch else 16
  else:
    raise ValueError(f"Unknown timm ViT '{arch}'; use one of: {', '.join(ARCHS)} (or a cl_jax size such as "
                     "vit_micro/8).")
  return dict(name=size, patch_size=patch, frozen_patch_embed=False, posemb="learn", bn="sync", dtype="float32")


def model(arch: str) -> vit.ViT:
  """The cl_jax ViT of timm's `arch` (see model_fields)."""
  f = model_fields(arch)
  return vit.ViT(**vit._ARCHS[f["name"]], patch_size=f["patch_size"], arch=f["name"])   # pylint: disable=protected-access


def image_size(arch: str) -> int:
  """The input resolution timm's `arch` was trained at (its position grid); 224 for cl_jax names."""
  return ARCHS[arch][2] if arch in ARCHS else 224


def table(depth: int) -> list[keys.Entry]:
  """The key table of a depth-`depth` timm ViT, pos_embed excepted (it splits into cls and grid positions)."""
  out = [keys.Entry("patch_embed.proj.weight", "params", ("patch_embed", "kernel"), "conv"),
         keys.Entry("patch_embed.proj.bias", "params", ("patch_embed", "bias"), "copy"),
         keys.Entry("cls_token", "params", ("cls_token",), "copy"),
         keys.Entry("norm.weight", "params", ("norm", "scale"), "copy"),
         keys.Entry("norm.bias", "params", ("norm", "bias"), "copy")]
  for i in range(depth):
    t, f = f"blocks.{i}", f"block{i + 1}"
    for tn, fp in (("norm1", ("norm1",)), ("norm2", ("norm2",))):
      out += [keys.Entry(f"{t}.{tn}.weight", "params", (f, *fp, "scale"), "copy"),
              keys.Entry(f"{t}.{tn}.bias", "params", (f, *fp, "bias"), "copy")]
    for tn, fp in (("attn.qkv", ("attn", "qkv")), ("attn.proj", ("attn", "proj")), ("mlp.fc1", ("fc1",)),
                   ("mlp.fc2", ("fc2",))):
      out += [keys.Entry(f"{t}.{tn}.weight", "params", (f, *fp, "kernel"), "linear"),
              keys.Entry(f"{t}.{tn}.bias", "params", (f, *fp, "bias"), "copy")]
  return out


def _variables(m: vit.ViT, grid: tuple[int, int]) -> Any:
  x = jnp.zeros((1, grid[0] * m.patch_size, grid[1] * m.patch_size, 3))
  return jax.eval_shape(lambda: m.init(jax.random.PRNGKey(0), x, train=False))


def _grid_of(pos_embed: np.ndarray) -> tuple[int, int]:
  n = pos_embed.shape[1] - 1
  g = math.isqrt(n)
  if g * g != n:
    raise keys.StateDictMismatch(f"pos_embed has {n} patch positions, not a square grid; a timm ViT without a "
                                 "class-token position (no_embed_class) is not supported.")
  return g, g


def to_flax(state_dict: Mapping[str, Any], m: vit.ViT, grid: tuple[int, int] | None = None) -> dict[str, dict]:
  """timm ViT state dict -> {'params'} of cl_jax ViT `m`; the position grid is kept, or bilinearly resized to
  `grid` (patches per side) when given (cl_jax.models.vit.interpolate_posemb)."""
  sd = keys.to_numpy(keys.strip_prefix(state_dict, ("module.base_encoder.", "module.", "backbone.", "encoder.")))
  t = table(m.depth)
  arch = f"timm ViT (width {m.dim}, depth {m.depth}, patch {m.patch_size})"
  src_grid = _grid_of(sd["pos_embed"]) if np.ndim(sd.get("pos_embed")) == 3 else (1, 1)
  expected = keys.expected_shapes(t, _variables(m, src_grid))
  expected["pos_embed"] = (1, 1 + src_grid[0] * src_grid[1], m.dim)
  keys.check(sd, expected, arch, ignore=lambda k: bool(_IGNORED.match(k)))
  out = keys.apply_to_flax(t, sd)
  pos = sd["pos_embed"].astype(np.float32)
  out["params"]["cls_pos_embedding"] = np.ascontiguousarray(pos[:, :1])
  posgrid = pos[:, 1:].reshape(1, *src_grid, m.dim)
  if grid is not None and tuple(grid) != src_grid:
    posgrid = np.asarray(vit.interpolate_posemb(jnp.asarray(posgrid), tuple(grid)))
  out["params"]["pos_embedding"] = np.ascontiguousarray(posgrid)
  del out["batch_stats"]
  return out


def from_flax(variables: Mapping[str, Any], depth: int) -> dict[str, np.ndarray]:
  """cl_jax ViT {'params'} -> a timm VisionTransformer state dict (class_token=True, no head: strict=False)."""
  p = variables["params"]
  sd = keys.apply_to_torch(table(depth), {"params": p})
  grid = np.asarray(p["pos_embedding"])
  sd["pos_embed"] = np.concatenate([np.asarray(p["cls_pos_embedding"]), grid.reshape(1, -1, grid.shape[-1])], 1)
  return sd
