"""Backbone features of a whole split for evaluation: the sharded encoder and the in-order extraction loop.

Every evaluator (kNN, linear, attributes, plots, zero-shot's image side) extracts through `extract`.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import PartitionSpec as P

from cl_jax import parallel
from cl_jax.data import augment, label_regimes, pipeline
from cl_jax.eval import settings
from cl_jax.run_state import Run, TrainState
from cl_jax.schema import Field

# config.eval fields of the extraction: 0 means the training value (config.data.image_size, config.batch_size).
SCHEMA = {"batch_size": Field(0, low=0), "image_size": Field(0, low=0),
          "crop_frac": Field(1.0, low=0, high=1, open_low=True)}

Encode = Callable[[TrainState, jax.Array], jax.Array]


def image_size(config: ml_collections.ConfigDict) -> int:
  """The evaluation image size: config.eval.image_size, else the training data's."""
  return settings.read(config, SCHEMA).image_size or config.data.image_size


def make_encode(run: Run, specs: Any, method_fn: str = "encode") -> Encode:
  """jit(shard_map(run.method.<method_fn>)) of uint8 images -> features, with the evaluation preprocessing."""
  size, crop_frac = image_size(run.config), settings.read(run.config, SCHEMA).crop_frac
  fn_of = getattr(run.method, method_fn)

  def per_device(params, method_state, images):
    return fn_of(params, method_state, augment.eval_preprocess(images, size, crop_frac))

  fn = jax.jit(jax.shard_map(per_device, mesh=run.mesh, in_specs=(P(), specs["method_state"], P(parallel.DATA)),
                             out_specs=P(parallel.DATA)))
  return lambda state, images: fn(state["params"], state["method_state"], images)


def extract(run: Run, encode: Encode, state: TrainState, source: Any, fields: Sequence[str] = ("label",),
            max_examples: int | None = None) -> dict[str, np.ndarray]:
  """{"features": encode(images) (or each output of a dict-valued encode), and each of `fields` the source's batches
  carry} of a split, every example once and in order, gathered to every host; with `max_examples`, whole batches
  until at least that many."""
  batch_size = settings.read(run.config, SCHEMA).batch_size or run.config.batch_size
  local = parallel.check_batch_size(batch_size, run.mesh) * run.mesh.local_mesh.size
  loader = pipeline.make_loader(source, global_batch=batch_size, seed=0, shuffle=False, num_epochs=1,
                                drop_remainder=False)
  parts: dict[str, list[np.ndarray]] = {}
  total = 0
  for batch in loader:
    n = len(batch["image"])
    pad = local - n
    host = {"image": np.pad(batch["image"], [(0, pad)] + [(0, 0)] * 3), "valid": np.arange(local) < n}
    for f in fields:
      if f in batch:
        host[f] = np.pad(batch[f], [(0, pad)] + [(0, 0)] * (batch[f].ndim - 1))
    glob = parallel.host_to_global(host, run.mesh)
    encoded = encode(state, glob["image"])   # features, or a dict of per-example outputs (epoch_outputs)
    encoded = encoded if isinstance(encoded, dict) else {"features": encoded}
    out = parallel.to_host({**encoded, **{k: v for k, v in glob.items() if k != "image"}})
    for k, v in out.items():
      if k != "valid":
        parts.setdefault(k, []).append(v[out["valid"]])
    total += int(out["valid"].sum())
    if max_examples and total >= max_examples:
      break
  return {k: np.concatenate(v) for k, v in parts.items()}


def extract_features(run: Run, encode: Encode, state: TrainState, source: Any,
                     max_examples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(features, true labels) of a whole split (or its first whole batches past `max_examples`), in order: under a
  label regime the kept truth (fine / clean / true label, label_regimes.truth), never the noisy or coarse one."""
  field, _ = label_regimes.truth(source)
  out = extract(run, encode, state, source, (field,), max_examples)
  if field not in out:
    raise ValueError(f"evaluating features needs labels; dataset '{run.config.dataset}' has none, use a labelled "
                     "dataset (class folders, shapes or a tfds name).")
  return out["features"], out[field]


def num_classes(run: Run) -> int:
  """The number of true classes evaluation scores against (the fine classes under data.coarse_labels)."""
  return label_regimes.truth(run.train_source)[1]
