"""The one training loop: host batches -> on-device views -> method loss -> optax -> state, metrics, checkpoints.

It knows nothing of any single method: it calls only the Method contract (cl_jax/methods/base.py).
"""
from __future__ import annotations

import math
import os
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, PartitionSpec as P

from cl_jax import checkpoint, init_from, optim, parallel, peers, preemption, reporting, workdir as workdir_lib
from cl_jax.data import augment, label_regimes, pipeline, sources
from cl_jax.eval import features, monitors as eval_monitors, online_probe, settings
from cl_jax.data.view_grid import view_grid_image
from cl_jax.methods import RunFacts, get_method, method_class
from cl_jax.models.registry import model_section
from cl_jax.run_state import Run, TrainState   # re-exported: `from cl_jax.train import Run, TrainState`

DATA_WAIT_WARNING = 0.25   # a log interval waiting for input longer than this fraction of its time warns once


def build_run(config: ml_collections.ConfigDict) -> Run:
  """Validates the config and builds mesh, method, optimizer and data sources; fails fast with one line."""
  parallel_cfg = parallel.parallel_section(config)   # a typo in config.parallel fails before anything is built
  mesh = parallel.make_mesh(parallel_cfg["num_devices"] or None)
  local_batch = parallel.check_batch_size(config.batch_size, mesh)
  method_class(config)   # an unknown method name fails before any data is built
  # Each section against its declared fields (every evaluator's, the chosen backbone's, optimizer's, source's):
  # one line per typo; validated once, kept on the Run.
  sections = {"eval": eval_monitors.validate_eval(config), "model": model_section(config.model),
              "optim": optim.optim_section(config.optim), "data": sources.data_section(config.data, config.dataset), "parallel": parallel_cfg}
  data_cfg = sections["data"]
  train_source = sources.get_source(data_cfg, "train")
  has_test = eval_monitors.needs_test_split(train_source)
  test_source = sources.get_source(data_cfg, "test") if has_test else None
  if config.get("online_probe", False) and not train_source.has_labels:
    raise ValueError(f"online_probe needs labels but {config.dataset} has none; set online_probe=False.")
  steps_per_epoch = len(train_source) // config.batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {config.batch_size} is larger than the {len(train_source)} training examples; "
                     "lower batch_size.")
  total_steps = config.get("total_steps", 0) or int(math.ceil(config.num_epochs * steps_per_epoch))
  method = get_method(config, RunFacts(total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                       num_train=len(train_source), num_devices=mesh.size))
  tx, schedule = optim.build_optimizer(config.optim, total_steps=total_steps, steps_per_epoch=steps_per_epoch,
                                       batch_size=config.batch_size)
  return Run(config, mesh, method, tx, schedule, train_source, test_source, local_batch, steps_per_epoch,
             total_steps, sections)


def resolved_sections(run: Run) -> dict[str, dict[str, Any]]:
  """The method, model, optim, data and eval sections as validated: every declared field and the value used."""
  return {"method": run.method.hp.to_dict(), **run.sections}


def _sample_batch(source: Any, n: int = 2) -> dict[str, np.ndarray]:
  examples = [source[i] for i in range(n)]
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _sample_views(run: Run) -> tuple[dict[str, np.ndarray], tuple[jax.Array, ...]]:
  """The first few training examples and their augmented views (for init shapes and the view grid)."""
  if run._sample is None:
    sample = _sample_batch(run.train_source, min(8, len(run.train_source)))
    keys = augment.example_keys(jax.random.key(run.config.seed), jnp.arange(len(sample["image"])))
    crops = jax.jit(lambda im, k: augment.make_views(im, k, run.config.augment))(sample["image"], keys)
    run._sample = (sample, crops)
  return run._sample


def _views(batch: dict[str, jax.Array], crops: tuple[jax.Array, ...]) -> dict[str, Any]:
  """What a method sees of a batch: its fields but the images (replaced by the crops) and the label regimes' kept
  truths (clean / fine / true labels reach evaluation only, never a loss)."""
  hidden = ("image",) + label_regimes.TRUTH_FIELDS
  return {**{k: v for k, v in batch.items() if k not in hidden}, "crops": crops}


