"""torchvision ResNet (torchvision/models/resnet.py, v1.5: stride on the 3x3 conv) <-> cl_jax ResNet
(cl_jax/models/resnet.py, stem='imagenet'); BatchNorm running statistics <-> batch_stats. The SSL ResNet-50s
published in this layout (MoCo v1-v3, SimCLR/BYOL converted, SwAV, DINO) load the same way."""
from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from cl_jax.convert import keys
from cl_jax.models import resnet

ARCHS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")
# Keys of a torchvision state dict that are not part of the backbone (the classifier) or carry no value.
_IGNORED = ("fc.weight", "fc.bias")


def model(arch: str) -> resnet.ResNet:
  """The cl_jax ResNet with torchvision's architecture `arch` (imagenet stem, float32)."""
  if arch not in ARCHS and arch != "resnet_tiny":
    raise ValueError(f"Unknown torchvision ResNet '{arch}'; use one of: {', '.join(ARCHS)}.")
  return resnet.ResNet(**resnet._ARCHS[arch], arch=arch)   # pylint: disable=protected-access


def _bn(torch_name: str, flax_path: tuple[str, ...]) -> list[keys.Entry]:
  return [keys.Entry(f"{torch_name}.weight", "params", flax_path + ("scale",), "copy"),
          keys.Entry(f"{torch_name}.bias", "params", flax_path + ("bias",), "copy"),
          keys.Entry(f"{torch_name}.running_mean", "batch_stats", flax_path + ("mean",), "copy"),
          keys.Entry(f"{torch_name}.running_var", "batch_stats", flax_path + ("var",), "copy")]


def table(arch: str) -> list[keys.Entry]:
  """The key table of torchvision `arch`: conv1/bn1, layerI.J.convK/bnK, downsample.0/1 (fc dropped)."""
  m = model(arch)
  out = [keys.Entry("conv1.weight", "params", ("stem_conv", "kernel"), "conv"), *_bn("bn1", ("stem_bn",))]
  n_convs = 3 if m.bottleneck else 2
  for i, n_blocks in enumerate(m.stage_sizes):
    for j in range(n_blocks):
      block, name = f"stage{i + 1}_block{j + 1}", f"layer{i + 1}.{j}"
      for k in range(n_convs):
        out.append(keys.Entry(f"{name}.conv{k + 1}.weight", "params", (block, f"Conv_{k}", "kernel"), "conv"))
        out += _bn(f"{name}.bn{k + 1}", (block, f"BatchNorm_{k}"))
      if j == 0 and (i > 0 or m.bottleneck):
        out.append(keys.Entry(f"{name}.downsample.0.weight", "params", (block, "proj_conv", "kernel"), "conv"))
        out += _bn(f"{name}.downsample.1", (block, "proj_bn"))
  return out


def _variables(arch: str) -> Any:
  return jax.eval_shape(lambda: model(arch).init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)), train=False))


def _ignored(key: str) -> bool:
  return key in _IGNORED or key.endswith(".num_batches_tracked")


def to_flax(state_dict: Mapping[str, Any], arch: str) -> dict[str, dict]:
  """torchvision ResNet state dict -> {'params', 'batch_stats'} of cl_jax's ResNet `arch` (fc is dropped)."""
  sd = keys.to_numpy(keys.strip_prefix(state_dict, ("module.encoder_q.", "module.", "backbone.", "encoder.")))
  t = table(arch)
  keys.check(sd, keys.expected_shapes(t, _variables(arch)), f"torchvision:{arch}", ignore=_ignored)
  return keys.apply_to_flax(t, sd)


def from_flax(variables: Mapping[str, Any], arch: str) -> dict[str, np.ndarray]:
  """cl_jax ResNet {'params', 'batch_stats'} -> a state dict torchvision's `arch` loads with strict=False (no fc);
  num_batches_tracked is written as 0."""
  t = table(arch)
  sd = keys.apply_to_torch(t, variables)
  for e in t:
    if e.torch_key.endswith(".running_mean"):
      sd[e.torch_key.replace(".running_mean", ".num_batches_tracked")] = np.zeros((), np.int64)
  return sd
