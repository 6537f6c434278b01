"""--what=loss_memory: per-device temporary bytes of each contrastive loss's forward+backward, gather vs ring
(cl_jax/losses/ring.py), from the compiled programs' memory_analysis(), a fitted formula of buffer counts and a table
on paper (README "Ring-chunked contrastive losses"). Compiles only; nothing is timed or allocated."""
from __future__ import annotations

import json
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from cl_jax import parallel

Row = dict[str, Any]


LOSS_MEMORY_LOSSES = ("nt_xent", "clip", "unicl", "moco_v3", "siglip")
LOSS_MEMORY_DEVICES = (8, 16, 32, 64)   # the fake-device counts of the ring's flatness check (fixed local batch)
LOSS_MEMORY_GLOBAL_BATCH = 32_768       # the headline point: 4,096 examples on each of 8 devices
LOSS_MEMORY_DIMS = (512, 1024)
LOSS_MEMORY_LOCAL_BATCH = 1024          # the flatness check and the table on paper
LOSS_MEMORY_TABLE_DEVICES = (8, 64, 256, 1024)


def _loss_memory_fn(loss: str, impl: str) -> Callable:
  """(a, b, labels, scalar) -> scalar loss of `loss` per device over 'data' (embeddings a, b; UniCL labels; CLIP's
  log-scale or SigLIP's t' with bias -10); SigLIP has only its ring."""
  from cl_jax.losses import clip, contrastive, infonce, siglip, unicl  # pylint: disable=g-import-not-at-top
  axis = parallel.DATA
  return {
      "nt_xent": lambda a, b, l, s: contrastive.nt_xent(a, b, 0.1, axis, impl=impl)[0],
      "clip": lambda a, b, l, s: clip.clip_loss(a, b, s, axis, impl=impl)[0],
      "unicl": lambda a, b, l, s: unicl.unicl_loss(a, b, l, s, axis, impl=impl)[0],
      "moco_v3": lambda a, b, l, s: infonce.moco_v3_ctr(a, b, 0.2, axis, impl=impl)[0],
      "siglip": lambda a, b, l, s: siglip.siglip_loss(a, b, s, jnp.float32(-10.0), axis)[0],
  }[loss]


def loss_memory_bytes(loss: str, impl: str, num_devices: int, local_batch: int, dim: int) -> int:
  """Per-device temp_size_in_bytes of the compiled forward+backward of `loss` (gradients of both embeddings and
  the scalar) with `impl`, on the first `num_devices` devices; compiled from shapes only (nothing is allocated)."""
  mesh = parallel.make_mesh(num_devices)
  data, rep = NamedSharding(mesh, P(parallel.DATA)), NamedSharding(mesh, P())
  n = num_devices * local_batch
  emb = jax.ShapeDtypeStruct((n, dim), jnp.float32, sharding=data)
  args = (emb, emb, jax.ShapeDtypeStruct((n,), jnp.int32, sharding=data),
          jax.ShapeDtypeStruct((), jnp.float32, sharding=rep))
  fn = _loss_memory_fn(loss, impl)
  grads = jax.value_and_grad(fn, argnums=(0, 1, 3))
  d = P(parallel.DATA)
  step = jax.jit(jax.shard_map(grads, mesh=mesh, in_specs=(d, d, d, P()), out_specs=(P(), (d, d, P()))))
  return int(step.lower(*args).compile().memory_analysis().temp_size_in_bytes)


def loss_memory_formula(impl: str, coef: dict[str, float], local_batch: int, global_batch: int, dim: int) -> float:
  """Per-device temp bytes from the fitted buffer counts: 4 bytes x (c_mN m N + c_ND N D + c_mm m^2 + c_mD m D),
  m examples per device, N global, D embedding width; the ring has no N terms (its c_mN = c_ND = 0)."""
  m, n, d = local_batch, global_batch, dim
  terms = {"mN": m * n, "ND": n * d, "mm": m * m, "mD": m * d}
  return 4.0 * sum(coef.get(k, 0.0) * v for k, v in terms.items() if impl == "gather" or k in ("mm", "mD"))


def _fit(impl: str, points: list[Row]) -> dict[str, float]:
  """Least-squares buffer counts (in 4-byte floats) of loss_memory_formula from measured rows."""
  names = ("mN", "ND", "mm", "mD") if impl == "gather" else ("mm", "mD")
  a = np.array([[loss_memory_formula(impl, {k: 1.0}, r["local_batch"], r["global_batch"], r["dim"])
                 for k in names] for r in points])
  y = np.array([r["temp_bytes"] for r in points], np.float64)
  sol = np.linalg.lstsq(a, y, rcond=None)[0]
  return {k: round(float(v), 3) for k, v in zip(names, sol)}


