"""Shared pieces of the converters: the (torch key <-> Flax leaf) table, its exact transforms, and the one-line
error for a state dict that does not fit the named architecture."""
from __future__ import annotations

import re
from typing import Any, Callable, Iterable, Mapping, NamedTuple

import numpy as np

# Layout transforms, each exact (a transpose or a copy) and its own inverse's mirror, so round trips are bitwise.
TORCH_TO_FLAX: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "linear": lambda a: a.T,                          # torch Linear [out, in] -> Dense kernel [in, out]
    "conv": lambda a: a.transpose(2, 3, 1, 0),        # torch Conv2d [O, I, kh, kw] -> Flax HWIO [kh, kw, I, O]
}
FLAX_TO_TORCH: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "copy": lambda a: a,
    "linear": lambda a: a.T,
    "conv": lambda a: a.transpose(3, 2, 0, 1),
}


class Entry(NamedTuple):
  """One torch tensor and the Flax leaf it becomes: collection ('params' | 'batch_stats'), path, transform."""
  torch_key: str
  collection: str
  path: tuple[str, ...]
  kind: str


class StateDictMismatch(ValueError):
  """A state dict that does not fit the architecture it was converted as (the message is one line)."""


def to_numpy(state_dict: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A torch (or NumPy) state dict as {key: np.ndarray}, on the host, dtypes kept."""
  out = {}
  for k, v in state_dict.items():
    if hasattr(v, "detach"):
      v = v.detach().cpu().numpy()
    out[k] = np.asarray(v)
  return out


def strip_prefix(state_dict: Mapping[str, Any], prefixes: Iterable[str]) -> dict[str, Any]:
  """Drops the first of `prefixes` that every key starts with ('module.' of DDP, 'backbone.' of solo-learn...)."""
  for p in prefixes:
    if state_dict and all(k.startswith(p) for k in state_dict):
      return {k[len(p):]: v for k, v in state_dict.items()}
  return dict(state_dict)


def looks_like(sd: Mapping[str, Any]) -> str:
  """A short guess at what architecture a state dict holds, for error messages."""
  keys = set(sd)
  if "visual.class_embedding" in keys or "visual.transformer.resblocks.0.ln_1.weight" in keys:
    width = np.shape(sd.get("visual.class_embedding", ()))
    return f"an open_clip/OpenAI CLIP ViT (width {width[0] if width else '?'})"
  if "visual.attnpool.c_proj.weight" in keys:
    return "an open_clip/OpenAI CLIP ModifiedResNet (RN50-like)"
  if "cls_token" in keys and "patch_embed.proj.weight" in keys:
    w = np.shape(sd["patch_embed.proj.weight"])
    depth = len({m.group(1) for k in keys if (m := re.match(r"blocks\.(\d+)\.", k))})
    return f"a timm-layout ViT (width {w[0]}, patch {w[-1]}, depth {depth})"
  if "conv1.weight" in keys and "layer1.0.conv1.weight" in keys:
    bottleneck = "layer1.0.conv3.weight" in keys
    blocks = [len({m.group(1) for k in keys if (m := re.match(rf"layer{i}\.(\d+)\.", k))}) for i in (1, 2, 3, 4)]
    width = np.shape(sd["conv1.weight"])[0]
    return (f"a torchvision-layout ResNet ({'bottleneck' if bottleneck else 'basic'} blocks {blocks}, "
            f"stem width {width})")
  return f"no known layout (first keys: {', '.join(sorted(keys)[:3])})"


def check(sd: Mapping[str, np.ndarray], expected: Mapping[str, tuple[int, ...]], arch: str,
          ignore: Callable[[str], bool] = lambda k: False) -> None:
  """Fails in one line naming the first key (in sorted order) that is missing, unexpected or of another shape."""
  got = {k: tuple(np.shape(v)) for k, v in sd.items() if not ignore(k)}
  for key in sorted(set(got) | set(expected)):
    if key not in got:
      problem = f"missing key {key!r} (shape {expected[key]})"
    elif key not in expected:
      problem = f"unexpected key {key!r} (shape {got[key]})"
    elif got[key] != expected[key]:
      problem = f"key {key!r} has shape {got[key]}, {arch} needs {expected[key]}"
    else:
      continue
    raise StateDictMismatch(f"state dict does not match {arch}: {problem}; it looks like {looks_like(sd)}.")


def _set(tree: dict, path: tuple[str, ...], value: Any) -> None:
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def _get(tree: Mapping, path: tuple[str, ...]) -> Any:
  for k in path:
    tree = tree[k]
  return tree


def expected_shapes(table: list[Entry], variables: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
  """Torch shapes each key must have, from the Flax variable shapes (e.g. of jax.eval_shape of the init)."""
  return {e.torch_key: tuple(FLAX_TO_TORCH[e.kind](np.empty(_get(variables[e.collection], e.path).shape,
                                                               np.uint8)).shape) for e in table}


def apply_to_flax(table: list[Entry], sd: Mapping[str, np.ndarray]) -> dict[str, dict]:
  """{'params': ..., 'batch_stats': ...} nested dicts from a checked state dict (float32 copies, C-contiguous)."""
  out: dict[str, dict] = {"params": {}, "batch_stats": {}}
  for e in table:
    _set(out[e.collection], e.path, np.ascontiguousarray(TORCH_TO_FLAX[e.kind](sd[e.torch_key])))
  return out


def apply_to_torch(table: list[Entry], variables: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """{torch key: np.ndarray} from Flax variables (params and batch_stats), by the same table."""
  return {e.torch_key: np.ascontiguousarray(FLAX_TO_TORCH[e.kind](np.asarray(_get(variables[e.collection], e.path))))
          for e in table}


# OpenAI's TorchScript CLIP archives carry these scalars beside the weights (clip/model.py build_model drops them).
_OPENAI_SCALARS = ("input_resolution", "context_length", "vocab_size")


def _torch_load(torch: Any, path: str) -> Any:
  """torch.load(weights_only=True), or for a TorchScript archive (OpenAI's ViT-B-32.pt) its module's state dict."""
  import zipfile  # pylint: disable=g-import-not-at-top
  scripted = False
  if zipfile.is_zipfile(path):
    with zipfile.ZipFile(path) as z:
      scripted = any(n.endswith("constants.pkl") for n in z.namelist())
  if not scripted:
    return torch.load(path, map_location="cpu", weights_only=True)
  sd = dict(torch.jit.load(path, map_location="cpu").state_dict())
  return {k: v for k, v in sd.items() if k not in _OPENAI_SCALARS}


_NESTED = ("state_dict", "model", "teacher", "module", "params")


def read_checkpoint(path: str, prefix: str = "") -> dict[str, np.ndarray]:
  """A state dict from a .safetensors file (safetensors.numpy) or a torch.load-able .pth/.bin/.pt (weights only);
  a wrapper dict ({'state_dict': ...}, {'model': ...}, DINO's {'teacher': ...}) is unwrapped, and with `prefix` only
  the keys under it are kept, the prefix removed (e.g. MoCo v3's 'module.base_encoder.')."""
  if path.endswith(".safetensors"):
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    sd: Any = load_file(path)
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"reading {path} needs torch (pip install -e '.[convert]'), or give a .safetensors file.") from e
    sd = _torch_load(torch, path)
  while isinstance(sd, Mapping) and not any(hasattr(v, "shape") for v in sd.values()):
    inner = next((k for k in _NESTED if isinstance(sd.get(k), Mapping)), None)
    if inner is None:
      raise StateDictMismatch(f"{path} holds no state dict (top-level keys: {', '.join(list(sd)[:6])}).")
    sd = sd[inner]
  if prefix:
    sd = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    if not sd:
      raise StateDictMismatch(f"{path} has no key under the prefix {prefix!r}.")
  return to_numpy(sd)
