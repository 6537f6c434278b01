"""Converts published PyTorch weights into a cl_jax workdir, or a cl_jax workdir's backbone into a state dict.

  python -m cl_jax.convert --from=timm:vit_small_patch16_224 --checkpoint=dino_deitsmall16_pretrain.pth --out=/tmp/dino
  python -m cl_jax.convert --from=torchvision:resnet50 --checkpoint=resnet50-11ad3fa6.pth --out=/tmp/rn50
  python -m cl_jax.convert --from=open_clip:RN50-quickgelu --checkpoint=open_clip_pytorch_model.bin \
      --merges=bpe_simple_vocab_16e6.txt.gz --quick_gelu --out=/tmp/clip_rn50
  python -m cl_jax.convert --from=open_clip:ViT-B-32 --checkpoint=ViT-B-32.pt --merges=... --quick_gelu --out=/tmp/b32
  python -m cl_jax.convert --to=torch --workdir=/tmp/rn50 --out=/tmp/rn50.pth        # or .safetensors
  (a CLIP workdir goes back as the whole open_clip state dict)

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
  """(config, image-tower variables, {params path: subtree}) of an open_clip CLIP: a ViT tower (ViT-B-32, ViT-B-16,
  ViT-L-14, or any cl_jax vit_* size) or a ModifiedResNet (RN50, RN101, RN50x4, a clip_resnet size); the text
  tower's sizes are read off the state dict, heads = width // 64 as CLIP's."""
  from cl_jax.convert import open_clip, workdir_io  # pylint: disable=g-import-not-at-top
  if not merges:
    raise ValueError("--from=open_clip needs --merges=<bpe_simple_vocab_16e6.txt.gz> (CLIP's BPE merges; open_clip "
                     "ships it in its package directory).")
  act = "quick_gelu" if quick_gelu else "gelu"
  if "visual.class_embedding" in sd:
    visual, model, size, embed = _clip_vit(arch, sd, act, image_size)
  else:
    visual, model, size, embed = _clip_resnet(arch, sd, image_size)
  text_width = sd["token_embedding.weight"].shape[1] if "token_embedding.weight" in sd else 64
  text_heads = max(1, text_width // 64)
  converted = open_clip.to_flax(sd, text_heads)
  depth = len([k for k in converted["text"] if k.startswith("block")])
  config = workdir_io.clip_config(model, size, embed, dict(width=text_width, depth=depth, heads=text_heads, act=act),
                                  merges, image_projection="image_projection" in visual)
  extra = {("model", "text"): converted["text"], ("logit_scale",): converted["logit_scale"]}
  if "image_projection" in visual:
    extra[("model", "image_projection")] = visual["image_projection"]
  return config, {"params": visual["params"], "batch_stats": visual["batch_stats"]}, extra


def _clip_vit(arch: str, sd: dict[str, np.ndarray], act: str, image_size: int | None) -> tuple[dict, dict, int, int]:
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from cl_jax.convert import open_clip  # pylint: disable=g-import-not-at-top
  from cl_jax.models import vit  # pylint: disable=g-import-not-at-top
  width = sd["visual.class_embedding"].shape[0]
  depth = len({k.split(".")[3] for k in sd if k.startswith("visual.transformer.resblocks.")})
  name, found = open_clip.VITS.get(arch, arch), open_clip.vit_size(width, depth)
  if name != found:
    raise ValueError(f"--from=open_clip:{arch}: the state dict holds a ViT of width {width} and depth {depth} "
                     f"(cl_jax {found}); name it --from=open_clip:{found}.")
  patch = sd["visual.conv1.weight"].shape[-1]
  tree = open_clip.visual_to_flax(sd, vit._ARCHS[name]["num_heads"])   # pylint: disable=protected-access
  grid = tree["backbone"]["pos_embedding"].shape[1]
  size = image_size or patch * grid
  if size // patch != grid:
    tree["backbone"]["pos_embedding"] = np.asarray(vit.interpolate_posemb(
        jnp.asarray(tree["backbone"]["pos_embedding"]), (size // patch,) * 2))
  model = dict(name=name, patch_size=int(patch), pre_norm=True, norm_eps=1e-5, act=act, dtype="float32")
  return ({"params": tree["backbone"], "batch_stats": {}, "image_projection": tree["image_projection"]}, model, size,
          sd["visual.proj"].shape[1])


def _clip_resnet(arch: str, sd: dict[str, np.ndarray], image_size: int | None) -> tuple[dict, dict, int, int]:
  from cl_jax.convert import open_clip  # pylint: disable=g-import-not-at-top
  from cl_jax.models import clip_resnet  # pylint: disable=g-import-not-at-top
  name = open_clip.RESNETS.get(arch, arch)
  if name not in clip_resnet._ARCHS:   # pylint: disable=protected-access
    raise ValueError(f"--from=open_clip:{arch}: supported are {', '.join([*open_clip.RESNETS, *open_clip.VITS])} "
                     "or a cl_jax clip_resnet / vit size.")
  layers = clip_resnet._ARCHS[name]["layers"]   # pylint: disable=protected-access
  width = clip_resnet._ARCHS[name]["width"]     # pylint: disable=protected-access
  variables = open_clip.visual_resnet_to_flax(sd, layers, max(1, width * 32 // 64))
  embed = sd["visual.attnpool.c_proj.weight"].shape[0] if "visual.attnpool.c_proj.weight" in sd else 0
  model = dict(name=name, heads=None, output_dim=embed, bn="sync", dtype="float32")
  size = image_size or 32 * int(round((sd["visual.attnpool.positional_embedding"].shape[0] - 1) ** 0.5))
  return variables, model, size, embed


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


def clip_to_state_dict(workdir: str) -> tuple[Any, dict[str, np.ndarray]]:
  """(config, open_clip CLIP state dict) of a cl_jax CLIP workdir: image tower (ViT with pre_norm, or a
  ModifiedResNet), image projection, text tower and logit_scale, loadable by open_clip's CLIP(strict=True)."""
  import jax  # pylint: disable=g-import-not-at-top
  from cl_jax import init_from, train  # pylint: disable=g-import-not-at-top
  from cl_jax.convert import open_clip  # pylint: disable=g-import-not-at-top
  from cl_jax.models import clip_resnet  # pylint: disable=g-import-not-at-top
  run, state, _, _ = train.load_run(workdir)
  params = jax.device_get(state["params"])
  model = params["model"]
  backbone = jax.device_get(init_from.source_backbone(state))
  name = run.config.model.name
  if name.startswith("vit"):
    sd = open_clip.visual_from_flax(backbone["params"], model.get("image_projection", {}).get("kernel"))
  elif name in clip_resnet._ARCHS and not run.config.method.image_projection:   # pylint: disable=protected-access
    sd = open_clip.visual_resnet_from_flax(backbone, clip_resnet._ARCHS[name]["layers"])   # pylint: disable=protected-access
  else:
    raise ValueError(f"no open_clip layout for a CLIP image tower {name} (image_projection="
                     f"{run.config.method.image_projection}); supported: vit_* with pre_norm, clip_rn* without "
                     "image_projection.")
  sd.update(open_clip.text_from_flax(model["text"]))
  sd["logit_scale"] = np.asarray(params["logit_scale"], np.float32).reshape(())
  return run.config, sd


def save_state_dict(sd: dict[str, np.ndarray], path: str) -> None:
  """Writes a state dict as .safetensors (safetensors.numpy) or, for any other name, torch.save of tensors."""
  sd = {k: np.require(v, requirements="C") for k, v in sd.items()}   # safetensors writes a view's raw buffer
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
    from cl_jax import workdir as workdir_lib  # pylint: disable=g-import-not-at-top
    if workdir_lib.load_config(workdir).method.name == "clip":
      config, sd, layout = *clip_to_state_dict(workdir), "open_clip"
    else:
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
