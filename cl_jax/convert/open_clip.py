"""open_clip / OpenAI CLIP (open_clip/model.py CLIP, open_clip/transformer.py; OpenAI's clip/model.py has the same
keys) <-> cl_jax's CLIP parameters (cl_jax/methods/language_image.py DualEncoder: backbone, text, image_projection;
logit_scale beside it). The text tower maps onto cl_jax/models/text.py TextTransformer and the ModifiedResNet (RN50)
onto cl_jax/models/clip_resnet.py as they are, the ViT image tower onto cl_jax/models/vit.py with its CLIP fields
(pre_norm = ln_pre, norm_eps 1e-5, act quick_gelu for OpenAI's weights): see docs/convert.md."""
from __future__ import annotations

import re
from typing import Any, Mapping

import jax
import numpy as np

from cl_jax.convert import keys
from cl_jax.models import vit as vit_lib

# open_clip model names of the ModifiedResNet towers -> cl_jax clip_resnet sizes.
RESNETS = {"RN50": "clip_rn50", "RN101": "clip_rn101", "RN50x4": "clip_rn50x4", "RN50-quickgelu": "clip_rn50",
           "RN101-quickgelu": "clip_rn101"}
# open_clip model names of the ViT towers -> cl_jax vit sizes (the patch size is read off the state dict).
VITS = {f"ViT-{s}-{p}{q}": name for s, name in (("B", "vit_base"), ("L", "vit_large")) for p in (32, 16, 14)
        for q in ("", "-quickgelu")}


def vit_size(width: int, depth: int) -> str:
  """The cl_jax vit_* size of an open_clip ViT tower of `width` x `depth` (vit.py _ARCHS), or a one-line error."""
  for name, a in vit_lib._ARCHS.items():   # pylint: disable=protected-access
    if a["dim"] == width and a["depth"] == depth:
      return name
  sizes = ", ".join(f"{n} ({a['dim']} x {a['depth']})" for n, a in vit_lib._ARCHS.items())   # pylint: disable=protected-access
  raise keys.StateDictMismatch(f"no cl_jax ViT size has width {width} and depth {depth} (the open_clip tower's); "
                               f"sizes: {sizes}.")

def vision_model(width: int, depth: int, heads: int, patch: int, act: str = "gelu") -> vit_lib.ViT:
  """The cl_jax ViT of an open_clip image tower: ln_pre, LayerNorm eps 1e-5, GELU (quick_gelu for OpenAI's)."""
  return vit_lib.ViT(dim=width, depth=depth, num_heads=heads, patch_size=patch, arch="clip_vit", pre_norm=True,
                     norm_eps=1e-5, act=act)


def _depth(sd: Mapping[str, Any], prefix: str) -> int:
  return len({m.group(1) for k in sd if (m := re.match(rf"{re.escape(prefix)}resblocks\.(\d+)\.", k))})


def _ln(sd: Mapping[str, np.ndarray], name: str) -> dict[str, np.ndarray]:
  return {"scale": sd[f"{name}.weight"], "bias": sd[f"{name}.bias"]}


def _block_to_flax(sd: Mapping[str, np.ndarray], t: str, heads: int) -> dict[str, Any]:
  """One residual attention block: nn.MultiheadAttention's fused in_proj -> flax MultiHeadDotProductAttention's
  query/key/value kernels [D, heads, c] and out kernel [heads, c, D]."""
  w, b = sd[f"{t}.attn.in_proj_weight"], sd[f"{t}.attn.in_proj_bias"]
  d = w.shape[1]
  c = d // heads
  attn = {name: {"kernel": w[i * d:(i + 1) * d].T.reshape(d, heads, c), "bias": b[i * d:(i + 1) * d].reshape(heads, c)}
          for i, name in enumerate(("query", "key", "value"))}
  attn["out"] = {"kernel": sd[f"{t}.attn.out_proj.weight"].T.reshape(heads, c, d), "bias": sd[f"{t}.attn.out_proj.bias"]}
  return {"ln_1": _ln(sd, f"{t}.ln_1"), "attn": attn, "ln_2": _ln(sd, f"{t}.ln_2"),
          "c_fc": {"kernel": sd[f"{t}.mlp.c_fc.weight"].T, "bias": sd[f"{t}.mlp.c_fc.bias"]},
          "c_proj": {"kernel": sd[f"{t}.mlp.c_proj.weight"].T, "bias": sd[f"{t}.mlp.c_proj.bias"]}}