def _loss_memory_in_process(losses: tuple[str, ...]) -> list[Row]:
  """Every measured point, the formula per (loss, impl) fitted on 8 and 16 devices and checked on 32 and 64 and on
  the 32,768 batch, the ring's flatness from 8 to 64 devices and the table on paper (needs
  max(LOSS_MEMORY_DEVICES) devices in this process)."""
  rows: list[Row] = []
  local, fit_devices = LOSS_MEMORY_LOCAL_BATCH, LOSS_MEMORY_DEVICES[:2]

  def point(loss, impl, devices, local, dim, role):
    start = time.perf_counter()
    temp = loss_memory_bytes(loss, impl, devices, local, dim)
    row = {"what": "loss_memory", "role": role, "loss": loss, "impl": impl, "devices": devices,
           "local_batch": local, "global_batch": devices * local, "dim": dim, "temp_bytes": temp,
           "temp_mib": round(temp / 2 ** 20, 2), "compile_s": round(time.perf_counter() - start, 2)}
    rows.append(row)
    return row

  for loss in losses:
    for impl in (("ring",) if loss == "siglip" else ("gather", "ring")):
      # Fixed local batch: every device count at the first D, the fit's two and the largest at the second D.
      scaling = [point(loss, impl, n, local, dim, "fit" if n in fit_devices else "check")
                 for dim in LOSS_MEMORY_DIMS for n in LOSS_MEMORY_DEVICES
                 if dim == LOSS_MEMORY_DIMS[0] or n in fit_devices or n == LOSS_MEMORY_DEVICES[-1]]
      n8 = LOSS_MEMORY_DEVICES[0]
      headline = [point(loss, impl, n8, LOSS_MEMORY_GLOBAL_BATCH // n8, dim, "headline") for dim in LOSS_MEMORY_DIMS]
      coef = _fit(impl, [r for r in scaling if r["role"] == "fit"])
      for r in scaling + headline:
        predicted = loss_memory_formula(impl, coef, r["local_batch"], r["global_batch"], r["dim"])
        r.update(formula_bytes=int(predicted), formula_error=round(predicted / r["temp_bytes"] - 1, 4))
      rows.append({"what": "loss_memory_formula", "loss": loss, "impl": impl, "floats_per": coef,
                   "max_check_error": max(abs(r["formula_error"]) for r in scaling if r["role"] == "check"),
                   "headline_errors": [r["formula_error"] for r in headline]})
      for dim in LOSS_MEMORY_DIMS:
        flat = [r["temp_bytes"] for r in scaling if r["dim"] == dim]
        rows.append({"what": "loss_memory_flatness", "loss": loss, "impl": impl, "dim": dim, "local_batch": local,
                     "devices": [r["devices"] for r in scaling if r["dim"] == dim], "temp_bytes": flat,
                     "max_over_min": round(max(flat) / min(flat), 4)})
        for n in LOSS_MEMORY_TABLE_DEVICES:
          predicted = loss_memory_formula(impl, coef, local, n * local, dim)
          rows.append({"what": "loss_memory_table", "loss": loss, "impl": impl, "dim": dim, "devices": n,
                       "local_batch": local, "global_batch": n * local, "formula_bytes": int(predicted),
                       "formula_gib": round(predicted / 2 ** 30, 3)})
  return rows


def bench_loss_memory(losses: tuple[str, ...] = LOSS_MEMORY_LOSSES) -> list[Row]:
  """Per-device temp bytes of each loss's forward+backward, gather vs ring, from `memory_analysis()` of programs
  compiled for fake CPU devices: global batch 32,768 on 8 devices at D = 512 and 1,024; 1,024 per device on 8, 16,
  32 and 64 devices (the ring's flatness); a formula of buffer counts (loss_memory_formula) fitted on 8 and 16
  devices and checked on 32, 64 and the 32,768 batch; and a table on paper from the formula up to 1,024 devices.

  The device counts need max(LOSS_MEMORY_DEVICES) = 64 devices: with fewer, the measurement re-runs itself in a
  subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=64 and JAX_PLATFORMS=cpu (set there before
  jax is imported), and smaller meshes are the first n of those devices.
  """
  unknown = sorted(set(losses) - set(LOSS_MEMORY_LOSSES))
  if unknown:
    raise ValueError(f"Unknown loss {unknown[0]!r} for --what=loss_memory; use: {', '.join(LOSS_MEMORY_LOSSES)}.")
  need = max(LOSS_MEMORY_DEVICES)
  if jax.device_count() >= need:
    return _loss_memory_in_process(tuple(losses))
  import os, re, subprocess  # pylint: disable=g-import-not-at-top,multiple-imports
  flags_now = re.sub(r"--xla_force_host_platform_device_count=\S+", "", os.environ.get("XLA_FLAGS", ""))
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"{flags_now} --xla_force_host_platform_device_count={need}".strip()}
  code = ("import json, sys; from cl_jax import loss_memory; "
          f"[print(json.dumps(r), flush=True) for r in loss_memory.bench_loss_memory({tuple(losses)!r})]")
  out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=False)
  if out.returncode:
    raise RuntimeError(f"the {need}-device loss-memory subprocess failed:\n{out.stderr[-3000:]}")
  return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
