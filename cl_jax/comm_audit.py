"""Communication audit: every collective of a method's compiled training step, with its bytes and why it is there.

  python -m cl_jax.comm_audit --config=configs/quickstart.py:method=simclr     # 8 fake CPU devices by default

Reads the optimised HLO of jit(shard_map(step)) (`lower().compile().as_text()`: what actually runs, after XLA's
all-reduce combiner has merged small reductions) and lists each all-gather, all-reduce, reduce-scatter,
collective-permute and all-to-all with its output bytes per device and a purpose read from the op's JAX name:
  gather / gather^T     an all_gather in the loss (negatives, queue keys) and its transpose in the backward pass
  gradients             the backward pass's psum of the replicated parameters' gradients (one per step, combined)
  batch-norm stats      synced BatchNorm's mean/variance psums (forward) and their transposes (backward)
  rotation              a ppermute (ring losses, SigLIP's text rotation)
  metrics / state       pmeans of logged scalars, new batch statistics, queue or centre updates
Anything else is listed under its JAX name, to be justified or removed (tests/test_comm_audit.py pins the counts).
"""
from __future__ import annotations

import collections
import os
import re
import sys
from typing import Any

KINDS = ("all-gather", "all-reduce", "reduce-scatter", "collective-permute", "all-to-all")
_OP = re.compile(r"=\s+(?P<shape>.*?)\s+(?P<kind>" + "|".join(KINDS) + r")(?:-start)?\(")
_ARRAY = re.compile(r"\b(?P<dtype>pred|[suf]\d+|bf16)\[(?P<dims>[\d,]*)\]")
_NAME = re.compile(r'op_name="(?P<name>[^"]*)"')
_BYTES = {"pred": 1, "bf16": 2}


def _nbytes(shape: str) -> int:
  total = 0
  for m in _ARRAY.finditer(shape):
    size = 1
    for d in filter(None, m["dims"].split(",")):
      size *= int(d)
    dtype = m["dtype"]
    total += size * _BYTES.get(dtype, int(dtype[1:]) // 8 if dtype[1:].isdigit() else 4)
  return total


def purpose(kind: str, name: str) -> str:
  """Why a collective is in the step, from its kind and the JAX op name XLA keeps in its metadata."""
  backward = "transpose(" in name
  if kind == "collective-permute":
    return "rotation" + (" (backward)" if backward else "")
  if kind == "all-to-all":
    return f"all-to-all: {name.split('/')[-1]}"
  if kind == "all-gather":
    return "gather^T" if backward else "gather"
  if kind == "reduce-scatter":
    return "gather^T" if backward else f"reduce-scatter: {name.split('/')[-1]}"
  layers = re.search(r"(Conv|conv|[Dd]ense|kernel|embed|head|proj(?!_bn)|attn|mlp|prototypes|logit)", name)
  if backward and "psum_invariant" in name and layers:
    return "gradients"
  if re.search(r"(BatchNorm|_bn\b|_bn/|batch_norm)", name):
    return "batch-norm stats" + (" (backward)" if backward else "")
  if backward and "psum_invariant" in name:
    return "gradients"
  return "metrics / state"


def collectives(hlo: str) -> list[dict[str, Any]]:
  """[{"kind", "bytes" (output per device), "purpose", "name"}] of every collective in an HLO module's text."""
  out = []
  for line in hlo.splitlines():
    m = _OP.search(line)
    if not m or line.lstrip().startswith("ROOT %tuple"):
      continue
    found = _NAME.search(line)
    name = found["name"] if found else ""
    out.append({"kind": m["kind"], "bytes": _nbytes(m["shape"]), "purpose": purpose(m["kind"], name),
                "name": name})
  return out


def table(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
  """Rows {"kind", "purpose", "count", "bytes"} summed over ops of the same kind and purpose."""
  rows: dict[tuple[str, str], list[int]] = collections.defaultdict(lambda: [0, 0])
  for op in ops:
    rows[(op["kind"], op["purpose"])][0] += 1
    rows[(op["kind"], op["purpose"])][1] += op["bytes"]
  return [{"kind": k, "purpose": p, "count": c, "bytes": b} for (k, p), (c, b) in sorted(rows.items())]


def step_hlo(config: Any) -> tuple[str, dict[str, Any]]:
  """(optimised HLO text of the loop's training step for `config`, facts: devices, params bytes, batch)."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  from cl_jax import parallel, train  # pylint: disable=g-import-not-at-top
  from cl_jax.data import pipeline  # pylint: disable=g-import-not-at-top

  run = train.build_run(config)
  state, specs = train.init_state(run)
  step = train.make_train_step(run, specs, state)
  loader = pipeline.make_loader(run.train_source, global_batch=config.batch_size, seed=0, shuffle=False,
                                num_epochs=1)
  batch = parallel.host_to_global(next(iter(loader)), run.mesh)
  hlo = step.lower(state, batch).compile().as_text()
  facts = {"method": config.method.name, "devices": run.mesh.size, "batch": config.batch_size,
           "param_bytes": int(sum(np.asarray(x).nbytes for x in jax.tree.leaves(jax.device_get(state["params"]))))}
  return hlo, facts


def audit(config: Any) -> dict[str, Any]:
  """{"facts", "ops", "table"} of `config`'s training step."""
  hlo, facts = step_hlo(config)
  ops = collectives(hlo)
  return {"facts": facts, "ops": ops, "table": table(ops)}


def markdown(result: dict[str, Any]) -> str:
  f = result["facts"]
  lines = [f"{f['method']}: {f['devices']} devices, global batch {f['batch']}, parameters {f['param_bytes']:,} B",
           "", "| collective | purpose | count | bytes per device |", "|---|---|---|---|"]
  lines += [f"| {r['kind']} | {r['purpose']} | {r['count']} | {r['bytes']:,} |" for r in result["table"]]
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top

  config = flags.FLAGS.config
  if config is None:
    print("error: pass --config, e.g. --config=configs/quickstart.py:method=simclr", file=sys.stderr)
    sys.exit(1)
  print(markdown(audit(config)))


if __name__ == "__main__":
  if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):   # before JAX is imported
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
  from absl import app  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/quickstart.py:method=simclr.")
  app.run(main)