def init_state(run: Run) -> tuple[TrainState, Any]:
  """Initial train state on the mesh and its PartitionSpecs."""
  key = jax.random.key(run.config.seed)
  sample, crops = _sample_views(run)
  params, method_state = jax.jit(run.method.init)(jax.random.fold_in(key, 1), _views(sample, crops))
  state = {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": run.tx.init(params),
           "method_state": method_state}
  specs = {"step": P(), "params": P(), "opt_state": P(),
           "method_state": run.method.state_sharding(method_state)}
  if run.config.get("online_probe", False):
    size = features.image_size(run.config)
    feats = jax.eval_shape(lambda p, s, im: run.method.encode(p, s, augment.eval_preprocess(im, size)),
                           params, method_state, sample["image"])
    probe_params = online_probe.init(key, feats.shape[-1], label_regimes.truth(run.train_source)[1])
    state["probe"] = {"params": probe_params, "opt_state": online_probe.optimizer().init(probe_params)}
    specs["probe"] = P()
  return jax.device_put(state, _named(run, storage_specs(run, state, specs))), specs


def storage_specs(run: Run, state: TrainState, specs: Any) -> Any:
  """Where the state lives between steps: as `specs`, except that with config.parallel.shard_state the replicated
  leaves of the optimizer and method state (moments, EMA targets, batch statistics) are split ZeRO-style over
  'data' (1/n of their bytes per device); the step all-gathers them on entry, as its in_specs ask."""
  if not run.config.get("parallel", {}).get("shard_state", False):
    return specs
  return {**specs, **{k: parallel.zero_specs(state[k], specs[k], run.mesh.size) for k in ("opt_state",
                                                                                         "method_state")}}


def _named(run: Run, specs: Any) -> Any:
  return jax.tree.map(lambda s: jax.sharding.NamedSharding(run.mesh, s), specs, is_leaf=lambda x: isinstance(x, P))


def make_train_step(run: Run, specs: Any, state: TrainState | None = None
                    ) -> Callable[[TrainState, dict[str, jax.Array]], tuple[TrainState, Any]]:
  """jit(shard_map(per-device step)): batch sharded over 'data', state laid out by `specs` inside the step and
  stored between steps as `storage_specs` (pass the initial `state` when config.parallel.shard_state), donated."""
  method, tx, recipe, seed = run.method, run.tx, run.config.augment, run.config.seed
  probe_tx = online_probe.optimizer()
  probe_labels = label_regimes.truth(run.train_source)[0]   # the online probe is evaluation: true labels

  def per_device(state: TrainState, batch: dict[str, jax.Array]):
    step = state["step"]
    key = jax.random.fold_in(jax.random.key(seed), step)
    aug_key, loss_key = jax.random.split(key)
    keys = augment.example_keys(aug_key, parallel.global_example_index(batch["image"].shape[0]))
    views = _views(batch, augment.make_views(batch["image"], keys, recipe))

    def loss_fn(params):
      return method.loss(params, state["method_state"], views, loss_key, step)

    (loss, (method_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    if parallel.is_varying(loss):
      raise TypeError(f"{type(method).__name__}.loss returned a per-device loss; return the global loss "
                      "(lax.pmean/psum over 'data') so its gradient is the global-batch gradient.")
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    params = method.project_params(optax.apply_updates(state["params"], updates))
    method_state = method.after_update(params, method_state, step)
    features = metrics.pop("features", None)
    metrics = {(k if "/" in k else f"train/{k}"): v for k, v in metrics.items()}
    new_state = {"step": step + 1, "params": params, "opt_state": opt_state, "method_state": method_state}
    if "probe" in state:
      if features is None:
        raise ValueError(f"online_probe needs {type(method).__name__}.loss to return backbone 'features' in its "
                         "metrics; set online_probe=False.")
      new_state["probe"], probe_metrics = online_probe.update(state["probe"], probe_tx, features, batch[probe_labels])
      metrics.update(probe_metrics)
    return new_state, parallel.pmean_varying({"loss": loss, **metrics})

  stored = specs
  if run.config.get("parallel", {}).get("shard_state", False):
    if state is None:
      raise ValueError("config.parallel.shard_state needs the initial state: make_train_step(run, specs, state).")
    stored = storage_specs(run, state, specs)
  return jax.jit(jax.shard_map(per_device, mesh=run.mesh, in_specs=(specs, P(parallel.DATA)),
                               out_specs=(specs, P())),
                 in_shardings=(_named(run, stored), parallel.sharded(run.mesh)),
                 out_shardings=(_named(run, stored), parallel.replicated(run.mesh)), donate_argnums=(0,))


def load_run(workdir: str, config: ml_collections.ConfigDict | None = None,
             best: bool = False) -> tuple[Run, TrainState, Any, int]:
  """(run, train state restored from the latest (or, with `best`, the best-metric) checkpoint, specs, step)."""
  config = config if config is not None else workdir_lib.load_config(workdir)
  run = build_run(config)
  state, specs = init_state(run)
  name = "checkpoints_best" if best else "checkpoints"
  if best and not os.path.isdir(os.path.join(workdir, name)):
    raise FileNotFoundError(f"{workdir} has no {name}/; train with config.best_metric set (e.g. "
                            "'eval/knn_top1') to keep the best checkpoint.")
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, name), keep=config.get("keep_checkpoints", 3))
  try:
    restored = ckpt.restore(state)
  finally:
    ckpt.close()
  if restored is None:
    raise FileNotFoundError(f"{workdir} has no checkpoint to evaluate; train first or pass the workdir of a "
                            "finished run.")
  step, state, _ = restored
  return run, state, specs, step


