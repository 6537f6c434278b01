"""Benchmarks: throughput, compile time, memory and FLOPs of the training step and its parts, one JSON per line.

  python -m cl_jax.bench --config=configs/quickstart.py --what=step      # full step vs bare backbone fwd+bwd
  python -m cl_jax.bench --config=configs/quickstart.py --what=augment   # on-device views/s (vs torchvision)
  python -m cl_jax.bench --config=configs/quickstart.py --what=loss      # NT-Xent forward+backward
  python -m cl_jax.bench --config=configs/quickstart.py --what=model     # backbone forward, forward+backward
  python -m cl_jax.bench --config=configs/quickstart.py:method=moco_v2 --what=memory   # state bytes per device
  python -m cl_jax.bench --config=configs/quickstart.py:method=simclr --what=peer  # vs lightly (cl_jax/peer.py)
  python -m cl_jax.bench --what=loss_memory   # loss fwd+bwd temp bytes, gather vs ring (64 fake CPU devices)
  python -m cl_jax.bench --config=configs/quickstart.py --what=input     # host JPEG pipeline vs the step, 224 px

Every measurement runs on the run's mesh (jit(shard_map) over 'data', the global batch split as in training),
is compiled ahead of time (`lower().compile()`, timed as compile_s), warmed up, then timed `--repeats` times with
`time.perf_counter` + `jax.block_until_ready`; step_ms is the median. "flops" is the compiled program's
`cost_analysis()` times the number of devices (the whole step), "peak_bytes" its `memory_analysis()` per device,
and "ratio_to_gemm_peak" compares achieved FLOP/s per device with a timed float32 matmul on one device.
"""
from __future__ import annotations

import json
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags, logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from ml_collections import config_flags

from cl_jax import parallel, train
from cl_jax.data import augment, sources
from cl_jax.losses.contrastive import nt_xent
from cl_jax.models import build_backbone

WHATS = ("step", "augment", "loss", "model", "memory", "peer", "loss_memory", "input")
Row = dict[str, Any]


# ----------------------------------------------------------------------------- timing and compiled-program stats


def time_rounds(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1,
                settle: int = 0) -> dict[str, list[float]]:
  """Wall times in ms of each `call()` (blocked until ready) over `repeats` rounds after `warmup` rounds; each
  round runs every call once, so drifting load on a shared machine hits all of them alike. With `settle`, each
  turn first runs its call `settle` times untimed: switching between very different programs (XLA's thread pool
  and torchvision's single-threaded PIL) otherwise charges the wake-up and cold caches to whoever runs next
  (measured: the JAX augmentation at 7-9 ms per batch alone, 23 ms right after a torchvision round)."""
  if repeats < 1 or warmup < 0:
    raise ValueError(f"repeats={repeats} must be >= 1 and warmup={warmup} >= 0; pass e.g. --repeats=10.")
  for _ in range(warmup):
    for call in calls.values():
      jax.block_until_ready(call())
  times: dict[str, list[float]] = {name: [] for name in calls}
  for _ in range(repeats):
    for name, call in calls.items():
      for _ in range(settle):
        jax.block_until_ready(call())
      start = time.perf_counter()
      jax.block_until_ready(call())
      times[name].append(1e3 * (time.perf_counter() - start))
  return times


def time_interleaved(calls: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1) -> dict[str, float]:
  """Median of `time_rounds` (ms) for each call."""
  return {name: statistics.median(t) for name, t in time_rounds(calls, repeats, warmup).items()}