def _block_from_flax(p: Mapping[str, Any], t: str) -> dict[str, np.ndarray]:
  a = {k: {n: np.asarray(x) for n, x in v.items()} for k, v in p["attn"].items()}
  d = a["out"]["bias"].shape[0]
  out = {f"{t}.attn.in_proj_weight": np.concatenate([a[n]["kernel"].reshape(d, d).T for n in ("query", "key", "value")]),
         f"{t}.attn.in_proj_bias": np.concatenate([a[n]["bias"].reshape(d) for n in ("query", "key", "value")]),
         f"{t}.attn.out_proj.weight": a["out"]["kernel"].reshape(d, d).T, f"{t}.attn.out_proj.bias": a["out"]["bias"]}
  for ln in ("ln_1", "ln_2"):
    out[f"{t}.{ln}.weight"], out[f"{t}.{ln}.bias"] = np.asarray(p[ln]["scale"]), np.asarray(p[ln]["bias"])
  for fc in ("c_fc", "c_proj"):
    out[f"{t}.mlp.{fc}.weight"], out[f"{t}.mlp.{fc}.bias"] = np.asarray(p[fc]["kernel"]).T, np.asarray(p[fc]["bias"])
  return out


def _text_expected(width: int, depth: int, vocab: int, context: int, embed: int) -> dict[str, tuple[int, ...]]:
  out = {"token_embedding.weight": (vocab, width), "positional_embedding": (context, width),
         "ln_final.weight": (width,), "ln_final.bias": (width,), "text_projection": (width, embed)}
  for i in range(depth):
    t = f"transformer.resblocks.{i}"
    out.update({f"{t}.ln_1.weight": (width,), f"{t}.ln_1.bias": (width,), f"{t}.ln_2.weight": (width,),
                f"{t}.ln_2.bias": (width,), f"{t}.attn.in_proj_weight": (3 * width, width),
                f"{t}.attn.in_proj_bias": (3 * width,), f"{t}.attn.out_proj.weight": (width, width),
                f"{t}.attn.out_proj.bias": (width,), f"{t}.mlp.c_fc.weight": (4 * width, width),
                f"{t}.mlp.c_fc.bias": (4 * width,), f"{t}.mlp.c_proj.weight": (width, 4 * width),
                f"{t}.mlp.c_proj.bias": (width,)})
  return out


def text_to_flax(state_dict: Mapping[str, Any], heads: int, depth: int | None = None) -> dict[str, Any]:
  """open_clip text tower keys (token_embedding, positional_embedding, transformer.resblocks.N, ln_final,
  text_projection) -> params of cl_jax's TextTransformer (width and vocabulary read off the state dict)."""
  sd = keys.to_numpy(state_dict)
  text = {k: v for k, v in sd.items() if not k.startswith("visual.") and k not in ("logit_scale", "attn_mask")}
  if "token_embedding.weight" not in text or "text_projection" not in text:
    raise keys.StateDictMismatch("state dict does not match an open_clip text tower: missing key "
                                 f"'token_embedding.weight' or 'text_projection'; it looks like {keys.looks_like(sd)}.")
  vocab, width = text["token_embedding.weight"].shape
  depth = _depth(text, "transformer.") if depth is None else depth
  context, embed = text["positional_embedding"].shape[0], text["text_projection"].shape[-1]
  keys.check(text, _text_expected(width, depth, vocab, context, embed),
             f"an open_clip text tower (width {width}, depth {depth})")
  out: dict[str, Any] = {"token_embedding": {"embedding": text["token_embedding.weight"]},
                         "positional_embedding": text["positional_embedding"], "ln_final": _ln(text, "ln_final"),
                         "text_projection": text["text_projection"]}
  for i in range(depth):
    out[f"block{i + 1}"] = _block_to_flax(text, f"transformer.resblocks.{i}", heads)
  return out


