"""A converted backbone as a cl_jax workdir (config.json + an orbax checkpoint at step 0) that
`python -m cl_jax.evaluate --workdir=...` and `config.init_from=...` accept, and the backbone read back out."""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from cl_jax import checkpoint, init_from, workdir as workdir_lib

QUICKSTART = os.path.join(os.path.dirname(__file__), "..", "..", "configs", "quickstart.py")


def image_config(model: dict[str, Any], image_size: int, method: str = "simclr") -> ml_collections.ConfigDict:
  """The quick-start config (embedded `shapes` data) with `model` as backbone at `image_size`, for `method`."""
  from cl_jax.config_args import load_sibling  # pylint: disable=g-import-not-at-top
  from cl_jax.data.augment import group  # pylint: disable=g-import-not-at-top
  quickstart = load_sibling(os.path.abspath(QUICKSTART), "quickstart")
  c = quickstart.get_config(f"method={method}")
  c.model = dict(model)
  c.data.image_size = image_size
  c.augment = ml_collections.ConfigDict({"global": group(size=image_size, views=2, scale=(0.5, 1.0),
                                                         jitter_strength=0.5, grayscale_p=0.2, blur_p=(0.0,))})
  c.eval.batch_size = 64
  return c


def clip_config(model: dict[str, Any], image_size: int, embed_dim: int, text: dict[str, Any],
                merges_path: str, image_projection: bool = False) -> ml_collections.ConfigDict:
  """The quick-start CLIP config with `model` as image tower (a ViT's projection W_i, or none for a ModifiedResNet,
  whose attention pool projects), the text Transformer `text` (width, depth, heads, act) and CLIP's BPE tokenizer
  read from `merges_path`."""
  c = image_config(model, image_size, "clip")
  c.method = dict(name="clip", embed_dim=embed_dim, image_projection=image_projection)
  c.text_model = dict(mlp_ratio=4, **text)
  c.data.text = dict(tokenizer="bpe", merges_path=merges_path, context_length=77, source="caption")
  c.augment["global"]["views"] = 1
  return c


def _place(old: Any, value: Any, what: str) -> Any:
  diff = init_from.first_difference(old, value)
  if diff is not None:
    raise ValueError(f"the converted {what} does not fit the config's: {diff}.")
  return jax.tree.map(lambda o, v: jax.device_put(np.asarray(v, dtype=o.dtype), o.sharding), old, value)


def write(workdir: str, config: ml_collections.ConfigDict, variables: dict[str, Any], source: dict[str, Any],
          extra: dict[tuple[str, ...], Any] | None = None) -> int:
  """Writes `config` and a step-0 checkpoint whose every backbone copy holds `variables` ({'params',
  'batch_stats'}), and `extra` {path in params: subtree} (CLIP's text tower, logit_scale); `source` (where the
  weights came from) goes to converted.json. Returns the backbone copies written."""
  from cl_jax import train  # pylint: disable=g-import-not-at-top
  if os.path.exists(workdir_lib.config_path(workdir)):
    raise FileExistsError(f"{workdir} already holds a run; convert into a new --out directory.")
  run = train.build_run(config)
  state, _ = train.init_state(run)
  src = {"params": variables["params"], "batch_stats": variables.get("batch_stats") or {}}
  state, copies = init_from.replace_backbones(state, src, f"the converted {source.get('from', 'weights')}")
  for path, value in (extra or {}).items():
    state["params"] = init_from._set(state["params"], path, _place(init_from._get(state["params"], path), value,
                                                                   "/".join(path)))   # pylint: disable=protected-access
  workdir_lib.write_config(workdir, config)
  workdir_lib.write_json(workdir, "converted.json", {**source, "backbone_copies": copies})
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.keep_checkpoints,
                                 async_save=False)
  try:
    ckpt.save(0, state, None)
    ckpt.wait()
  finally:
    ckpt.close()
  return copies


def read(workdir: str) -> tuple[ml_collections.ConfigDict, dict[str, Any]]:
  """(config, {'params', 'batch_stats'} of the online backbone, as NumPy) of `workdir`'s latest checkpoint."""
  from cl_jax import train  # pylint: disable=g-import-not-at-top
  run, state, _, _ = train.load_run(workdir)
  variables = jax.tree.map(np.asarray, jax.device_get(init_from.source_backbone(state)))
  return run.config, variables


def source_info(workdir: str) -> dict[str, Any]:
  """converted.json of a workdir written by `write` ({} for a run cl_jax trained itself)."""
  path = os.path.join(workdir, "converted.json")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)

