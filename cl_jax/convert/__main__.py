"""Converts published PyTorch weights into a cl_jax workdir, or a cl_jax workdir's backbone into a state dict.

  python -m cl_jax.convert --from=timm:vit_small_patch16_224 --checkpoint=dino_deitsmall16_pretrain.pth --out=/tmp/dino
  python -m cl_jax.convert --from=torchvision:resnet50 --checkpoint=resnet50-11ad3fa6.pth --out=/tmp/rn50
  python -m cl_jax.convert --from=open_clip:RN50-quickgelu --checkpoint=open_clip_pytorch_model.bin \
      --merges=bpe_simple_vocab_16e6.txt.gz --quick_gelu --out=/tmp/clip_rn50
  python -m cl_jax.convert --to=torch --workdir=/tmp/rn50 --out=/tmp/rn50.pth        # or .safetensors

Nothing is downloaded: --checkpoint is a file you have. --prefix keeps only the keys under it (MoCo v3:
--prefix=module.base_encoder.); --image_size resizes a ViT's position grid (default: the checkpoint's).
"""
from __future__ import annotations

import sys
from typing import Any

import numpy as np
from absl import app, flags

FAMILIES = ("timm", "torchvision", "open_clip")
USAGE_ERROR = 2


def convert_state_dict(source: str, sd: dict[str, np.ndarray], image_size: int | None = None
                       ) -> tuple[dict[str, Any], dict[str, Any], int]:
  """(config.model fields, {'params', 'batch_stats'}, image size) for `source` = 'family:arch'."""
  family, _, arch = source.partition(":")
  if family == "timm":
    from cl_jax.convert import timm_vit  # pylint: disable=g-import-not-at-top
    m = timm_vit.model(arch)
    size = image_size or timm_vit.image_size(arch)
    variables = timm_vit.to_flax(sd, m, grid=(size // m.patch_size,) * 2)
    return timm_vit.model_fields(arch), {"params": variables["params"], "batch_stats": {}}, size
  if family == "torchvision":
    from cl_jax.convert import torchvision_resnet  # pylint: disable=g-import-not-at-top
    fields = dict(name=arch, width=1.0, stem="imagenet", bn="sync", dtype="float32", zero_init_last_bn=False)
    return fields, torchvision_resnet.to_flax(sd, arch), image_size or 224
  raise ValueError(f"Unknown --from family '{family}'; use one of: {', '.join(f + ':<arch>' for f in FAMILIES)}.")


def convert_clip(arch: str, sd: dict[str, np.ndarray], merges: str, quick_gelu: bool,
                 image_size: int | None = None) -> tuple[Any, dict[str, Any], dict[tuple[str, ...], Any]]:
  """(config, image-tower variables, {params path: subtree}) of an open_clip ModifiedResNet CLIP (RN50 or a cl_jax
  clip_resnet size); the text tower's sizes are read off the state dict, heads = width // 64 as CLIP's."""
  from cl_jax.convert import open_clip, workdir_io  # pylint: disable=g-import-not-at-top
  from cl_jax.models import clip_resnet  # pylint: disable=g-import-not-at-top
  name = open_clip.RESNETS.get(arch, arch)
  if name not in clip_resnet._ARCHS:   # pylint: disable=protected-access
    raise ValueError(f"--from=open_clip:{arch}: supported are {', '.join(open_clip.RESNETS)} (ModifiedResNet towers; "
                     "the ViT towers wait for vit.ViT's CLIP options, docs/convert.md).")
  if not merges:
    raise ValueError("--from=open_clip needs --merges=<bpe_simple_vocab_16e6.txt.gz> (CLIP's BPE merges; open_clip "
                     "ships it in its package directory).")
  layers = clip_resnet._ARCHS[name]["layers"]   # pylint: disable=protected-access
  width = clip_resnet._ARCHS[name]["width"]     # pylint: disable=protected-access
  heads = max(1, width * 32 // 64)
  variables = open_clip.visual_resnet_to_flax(sd, layers, heads)
  embed = sd["visual.attnpool.c_proj.weight"].shape[0] if "visual.attnpool.c_proj.weight" in sd else 0
  text_width = sd["token_embedding.weight"].shape[1] if "token_embedding.weight" in sd else 64
  text_heads = max(1, text_width // 64)
  converted = open_clip.to_flax(sd, text_heads)
  depth = len([k for k in converted["text"] if k.startswith("block")])
  model = dict(name=name, heads=None, output_dim=embed, bn="sync", dtype="float32")
  size = image_size or 32 * int(round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5))
  config = workdir_io.clip_config(model, size, embed, dict(width=text_width, depth=depth, heads=text_heads,
                                                           act="quick_gelu" if quick_gelu else "gelu"), merges)
  return config, variables, {("model", "text"): converted["text"], ("logit_scale",): converted["logit_scale"]}


def to_state_dict(model: dict[str, Any], variables: dict[str, Any]) -> tuple[str, dict[str, np.ndarray]]:
  """('timm' | 'torchvision', state dict) for a cl_jax backbone of config.model `model`."""
  name = model["name"]
  if name.startswith("vit"):
    from cl_jax.convert import timm_vit  # pylint: disable=g-import-not-at-top
    depth = len([k for k in variables["params"] if k.startswith("block")])
    return "timm", timm_vit.from_flax(variables, depth)
  if name.startswith("resnet") and model.get("stem", "imagenet") == "imagenet" and float(model.get("width", 1)) == 1:
    from cl_jax.convert import torchvision_resnet  # pylint: disable=g-import-not-at-top
    return "torchvision", torchvision_resnet.from_flax(variables, name)
  raise ValueError(f"no PyTorch layout for backbone {name} ({model}); supported: vit_* (timm), resnet* with the "
                   "imagenet stem and width 1 (torchvision).")


def save_state_dict(sd: dict[str, np.ndarray], path: str) -> None:
  """Writes a state dict as .safetensors (safetensors.numpy) or, for any other name, torch.save of tensors."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
    save_file(sd, path)
    return
  import torch  # pylint: disable=g-import-not-at-top
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in sd.items()}, path)


def run(frm: str, checkpoint: str, out: str, to: str = "", workdir: str = "", prefix: str = "",
        image_size: int | None = None, method: str = "simclr", merges: str = "", quick_gelu: bool = False,
        data: dict[str, Any] | None = None) -> str:
  """What the command does; returns the line it prints. `data` overrides config.data of the written workdir (e.g.
  num_train, num_test: the evaluation split sizes)."""
  from cl_jax.convert import keys, workdir_io  # pylint: disable=g-import-not-at-top
  if to:
    if to != "torch" or not workdir or not out:
      raise ValueError("--to=torch needs --workdir=<a cl_jax workdir> and --out=<file.pth | file.safetensors>.")
    config, variables = workdir_io.read(workdir)
    layout, sd = to_state_dict(config.model.to_dict(), variables)
    save_state_dict(sd, out)
    return f"wrote {out}: {len(sd)} tensors in the {layout} layout of {config.model.name}"
  if not frm or not checkpoint or not out:
    raise ValueError("give --from=<family:arch> --checkpoint=<file> --out=<new workdir> (or --to=torch).")
  sd = keys.read_checkpoint(checkpoint, prefix)
  if frm.startswith("open_clip:"):
    config, variables, extra = convert_clip(frm.partition(":")[2], sd, merges, quick_gelu, image_size)
    config.data.update(data or {})
    copies = workdir_io.write(out, config, variables, {"from": frm, "checkpoint": checkpoint, "prefix": prefix},
                              extra)
    return (f"wrote {out}: {frm} as cl_jax {config.model.name} + text Transformer at {config.data.image_size} px "
            f"({copies} backbone copies); evaluate with python -m cl_jax.evaluate --workdir={out} --protocol=zeroshot")
  model, variables, size = convert_state_dict(frm, sd, image_size)
  config = workdir_io.image_config(model, size, method)
  config.data.update(data or {})
  copies = workdir_io.write(out, config, variables, {"from": frm, "checkpoint": checkpoint, "prefix": prefix})
  return (f"wrote {out}: {frm} as cl_jax {model['name']} at {size} px ({copies} backbone copies); evaluate with "
          f"python -m cl_jax.evaluate --workdir={out} --protocol=knn")


def define_flags() -> None:
  """The command-line flags (defined only when run as a program)."""
  flags.DEFINE_string("from", "", "family:arch, e.g. timm:vit_small_patch16_224, torchvision:resnet50")
  flags.DEFINE_string("checkpoint", "", "the PyTorch file (.pth, .bin, .pt or .safetensors)")
  flags.DEFINE_string("out", "", "the new workdir (or, with --to=torch, the state-dict file)")
  flags.DEFINE_string("to", "", "'torch': write --workdir's backbone as a PyTorch state dict")
  flags.DEFINE_string("workdir", "", "with --to=torch: the cl_jax workdir to read")
  flags.DEFINE_string("prefix", "", "keep only the keys under this prefix (e.g. module.base_encoder.)")
  flags.DEFINE_integer("image_size", None, "input size the workdir's config uses (resizes a ViT's positions)")
  flags.DEFINE_string("merges", "", "--from=open_clip: CLIP's BPE merges file (bpe_simple_vocab_16e6.txt.gz)")
  flags.DEFINE_bool("quick_gelu", False, "--from=open_clip: OpenAI's weights (QuickGELU); open_clip's own: GELU")
  flags.DEFINE_string("method", "simclr", "the quick-start method of the written config (its heads start fresh)")


def main(argv: list[str]) -> None:
  del argv
  f = flags.FLAGS
  try:
    print(run(f["from"].value, f.checkpoint, f.out, f.to, f.workdir, f.prefix, f.image_size, f.method, f.merges,
              f.quick_gelu))
  except (ValueError, FileNotFoundError, FileExistsError, ImportError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(USAGE_ERROR)


if __name__ == "__main__":
  define_flags()
  app.run(main)