def text_from_flax(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """cl_jax TextTransformer params -> the open_clip text tower keys (the inverse of text_to_flax, bitwise)."""
  sd = {"token_embedding.weight": np.asarray(params["token_embedding"]["embedding"]),
        "positional_embedding": np.asarray(params["positional_embedding"]),
        "ln_final.weight": np.asarray(params["ln_final"]["scale"]),
        "ln_final.bias": np.asarray(params["ln_final"]["bias"]),
        "text_projection": np.asarray(params["text_projection"])}
  depth = len([k for k in params if k.startswith("block")])
  for i in range(depth):
    sd.update(_block_from_flax(params[f"block{i + 1}"], f"transformer.resblocks.{i}"))
  return sd


def visual_to_flax(state_dict: Mapping[str, Any], heads: int) -> dict[str, Any]:
  """open_clip VisionTransformer keys (visual.conv1, class_embedding, positional_embedding, ln_pre, resblocks,
  ln_post, proj) -> {'backbone': a cl_jax ViT tree plus 'norm_pre', 'image_projection': {'kernel'}}.

  conv1 has no bias: the ViT's patch bias is zero. The tree loads into a ViT only once vit.py has the ln_pre
  option (named norm_pre) and LayerNorm eps 1e-5 (docs/convert.md); until then it is used by to_torch round trips."""
  sd = {k[len("visual."):]: v for k, v in keys.to_numpy(state_dict).items() if k.startswith("visual.")}
  if "class_embedding" not in sd:
    raise keys.StateDictMismatch(f"state dict does not match an open_clip ViT image tower: missing key "
                                 f"'visual.class_embedding'; it looks like {keys.looks_like(state_dict)}.")
  width = sd["class_embedding"].shape[0]
  n = sd["positional_embedding"].shape[0] - 1
  g = int(round(n ** 0.5))
  vit: dict[str, Any] = {
      "patch_embed": {"kernel": keys.TORCH_TO_FLAX["conv"](sd["conv1.weight"]), "bias": np.zeros(width, np.float32)},
      "cls_token": sd["class_embedding"].reshape(1, 1, width),
      "cls_pos_embedding": sd["positional_embedding"][:1].reshape(1, 1, width),
      "pos_embedding": sd["positional_embedding"][1:].reshape(1, g, g, width),
      "norm_pre": _ln(sd, "ln_pre"), "norm": _ln(sd, "ln_post")}
  for i in range(_depth(sd, "transformer.")):
    b = _block_to_flax(sd, f"transformer.resblocks.{i}", heads)
    a = b["attn"]
    # ViT's fused qkv: kernel [D, 3D] with outputs ordered (q | k | v) x (heads, c), as nn.MultiheadAttention's.
    qkv_k = np.concatenate([a[x]["kernel"].reshape(width, width) for x in ("query", "key", "value")], axis=1)
    qkv_b = np.concatenate([a[x]["bias"].reshape(width) for x in ("query", "key", "value")])
    vit[f"block{i + 1}"] = {"norm1": b["ln_1"], "norm2": b["ln_2"], "fc1": b["c_fc"], "fc2": b["c_proj"],
                            "attn": {"qkv": {"kernel": qkv_k, "bias": qkv_b},
                                     "proj": {"kernel": a["out"]["kernel"].reshape(width, width),
                                              "bias": a["out"]["bias"]}}}
  return {"backbone": vit, "image_projection": {"kernel": sd["proj"]}}


def visual_from_flax(vit: Mapping[str, Any], projection: np.ndarray | None) -> dict[str, np.ndarray]:
  """The inverse of visual_to_flax (bitwise): a cl_jax ViT tree with norm_pre (and CLIP's image projection kernel)
  -> 'visual.*' keys of open_clip's VisionTransformer. Its conv1 has no bias, so the patch bias must be zero."""
  v = jax.tree.map(np.asarray, dict(vit))
  if "norm_pre" not in v:
    raise ValueError("the ViT has no norm_pre: open_clip's tower needs ln_pre (config.model.pre_norm=True).")
  if np.any(v["patch_embed"]["bias"]):
    raise ValueError("the ViT's patch bias is not zero, and open_clip's conv1 has none: this tower has no exact "
                     "open_clip layout (write it in the timm layout instead).")
  width = v["cls_token"].shape[-1]
  sd = {"visual.conv1.weight": keys.FLAX_TO_TORCH["conv"](v["patch_embed"]["kernel"]),
        "visual.class_embedding": v["cls_token"].reshape(width),
        "visual.positional_embedding": np.concatenate([v["cls_pos_embedding"].reshape(1, width),
                                                       v["pos_embedding"].reshape(-1, width)]),
        "visual.ln_pre.weight": v["norm_pre"]["scale"], "visual.ln_pre.bias": v["norm_pre"]["bias"],
        "visual.ln_post.weight": v["norm"]["scale"], "visual.ln_post.bias": v["norm"]["bias"]}
  if projection is not None:
    sd["visual.proj"] = np.asarray(projection)
  for i in range(len([k for k in v if k.startswith("block")])):
    b = v[f"block{i + 1}"]
    q, k, val = np.split(b["attn"]["qkv"]["kernel"], 3, axis=1)
    qb, kb, vb = np.split(b["attn"]["qkv"]["bias"], 3)
    block = {"ln_1": b["norm1"], "ln_2": b["norm2"], "c_fc": b["fc1"], "c_proj": b["fc2"],
             "attn": {"query": {"kernel": q, "bias": qb}, "key": {"kernel": k, "bias": kb},
                      "value": {"kernel": val, "bias": vb},
                      "out": {"kernel": b["attn"]["proj"]["kernel"], "bias": b["attn"]["proj"]["bias"]}}}
    sd.update(_block_from_flax(block, f"visual.transformer.resblocks.{i}"))
  return sd


def visual_resnet_from_flax(variables: Mapping[str, Any], layers: tuple[int, ...]) -> dict[str, np.ndarray]:
  """The inverse of visual_resnet_to_flax (bitwise): cl_jax ModifiedResNet {'params', 'batch_stats'} -> 'visual.*'
  keys of open_clip's ModifiedResNet, attention pool included."""
  v = jax.tree.map(np.asarray, {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}})
  sd = keys.apply_to_torch(resnet_table(layers), v)
  pool = v["params"]["attnpool"]
  grid, mean = pool["positional_embedding"], pool["mean_positional_embedding"]
  d = grid.shape[-1]
  sd["attnpool.positional_embedding"] = np.concatenate([mean.reshape(1, d), grid.reshape(-1, d)])
  for n, p in (("query", "q"), ("key", "k"), ("value", "v"), ("out", "c")):
    kernel, bias = pool["attn"][n]["kernel"], pool["attn"][n]["bias"]
    if n == "out":
      sd["attnpool.c_proj.weight"], sd["attnpool.c_proj.bias"] = kernel.reshape(d, -1).T, bias
    else:
      sd[f"attnpool.{p}_proj.weight"], sd[f"attnpool.{p}_proj.bias"] = kernel.reshape(d, d).T, bias.reshape(d)
  return {f"visual.{k}": np.ascontiguousarray(a) for k, a in sd.items()}