def time_ms(call: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
  """Median wall time in ms of `call()` (blocked until ready) over `repeats` runs after `warmup` runs."""
  return time_interleaved({"call": call}, repeats, warmup)["call"]


def compile_timed(jitted: Any, *args: Any) -> tuple[Any, float]:
  """(compiled executable, seconds spent in `jitted.lower(*args).compile()`)."""
  start = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - start


def compiled_flops(compiled: Any) -> float | None:
  """FLOPs of one device's program from `cost_analysis()` (a dict, or a list of dicts in older jax)."""
  try:
    cost = compiled.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (backends without cost analysis)
    return None
  if isinstance(cost, dict):
    cost = [cost]
  flops = sum(float(c.get("flops", 0.0)) for c in cost or [] if c)
  return flops if flops > 0 else None


def compiled_peak_bytes(compiled: Any) -> int | None:
  """Per-device bytes of the program's buffers: temp + arguments + outputs - donated aliases, None if unknown."""
  try:
    stats = compiled.memory_analysis()
  except Exception:  # pylint: disable=broad-except
    return None
  if stats is None:
    return None
  fields = ("temp_size_in_bytes", "argument_size_in_bytes", "output_size_in_bytes")
  if not any(hasattr(stats, f) for f in fields):
    return None
  total = sum(int(getattr(stats, f, 0) or 0) for f in fields)
  return total - int(getattr(stats, "alias_size_in_bytes", 0) or 0)


def gemm_peak_flops_per_sec(size: int = 2048, repeats: int = 10) -> float:
  """Measured float32 matmul FLOP/s on one device: median time of a jitted [size, size] @ [size, size]."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
  compiled = jax.jit(jnp.matmul).lower(a, b).compile()
  ms = time_ms(lambda: compiled(a, b), repeats)
  return 2.0 * size ** 3 / (ms / 1e3)


def make_row(what: str, compiled: Any, compile_s: float, ms: float, examples: int, mesh: Mesh,
             gemm_peak: float, **extra: Any) -> Row:
  """One JSON line: throughput, compile time, memory and achieved FLOP/s against the GEMM peak."""
  per_device = compiled_flops(compiled)
  flops = per_device * mesh.size if per_device else None
  flops_per_sec = flops / (ms / 1e3) if flops else None
  ratio = flops_per_sec / (gemm_peak * mesh.size) if flops_per_sec else None
  return {"what": what, "devices": mesh.size, "batch": examples, "step_ms": ms,
          "images_per_sec": examples / (ms / 1e3), "compile_s": compile_s,
          "peak_bytes": compiled_peak_bytes(compiled), "flops": flops, "flops_per_sec": flops_per_sec,
          "gemm_peak_flops_per_sec": gemm_peak, "ratio_to_gemm_peak": ratio, **extra}


# ----------------------------------------------------------------------------- inputs


def host_batch(source: Any, n: int) -> dict[str, np.ndarray]:
  """The first n examples of a source stacked into a host batch (every field, as the loader gives them)."""
  examples = [source[i % len(source)] for i in range(n)]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _groups(config: ml_collections.ConfigDict) -> list[ml_collections.ConfigDict]:
  groups = [augment.group(**dict(raw.items())) for raw in config.augment.values()]
  return [g for g in groups if g.views > 0]


def _sharded_normal(key: jax.Array, shape: tuple[int, ...], mesh: Mesh) -> jax.Array:
  return jax.device_put(jax.random.normal(key, shape, jnp.float32), NamedSharding(mesh, P(parallel.DATA)))


def _on_mesh(fn: Callable, mesh: Mesh, in_specs: Any, out_specs: Any) -> Any:
  return jax.jit(jax.shard_map(fn, mesh=mesh, in_specs=in_specs, out_specs=out_specs))


# ----------------------------------------------------------------------------- the backbone alone


def _backbone_fns(config: ml_collections.ConfigDict, mesh: Mesh) -> tuple[Callable, Callable, tuple]:
  """Jitted backbone forward and forward+backward (sum-of-squares loss, grad wrt params) on every view group:
  the run's backbone, the same views per example at each group's crop size, no augmentation, no head."""
  backbone = build_backbone(config.model)
  views = [_sharded_normal(jax.random.key(i), (g.views * config.batch_size, g.size, g.size, 3), mesh)
           for i, g in enumerate(_groups(config))]
  variables = backbone.init(jax.random.key(config.seed), views[0][:2], train=False)
  params, stats = variables["params"], variables.get("batch_stats", {})

  def loss(p, s, xs):
    total = 0.0
    for x in xs:   # one backbone call per resolution group, as the methods do
      h, _ = backbone.apply({"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])
      total = total + jnp.sum(h * h)
    return jax.lax.psum(total, parallel.DATA)

  data = tuple(P(parallel.DATA) for _ in views)
  forward = _on_mesh(loss, mesh, (P(), P(), data), P())
  fwd_bwd = _on_mesh(jax.value_and_grad(loss), mesh, (P(), P(), data), (P(), P()))
  return forward, fwd_bwd, (params, stats, tuple(views))


def bench_model(config: ml_collections.ConfigDict, repeats: int, gemm_peak: float, warmup: int = 1) -> list[Row]:
  """Backbone forward (training mode, batch statistics) and forward+backward alone."""
  mesh = parallel.make_mesh(config.get("parallel", {}).get("num_devices"))
  forward, fwd_bwd, args = _backbone_fns(config, mesh)
  compiled = {"model_forward": compile_timed(forward, *args),
              "model_forward_backward": compile_timed(fwd_bwd, *args)}
  ms = time_interleaved({what: (lambda c=c: c(*args)) for what, (c, _) in compiled.items()}, repeats, warmup)
  return [make_row(what, c, compile_s, ms[what], config.batch_size, mesh, gemm_peak)
          for what, (c, compile_s) in compiled.items()]


# ----------------------------------------------------------------------------- the full step


def bench_step(config: ml_collections.ConfigDict, repeats: int, gemm_peak: float, warmup: int = 1) -> list[Row]:
  """train.make_train_step on one on-device batch (reused, state fed back) and the bare backbone fwd+bwd, timed
  in turn; "overhead_ratio" = full step ms / bare ms (what augmentation, head, loss and optimizer add)."""
  run = train.build_run(config)
  state, specs = train.init_state(run)
  step = train.make_train_step(run, specs)
  batch = parallel.host_to_global(host_batch(run.train_source, config.batch_size), run.mesh)
  compiled, compile_s = compile_timed(step, state, batch)
  _, fwd_bwd, args = _backbone_fns(config, run.mesh)
  bare, bare_compile_s = compile_timed(fwd_bwd, *args)
  holder = [state]
  del state

  def one_step():
    holder[0], metrics = compiled(holder[0], batch)   # the step donates its state: feed the new one back
    return metrics

  # Interleaved, so both medians see the same load on a shared machine.
  ms = time_interleaved({"step": one_step, "bare": lambda: bare(*args)}, repeats, warmup)
  row = make_row("step", compiled, compile_s, ms["step"], config.batch_size, run.mesh, gemm_peak,
                 bare_step_ms=ms["bare"], overhead_ratio=ms["step"] / ms["bare"])
  bare_row = make_row("bare_backbone_forward_backward", bare, bare_compile_s, ms["bare"], config.batch_size,
                      run.mesh, gemm_peak)
  return [row, bare_row]


# ----------------------------------------------------------------------------- state memory per device


def _bytes(tree: Any) -> int:
  return sum(x.nbytes for x in jax.tree.leaves(tree))


def _bytes_per_device(tree: Any) -> int:
  return sum(x.addressable_shards[0].data.nbytes for x in jax.tree.leaves(tree))


def bench_memory(config: ml_collections.ConfigDict, repeats: int, gemm_peak: float, warmup: int = 1) -> list[Row]:
  """Per-device bytes of the train state without and with config.parallel.shard_state, from the placed arrays and
  from the compiled step's memory analysis (its argument bytes: state + batch, per device). Queues and memory
  banks are row-sharded in both rows; shard_state also splits optimizer moments and EMA targets over 'data'."""
  del repeats, gemm_peak, warmup
  rows = []
  for shard in (False, True):
    c = config.copy_and_resolve_references()
    with c.unlocked():
      c.parallel = {**c.get("parallel", {}), "shard_state": shard}
    run = train.build_run(c)
    state, specs = train.init_state(run)
    step = train.make_train_step(run, specs, state)
    batch = parallel.host_to_global(host_batch(run.train_source, c.batch_size), run.mesh)
    compiled, compile_s = compile_timed(step, state, batch)
    rows.append({
        "what": "memory", "method": c.method.name, "devices": run.mesh.size, "shard_state": shard,
        "params_bytes": _bytes(state["params"]), "opt_state_bytes": _bytes(state["opt_state"]),
        "method_state_bytes": _bytes(state["method_state"]),
        "state_bytes_per_device": _bytes_per_device(state),
        "opt_state_bytes_per_device": _bytes_per_device(state["opt_state"]),
        "method_state_bytes_per_device": _bytes_per_device(state["method_state"]),
        "step_argument_bytes_per_device": int(compiled.memory_analysis().argument_size_in_bytes),
        "peak_bytes": compiled_peak_bytes(compiled), "compile_s": compile_s})
    del state, compiled
  return rows


# ----------------------------------------------------------------------------- the loss


def bench_loss(config: ml_collections.ConfigDict, repeats: int, gemm_peak: float, warmup: int = 1) -> list[Row]:
  """NT-Xent (SimCLR Eq. 1) forward+backward alone on [2 * batch, proj_dim] embeddings, gathered over 'data'."""
  mesh = parallel.make_mesh(config.get("parallel", {}).get("num_devices"))
  parallel.check_batch_size(config.batch_size, mesh)
  dim = int(config.method.get("proj_dim", 128))
  temperature = float(config.method.get("temperature", 0.1))
  z1 = _sharded_normal(jax.random.key(0), (config.batch_size, dim), mesh)
  z2 = _sharded_normal(jax.random.key(1), (config.batch_size, dim), mesh)

  def loss(a, b):
    return nt_xent(a, b, temperature, axis_name=parallel.DATA)[0]

  fn = _on_mesh(jax.value_and_grad(loss, argnums=(0, 1)), mesh, (P(parallel.DATA), P(parallel.DATA)),
                (P(), (P(parallel.DATA), P(parallel.DATA))))
  compiled, compile_s = compile_timed(fn, z1, z2)
  ms = time_ms(lambda: compiled(z1, z2), repeats, warmup)
  return [make_row("loss", compiled, compile_s, ms, config.batch_size, mesh, gemm_peak, proj_dim=dim)]


# ----------------------------------------------------------------------------- loss memory: gather vs ring

from cl_jax.loss_memory import (  # noqa: E402,F401 (--what=loss_memory; re-exported)
    LOSS_MEMORY_LOSSES, bench_loss_memory, loss_memory_bytes, loss_memory_formula)


# ----------------------------------------------------------------------------- augmentation


def torchvision_pipeline(images: np.ndarray, groups: list[ml_collections.ConfigDict]
                         ) -> tuple[Callable[[], Any] | None, str | None]:
  """A call that makes every view of `images` with a per-image torchvision SimCLR pipeline (App. A) over PIL
  images on ONE thread, or (None, why not).

  Per group: RandomResizedCrop(size, scale, ratio), flip, ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with p=jitter_p,
  RandomGrayscale(grayscale_p), GaussianBlur only if the recipe blurs, ToTensor.
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from torchvision import transforms as T  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    return None, f"torchvision is not installed ({e}); pip install torch torchvision to compare"
  torch.set_num_threads(1)
  torch.manual_seed(0)
  pipelines = []
  for g in groups:
    s = g.jitter_strength
    ops = [T.RandomResizedCrop(g.size, scale=tuple(g.scale), ratio=tuple(g.ratio)),
           T.RandomHorizontalFlip(g.flip_p),
           T.RandomApply([T.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], p=g.jitter_p),
           T.RandomGrayscale(g.grayscale_p)]
    if max(g.blur_p) > 0:
      kernel = max(int(images.shape[1] * 0.1) // 2, 1) * 2 + 1
      ops.append(T.RandomApply([T.GaussianBlur(kernel, tuple(g.blur_sigma))], p=max(g.blur_p)))
    pipelines.append((T.Compose(ops + [T.ToTensor()]), g.views))
  pil = [Image.fromarray(im) for im in images]

  def all_views():
    return [t(im) for im in pil for t, views in pipelines for _ in range(views)]

  return all_views, None


def bench_augment(config: ml_collections.ConfigDict, repeats: int, gemm_peak: float, warmup: int = 1,
                  compare_torchvision: bool = True) -> list[Row]:
  """augment.make_views on uint8 batches (jitted, per device, keys as in the training step) vs torchvision,
  timed in alternation (one round = one JAX batch, then the same views with torchvision). Ratios are given
  from the medians ("ratio_vs_torchvision") and from the best rounds ("best_ratio_vs_torchvision")."""
  run_mesh = parallel.make_mesh(config.get("parallel", {}).get("num_devices"))
  parallel.check_batch_size(config.batch_size, run_mesh)
  data_cfg = sources.data_section(config.data, config.dataset)
  if data_cfg["num_train"]:   # only one batch is used: do not render / load the whole training set
    data_cfg["num_train"] = min(int(data_cfg["num_train"]), config.batch_size)
  images = host_batch(sources.get_source(data_cfg, "train"), config.batch_size)["image"]
  recipe, seed, groups = config.augment, config.seed, _groups(config)

  def per_device(x):
    keys = augment.example_keys(jax.random.key(seed), parallel.global_example_index(x.shape[0]))
    return augment.make_views(x, keys, recipe)

  fn = _on_mesh(per_device, run_mesh, P(parallel.DATA), tuple(P(None, parallel.DATA) for _ in groups))
  x = jax.device_put(images, NamedSharding(run_mesh, P(parallel.DATA)))
  compiled, compile_s = compile_timed(fn, x)
  calls: dict[str, Callable[[], Any]] = {"jax": lambda: compiled(x)}
  tv_call, note = (torchvision_pipeline(images, groups) if compare_torchvision
                   else (None, "torchvision comparison skipped"))
  if tv_call is not None:
    calls["torchvision"] = tv_call
  times = time_rounds(calls, repeats, warmup, settle=1)
  n_views = config.batch_size * sum(g.views for g in groups)
  ms, best_ms = statistics.median(times["jax"]), min(times["jax"])
  views_per_sec = n_views / (ms / 1e3)
  tv = n_views / (statistics.median(times["torchvision"]) / 1e3) if tv_call else None
  tv_best = n_views / (min(times["torchvision"]) / 1e3) if tv_call else None
  row = make_row("augment", compiled, compile_s, ms, config.batch_size, run_mesh, gemm_peak,
                 views_per_sec=views_per_sec, best_views_per_sec=n_views / (best_ms / 1e3),
                 image_size=int(images.shape[1]), crop_sizes=[g.size for g in groups],
                 torchvision_views_per_sec=tv, best_torchvision_views_per_sec=tv_best,
                 ratio_vs_torchvision=views_per_sec / tv if tv else None,
                 best_ratio_vs_torchvision=n_views / (best_ms / 1e3) / tv_best if tv_best else None)
  if note:
    row["note"] = note
  return [row]


# ----------------------------------------------------------------------------- entry point


def measure(config: ml_collections.ConfigDict, what: str, repeats: int = 10, warmup: int = 1,
            gemm_size: int = 2048) -> list[Row]:
  """The JSON rows of one --what, with the GEMM peak measured on this device first."""
  if what not in WHATS:
    raise ValueError(f"Unknown --what={what!r}; use one of: {', '.join(WHATS)}.")
  if what == "loss_memory":   # compiled programs only: no config, no timing
    return bench_loss_memory()
  if what == "input":   # the host pipeline against the step (cl_jax/input_bench.py)
    from cl_jax.input_bench import bench_input  # pylint: disable=g-import-not-at-top
    return bench_input(config, repeats, warmup, sys.modules[__name__])
  if what == "peer":   # side by side with the reference implementation (cl_jax/peer.py), not a timing
    from cl_jax import peer  # pylint: disable=g-import-not-at-top
    f = flags.FLAGS
    parsed = f.is_parsed()
    if parsed and not f["verbosity"].present:
      logging.set_verbosity(logging.WARNING)   # keep orbax/absl chatter out of the two runs' progress lines
    return [peer.compare(config, python=(f.peer_python if parsed else "") or None,
                         workdir=(f.peer_workdir if parsed else "") or None,
                         eval_every=f.peer_eval_every if parsed else 0)]
  gemm_peak = gemm_peak_flops_per_sec(gemm_size, repeats) if what != "memory" else 0.0
  fn = {"step": bench_step, "augment": bench_augment, "loss": bench_loss, "model": bench_model,
        "memory": bench_memory}[what]
  return fn(config, repeats, gemm_peak, warmup)


config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/quickstart.py.", lock_config=True)
flags.DEFINE_enum("what", "step", list(WHATS), "What to measure: step | augment | loss | model | memory | peer | "
                  "loss_memory | input.")
flags.DEFINE_string("peer_python", "", "--what=peer: the side Python with torch + lightly (default "
                    "$CL_JAX_PEER_PYTHON, else ~/.cl_jax_peer/bin/python).")
flags.DEFINE_string("peer_workdir", "", "--what=peer: where both runs go (default /tmp/cl_jax_peer/<method>).")
flags.DEFINE_integer("peer_eval_every", 0, "--what=peer: kNN every this many steps (0: total_steps // 5).")
flags.DEFINE_integer("repeats", 10, "Timed runs after warm-up; the median is reported.")
flags.DEFINE_integer("warmup", 1, "Untimed runs after compiling.")
flags.DEFINE_integer("gemm_size", 2048, "Side of the float32 matmul that measures the GEMM peak.")


def main(argv: list[str]) -> None:
  """Prints the rows of --what as JSON lines; bad input exits with one line on stderr."""
  del argv
  f = flags.FLAGS
  if f.config is None and f.what != "loss_memory":   # loss_memory compiles the losses alone, from no config
    print(f"error: --what={f.what} needs --config, e.g. --config=configs/quickstart.py.", file=sys.stderr)
    sys.exit(1)
  try:
    rows = measure(f.config, f.what, f.repeats, f.warmup, f.gemm_size)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except RuntimeError as e:   # --what=peer: the reference run failed (its stderr is printed above)
    if f.what != "peer":
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  for row in rows:
    print(json.dumps(row), flush=True)


if __name__ == "__main__":
  app.run(main)
