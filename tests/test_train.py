"""The training loop end to end on tiny runs: metrics, no recompilation, 1 vs 8 devices, resume, bad input."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import parallel, train
from cl_jax.methods import METHODS
from cl_jax.methods.simclr import SimCLR
from configs import quickstart
from cl_jax.data import augment, pipeline
from tests.harness import method_step, tiny_config, train_steps


def read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("run"))
  c = tiny_config(total_steps=4, log_every=1, checkpoint_every=2)
  train.train_and_evaluate(c, workdir)
  return c, workdir


def test_run_writes_metrics_eval_and_checkpoints(quick_run):
  _, workdir = quick_run
  rows = read_metrics(workdir)
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 3, 4]
  for r in train_rows:
    assert {"loss", "lr", "images_per_sec", "data_wait_frac", "train/contrast_acc", "train/embedding_std"} <= set(r)
    assert 0.0 <= r["data_wait_frac"] <= 1.0
    assert np.isfinite(r["loss"])
  evals = [r for r in rows if "eval/knn_top1" in r]
  assert [r["step"] for r in evals] == [0, 4]
  assert all(0.0 <= r["eval/knn_top1"] <= 100.0 for r in evals)
  assert os.path.exists(os.path.join(workdir, "config.json"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "4"
  assert any(f.startswith("events") for f in os.listdir(os.path.join(workdir, "tensorboard")))


def test_rerun_resumes_from_latest_checkpoint(quick_run):
  c, workdir = quick_run
  c = tiny_config(total_steps=6, log_every=1, checkpoint_every=2)
  train.train_and_evaluate(c, workdir)
  steps = [r["step"] for r in read_metrics(workdir) if "loss" in r]
  assert steps == [1, 2, 3, 4, 5, 6]


def test_a_slow_input_pipeline_shows_in_data_wait_frac_and_warns_once(tmp_path, monkeypatch, capsys):
  """Every batch held 1.5 s on the host (a pipeline far slower than the tiny step): the logged data_wait_frac
  says so and the log warns once, naming data.worker_count; the fast run of quick_run logs a small fraction."""
  import time
  real = train._batches

  def slow(loader_iter, mesh):
    for batch in real(loader_iter, mesh):
      time.sleep(1.5)
      yield batch

  monkeypatch.setattr(train, "_batches", slow)
  train.train_and_evaluate(tiny_config(total_steps=4, log_every=1, checkpoint_every=4), str(tmp_path))
  waits = [r["data_wait_frac"] for r in read_metrics(str(tmp_path)) if "loss" in r]
  assert len(waits) == 4 and min(waits[1:]) > 0.5, waits
  out = capsys.readouterr().out
  assert out.count("waited for input data") == 1 and "--config.data.worker_count (now 0)" in out
  assert "data wait" in out                                             # the progress line shows it


def test_best_checkpoint_keeps_the_best_eval_step(tmp_path):
  c = tiny_config(total_steps=6, log_every=2, checkpoint_every=2, best_metric="eval/knn_top1")
  c.eval.every = 2
  train.train_and_evaluate(c, str(tmp_path))
  evals = {r["step"]: r["eval/knn_top1"] for r in read_metrics(str(tmp_path)) if "eval/knn_top1" in r and r["step"]}
  best_step = max(evals, key=lambda s: (evals[s], -s))   # the first step reaching the maximum
  assert os.listdir(tmp_path / "checkpoints_best") == [str(best_step)]
  run, state, _, step = train.load_run(str(tmp_path), best=True)
  assert step == best_step and int(state["step"]) == best_step
  # `python -m cl_jax.evaluate --checkpoint=best` evaluates that step (the kNN it logged at best_step).
  from cl_jax import evaluate
  got = evaluate.evaluate(str(tmp_path), "knn", checkpoint="best")
  assert got["eval/knn_top1"] == pytest.approx(evals[best_step], abs=1e-6)
  assert read_metrics(str(tmp_path))[-1]["step"] == best_step
  with pytest.raises(ValueError, match="Unknown --checkpoint='newest'; use one of: latest, best"):
    evaluate.evaluate(str(tmp_path), "knn", checkpoint="newest")


def _losses(config, steps):
  """Losses of `steps` training steps, the jitted step and the final params (numpy)."""
  history, _, state, step_fn = train_steps(config, steps)
  return [h["loss"] for h in history], step_fn, parallel.to_host(state["params"])


def _plain_sgd(config):
  """Plain SGD: no momentum, no weight decay, constant lr, so a gradient scaled by the device count shows in the
  params (Adam's normalisation would hide it)."""
  config.optim = dict(name="sgd", lr=0.02, lr_scaling="none", momentum=0.0, nesterov=False, weight_decay=0.0,
                      schedule="constant", warmup_epochs=0.0)
  return config


def test_eight_devices_match_one_device_and_compile_once():
  c8 = _plain_sgd(tiny_config())
  c1 = _plain_sgd(tiny_config())
  c1.parallel = {"num_devices": 1}
  tx, w, g = train.build_run(c8).tx, {"w": jnp.ones((2, 3))}, {"w": jnp.full((2, 3), 2.0)}
  opt_state = tx.init(w)
  for _ in range(2):   # the second update is still -lr * g: no momentum, no weight decay
    update, opt_state = tx.update(g, opt_state, w)
  np.testing.assert_allclose(update["w"], -0.02 * 2.0, rtol=1e-6)
  # 3 steps: further on, this tiny net amplifies float32 reordering noise (a 1-ulp parameter change moves the next
  # gradient by up to 1e-2), so the trajectories part; each step's exactness is test_first_gradient_... below.
  losses8, step_fn, params8 = _losses(c8, 3)
  losses1, _, params1 = _losses(c1, 3)
  assert step_fn._cache_size() == 1   # no recompilation after the first step
  np.testing.assert_allclose(losses8, losses1, rtol=2e-4)
  assert len(set(np.round(losses8, 4))) > 1   # the run moves
  flat1 = dict(jax.tree_util.tree_flatten_with_path(params1)[0])
  for path, leaf in jax.tree_util.tree_flatten_with_path(params8)[0]:
    np.testing.assert_allclose(leaf, flat1[path], rtol=0, atol=2e-4, err_msg=jax.tree_util.keystr(path))


def test_first_gradient_of_the_quick_start_model_is_the_same_on_eight_devices_and_one():
  """Per leaf to 1e-5 (measured 2e-6, the size of reordering the batch on one device) on the embedded shapes with
  the quick start's model and sync BN; gradients, not parameters, as p - lr * g rounds small updates of p ~ 1."""
  c = quickstart.get_config("runlocal")
  run = train.build_run(c)
  state, _ = train.init_state(run)
  batch = next(iter(pipeline.make_loader(run.train_source, global_batch=c.batch_size, seed=0, shuffle=True,
                                         num_epochs=1)))
  keys = augment.example_keys(jax.random.key(0), jnp.arange(c.batch_size))
  views = {"crops": tuple(np.asarray(v) for v in jax.jit(lambda x, k: augment.make_views(x, k, c.augment))(
      batch["image"], keys))}
  params, method_state = parallel.to_host(state["params"]), parallel.to_host(state["method_state"])
  one, eight = (method_step(run.method, params, method_state, views, n) for n in (1, 8))
  np.testing.assert_allclose(float(eight.loss), float(one.loss), rtol=1e-6)
  for (path, g8), g1 in zip(jax.tree_util.tree_leaves_with_path(eight.grads), jax.tree.leaves(one.grads)):
    rel = np.linalg.norm(np.asarray(g8) - np.asarray(g1)) / np.linalg.norm(np.asarray(g1))
    assert rel < 1e-5, f"{jax.tree_util.keystr(path)}: 8 vs 1 device gradient differs by {rel:.1e} relative"


@METHODS.register("test_nan_at_step_3")
class NanAtStep3(SimCLR):
  """SimCLR whose loss becomes NaN from step 3 on, to test the NaN guard."""

  def loss(self, params, state, views, key, step):
    loss, aux = super().loss(params, state, views, key, step)
    return jnp.where(step >= 2, jnp.nan, loss), aux

  def health(self, metrics, step):
    return f"test warning ({metrics['loss'] > 0})" if step >= 1 else None


def test_nan_loss_stops_with_step_and_keeps_checkpoint(tmp_path, capsys):
  c = tiny_config(total_steps=6, log_every=1, checkpoint_every=2)
  c.method.name = "test_nan_at_step_3"
  with pytest.raises(FloatingPointError, match=r"at step 3; the last checkpoint \(step 2\) is intact"):
    train.train_and_evaluate(c, str(tmp_path))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["2"]
  # Method.health's warning, printed once (steps 1 and 2 both warn) with the logged metrics
  out = capsys.readouterr().out
  assert "step      1: warning: test warning (True)" in out and out.count("warning: test warning") == 1


@pytest.mark.parametrize("key,value,message", [
    ("method.name", "simclrr", "Unknown method 'simclrr'; known methods: .*simclr"),
    ("model.name", "resnet19", "Unknown backbone 'resnet19'; known backbones: .*resnet18"),
    ("optim.name", "adamm", "Unknown optimizer 'adamm'; known optimizers: .*adamw"),
    ("batch_size", 36, "Global batch 36 is not divisible by the 8 devices"),
])
def test_bad_config_fails_at_start_in_one_line(key, value, message):
  c = tiny_config(**{key: value})
  with pytest.raises(ValueError, match=message) as e:
    train.build_run(c)
  assert "\n" not in str(e.value)


def test_shard_state_stores_optimizer_state_zero_style_and_changes_no_number():
  """config.parallel.shard_state: per-device argument bytes fall by ~7/8 of the optimizer state; same training."""
  from cl_jax import parallel
  from cl_jax.data import pipeline
  results = {}
  for shard in (False, True):
    c = tiny_config()
    c.parallel = {"shard_state": shard}
    run = train.build_run(c)
    state, specs = train.init_state(run)
    step_fn = train.make_train_step(run, specs, state)
    it = iter(pipeline.make_loader(run.train_source, global_batch=c.batch_size, seed=0, shuffle=True,
                                   num_epochs=None))
    batch = parallel.host_to_global(next(it), run.mesh)
    arg_bytes = step_fn.lower(state, batch).compile().memory_analysis().argument_size_in_bytes
    opt_bytes = sum(x.nbytes for x in jax.tree.leaves(state["opt_state"]))
    kept = {tuple(x.sharding.spec) for x in jax.tree.leaves(state["opt_state"]) if x.ndim > 1}
    losses = []
    for _ in range(2):
      state, metrics = step_fn(state, batch)
      losses.append(float(metrics["loss"]))
    results[shard] = (arg_bytes, opt_bytes, kept, losses, jax.device_get(state["params"]))
  (full, opt_bytes, kept_full, losses, params), (sharded, _, kept_sharded, losses_z, params_z) = (
      results[False], results[True])
  assert kept_full == {()} and all("data" in spec for spec in kept_sharded)
  assert full - sharded >= 0.8 * opt_bytes * (1 - 1 / 8)
  np.testing.assert_allclose(losses_z, losses, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), params_z, params)