def to_flax(state_dict: Mapping[str, Any], text_heads: int) -> dict[str, Any]:
  """A whole open_clip CLIP state dict -> {'text': ..., 'logit_scale': ...} (and the image tower, see
  visual_to_flax); logit_scale is the log scale in both (open_clip exp()s it, as cl_jax.losses.clip does)."""
  sd = keys.to_numpy(state_dict)
  if "logit_scale" not in sd:
    raise keys.StateDictMismatch(f"state dict does not match open_clip CLIP: missing key 'logit_scale'; it looks "
                                 f"like {keys.looks_like(sd)}.")
  return {"text": text_to_flax(sd, text_heads), "logit_scale": np.asarray(sd["logit_scale"], np.float32).reshape(())}


def _bn(t: str, f: tuple[str, ...]) -> list[keys.Entry]:
  return [keys.Entry(f"{t}.weight", "params", f + ("scale",), "copy"),
          keys.Entry(f"{t}.bias", "params", f + ("bias",), "copy"),
          keys.Entry(f"{t}.running_mean", "batch_stats", f + ("mean",), "copy"),
          keys.Entry(f"{t}.running_var", "batch_stats", f + ("var",), "copy")]


def resnet_table(layers: tuple[int, ...]) -> list[keys.Entry]:
  """Keys of open_clip's ModifiedResNet (under 'visual.') -> cl_jax clip_resnet.ModifiedResNet, attnpool excepted."""
  out = []
  for i in range(3):
    out += [keys.Entry(f"conv{i + 1}.weight", "params", (f"stem_conv{i + 1}", "kernel"), "conv"),
            *_bn(f"bn{i + 1}", (f"stem_bn{i + 1}",))]
  for i, n in enumerate(layers):
    for j in range(n):
      t, f = f"layer{i + 1}.{j}", f"layer{i + 1}_block{j + 1}"
      for k in range(3):
        out += [keys.Entry(f"{t}.conv{k + 1}.weight", "params", (f, f"conv{k + 1}", "kernel"), "conv"),
                *_bn(f"{t}.bn{k + 1}", (f, f"bn{k + 1}"))]
      if j == 0:   # every first block changes width (layer1: width -> 4 * width) or stride; '-1' is the avg-pool
        out += [keys.Entry(f"{t}.downsample.0.weight", "params", (f, "down_conv", "kernel"), "conv"),
                *_bn(f"{t}.downsample.1", (f, "down_bn"))]
  return out