def run_epoch_start(run: Run, state: TrainState, specs: Any, step: int) -> tuple[TrainState, dict[str, float]]:
  """The method's epoch-start pass (Method.EPOCH_START): epoch_outputs over the whole training split in order, then
  epoch_start on the host; the new method state is placed where the old one lives. Returns (state, metrics)."""
  if "encode:epoch_outputs" not in run.cache:
    run.cache["encode:epoch_outputs"] = features.make_encode(run, specs, "epoch_outputs")
  split = features.extract(run, run.cache["encode:epoch_outputs"], state, run.train_source, ("label", "index"))
  old = state["method_state"]
  new, metrics = run.method.epoch_start(old, split, step // run.steps_per_epoch)
  name = type(run.method).__name__
  if jax.tree.structure(new) != jax.tree.structure(old):
    raise ValueError(f"{name}.epoch_start changed the structure of the method state; return the same pytree.")
  for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)):
    if np.shape(a) != b.shape or np.result_type(a) != b.dtype:
      raise ValueError(f"{name}.epoch_start returned a leaf of shape {np.shape(a)} {np.result_type(a)} for one of "
                       f"{b.shape} {b.dtype}; keep every leaf's shape and dtype.")
  placed = parallel.from_host(new, jax.tree.map(lambda x: x.sharding, old))
  return {**state, "method_state": placed}, {f"epoch/{k}": float(v) for k, v in metrics.items()}


def _batches(loader_iter: Iterator, mesh: Mesh) -> Iterator[dict[str, jax.Array]]:
  for batch in loader_iter:
    yield parallel.host_to_global(batch, mesh)


def _check_finite(loss: float, step: int, ckpt: checkpoint.Checkpointer) -> None:
  if not math.isfinite(loss):
    last = ckpt.latest_step()
    where = f"the last checkpoint (step {last}) is intact" if last is not None else "no checkpoint was written"
    raise FloatingPointError(f"Loss became {loss} at step {step}; {where}; lower optim.lr or enable "
                             "optim.clip_norm and rerun the same command to resume.")