def visual_resnet_to_flax(state_dict: Mapping[str, Any], layers: tuple[int, ...], heads: int) -> dict[str, Any]:
  """open_clip / OpenAI ModifiedResNet (RN50: layers (3, 4, 6, 3)) -> {'params', 'batch_stats'} of cl_jax's
  clip_resnet.ModifiedResNet(output_dim=embed_dim): attnpool's q/k/v/c_proj -> attn query/key/value/out,
  positional_embedding [1 + HW, D] -> mean_positional_embedding and the [1, h, w, D] grid."""
  full = keys.to_numpy(state_dict)
  sd = {k[len("visual."):]: v for k, v in full.items() if k.startswith("visual.")} or dict(full)
  t = resnet_table(layers)
  pool = ("attnpool.positional_embedding", "attnpool.q_proj.weight", "attnpool.k_proj.weight", "attnpool.v_proj.weight",
          "attnpool.c_proj.weight")
  for k in [e.torch_key for e in t] + [p for p in pool]:
    if k not in sd:
      raise keys.StateDictMismatch(f"state dict does not match an open_clip ModifiedResNet with layers {layers}: "
                                   f"missing key 'visual.{k}'; it looks like {keys.looks_like(full)}.")
  out = keys.apply_to_flax(t, sd)
  pos = sd["attnpool.positional_embedding"]
  d, g = pos.shape[1], int(round((pos.shape[0] - 1) ** 0.5))
  c = d // heads
  attn = {n: {"kernel": sd[f"attnpool.{p}_proj.weight"].T.reshape(d, heads, c),
              "bias": sd[f"attnpool.{p}_proj.bias"].reshape(heads, c)}
          for n, p in (("query", "q"), ("key", "k"), ("value", "v"))}
  w = sd["attnpool.c_proj.weight"]
  attn["out"] = {"kernel": w.T.reshape(heads, c, w.shape[0]), "bias": sd["attnpool.c_proj.bias"]}
  out["params"]["attnpool"] = {"positional_embedding": pos[1:].reshape(1, g, g, d),
                               "mean_positional_embedding": pos[:1].reshape(1, 1, d), "attn": attn}
  return out