def _write_view_grid(run: Run, reporter: reporting.Reporter, workdir: str) -> None:
  """A PNG (and TensorBoard image) of a few training images next to their augmented views."""
  sample, crops = _sample_views(run)
  grid = view_grid_image(sample["image"], [np.asarray(c) for c in crops])
  reporter.image("augmentations", 0, grid)
  if reporter.active:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    Image.fromarray(grid).save(os.path.join(workdir, "augmentations.png"))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
  """Trains `config` in `workdir`, resuming exactly from its latest checkpoint; returns the last metrics.

  SIGTERM writes a checkpoint at the next step boundary and returns early; rerunning resumes.
  """
  peer_timeout = float(config.get("parallel", {}).get("peer_timeout_seconds", 60.0))
  parallel.initialize_distributed(peer_timeout)
  workdir_lib.check_resumable(workdir, config)
  run = build_run(config)
  workdir_lib.write_config(workdir, config)
  workdir_lib.write_resolved(workdir, resolved_sections(run))
  if regime := label_regimes.regime_summary(run.train_source):   # the realised label regime, for evaluation
    workdir_lib.write_json(workdir, "label_regime.json", regime)
  state, specs = init_state(run)
  train_step = make_train_step(run, specs, state)
  eval_cfg = settings.read(config, eval_monitors.SCHEMA)
  monitors = [eval_monitors.get_monitor(name) for name in eval_cfg.monitors]
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), keep=config.get("keep_checkpoints", 3))
  best_ckpt = (checkpoint.BestCheckpointer(os.path.join(workdir, "checkpoints_best"), config.best_metric,
                                           config.get("best_metric_mode", "max"))
               if config.get("best_metric", "") else None)
  loader = pipeline.make_loader(run.train_source, global_batch=config.batch_size, seed=config.seed, shuffle=True,
                                num_epochs=None, worker_count=run.sections["data"]["worker_count"])
  loader_iter = iter(loader)
  start = 0
  restored = ckpt.restore(state)
  loaded = ""
  if restored is not None:
    start, state, data_state = restored
    if data_state is not None:
      loader_iter.set_state(data_state)
  elif config.get("init_from", ""):   # a fresh run from another run's backbone; a resume keeps its own checkpoint
    state, loaded = init_from.initialise(state, config.init_from,
                                         tuple(getattr(run.method, "init_from_parts", (init_from.BACKBONE,))))
  reporter = reporting.Reporter(workdir, run.total_steps, tensorboard=config.get("tensorboard", True),
                                resume_step=start)
  reporter.say(f"cl_jax: {config.method.name} on {config.dataset} | {run.mesh.size} device(s) | "
               f"batch {config.batch_size} | {run.total_steps} steps"
               + (f" | resumed from step {start}" if start else ""))
  if loaded:
    reporter.say(loaded)
  history: dict[str, float] = {}
  has_eval = run.test_source is not None and eval_cfg.every >= 0

  def run_eval(step: int) -> None:
    if not has_eval:
      return
    result = {}
    for monitor in monitors:
      result.update(monitor(run, state, specs))
    history.update(result)
    reporter.write(step, result)
    if best_ckpt is not None and step > 0 and best_ckpt.maybe_save(step, state, loader_iter.get_state(), result):
      reporter.say(f"step {step:>6}: new best {config.best_metric} {result[config.best_metric]:.2f}; "
                   "saved to checkpoints_best/")
    names = eval_monitors.EVAL_NAMES
    reporter.say(f"step {step:>6}: " + ", ".join(f"{names.get(k, k)} {v:.2f}%" for k, v in result.items()))

  if start == 0:
    _write_view_grid(run, reporter, workdir)
    run_eval(0)
  timer = reporting.Throughput()
  timer.reset(start)
  batches = _batches(loader_iter, run.mesh)
  log_every, eval_every = config.get("log_every", 50), eval_cfg.every
  ckpt_every = config.get("checkpoint_every", 1000)
  guard = preemption.PreemptionGuard(check_every=config.get("preemption_check_every", 10))
  watch = peers.PeerWatch(peer_timeout, ckpt.committed_step)   # multi-host: a dead peer ends the run in one line
  step = start
  warned: set[str] = set()
  try:
    while step < run.total_steps:
      watch.step = step
      if run.method.EPOCH_START and step % run.steps_per_epoch == 0:
        state, epoch_metrics = run_epoch_start(run, state, specs, step)
        reporter.write(step, epoch_metrics)
        history.update(epoch_metrics)
        timer.reset(step)
      t0 = time.perf_counter()
      batch = next(batches)
      timer.waited(time.perf_counter() - t0)
      state, metrics = train_step(state, batch)
      del batch
      step += 1
      stop = guard.should_stop(step)
      is_log = step % log_every == 0 or step == run.total_steps
      is_ckpt = step % ckpt_every == 0 or step == run.total_steps or stop
      if step == start + 1 and not is_log:   # images/s leaves out the first step's compilation
        jax.block_until_ready(state["step"])
        timer.reset(step)
      if is_log or is_ckpt:
        metrics = jax.tree.map(float, jax.device_get(metrics))
        _check_finite(metrics["loss"], step, ckpt)
      if is_log:
        ips, sps, wait = timer.measure(step, config.batch_size)
        lr = float(run.schedule(step - 1))
        reporter.write(step, {**metrics, "lr": lr, "images_per_sec": ips, "data_wait_frac": wait})
        reporter.progress(step, metrics["loss"], lr, ips, sps, wait)
        if wait > DATA_WAIT_WARNING and step > start + log_every and "data_wait" not in warned:
          warned.add("data_wait")
          reporter.say(f"step {step:>6}: warning: the step waited for input data {wait:.0%} of the time; raise "
                       f"--config.data.worker_count (now {run.sections['data']['worker_count']}) or store "
                       "smaller images (python -m cl_jax.bench --what=input measures the pipeline).")
        history.update(metrics)
        if (warning := run.method.health(metrics, step)) and warning not in warned:
          warned.add(warning)
          reporter.say(f"step {step:>6}: warning: {warning}")
      if is_ckpt:
        ckpt.save(step, state, loader_iter.get_state())
      if stop:
        ckpt.wait()
        said = f"Preempted: checkpoint written at step {step}; rerun the same command to resume."
        reporter.say(said) if reporter.active else print(f"[process {jax.process_index()}] {said}", flush=True)
        break
      if (eval_every and step % eval_every == 0) or step == run.total_steps:
        run_eval(step)
        timer.reset(step)
  except jax.errors.JaxRuntimeError as e:
    watch.wait_for_verdict(e)   # a collective failed: a lost peer exits with one line, anything else re-raises
  finally:
    watch.close()
    guard.close()
    ckpt.close()
    if best_ckpt is not None:
      best_ckpt.close()
    reporter.close()
  return history
