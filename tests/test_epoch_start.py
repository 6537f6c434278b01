"""The loop's epoch-start pass (Method.EPOCH_START): it runs before the first step of every epoch over the whole
training split in order, sees the training labels but never the regimes' kept truths, its state reaches the next
steps, 8 devices give the same pass as 1, and a resume mid-epoch neither repeats it nor changes the result."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_jax import train
from cl_jax.data import label_regimes
from cl_jax.methods import METHODS
from cl_jax.methods.simclr import SimCLR
from tests.harness import one_line_error, tiny_config

CALLS: list[tuple[int, dict[str, np.ndarray]]] = []


@METHODS.register("epoch_probe")
class EpochProbe(SimCLR):
  """SimCLR that counts its epoch-start passes in its state and keeps each pass's split on the host (CALLS)."""

  EPOCH_START = True

  def init(self, key, views):
    params, state = super().init(key, views)
    return params, {**state, "passes": jnp.zeros((), jnp.int32), "mean_label": jnp.zeros((), jnp.float32)}

  def loss(self, params, state, views, key, step):
    loss, (new, metrics) = super().loss(params, {"batch_stats": state["batch_stats"]}, views, key, step)
    metrics["passes_seen"] = state["passes"].astype(jnp.float32)   # the pass's state reaches the step
    return loss, ({**state, **new}, metrics)

  def encode(self, params, state, images):
    return super().encode(params, {"batch_stats": state["batch_stats"]}, images)

  def epoch_start(self, state, split, epoch):
    CALLS.append((epoch, split))
    passes = np.asarray(state["passes"]) + 1
    return ({**state, "passes": passes.astype(np.int32),
             "mean_label": np.float32(split["label"].mean())}, {"passes": float(passes)})


def probe_config(**overrides):
  return tiny_config(**{"method.name": "epoch_probe", "optim.schedule": "constant", "optim.warmup_epochs": 0,
                        "data.label_noise": "symmetric:0.4", "eval.every": -1, "log_every": 1,
                        "checkpoint_every": 4, **overrides})


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
  CALLS.clear()
  workdir = str(tmp_path_factory.mktemp("full"))
  history = train.train_and_evaluate(probe_config(total_steps=20), workdir)   # 256 examples / 32: 8 steps an epoch
  return workdir, history, list(CALLS)


def test_runs_once_per_epoch_over_the_whole_split_in_order(full_run):
  workdir, history, calls = full_run
  assert [epoch for epoch, _ in calls] == [0, 1, 2]            # before steps 0, 8 and 16 of 20
  run = train.build_run(probe_config())
  noisy = run.train_source.labels
  for _, split in calls:
    np.testing.assert_array_equal(split["index"], np.arange(256))
    np.testing.assert_array_equal(split["label"], noisy)       # the training (noisy) label ...
    assert not set(label_regimes.TRUTH_FIELDS) & set(split)    # ... never the clean one
    assert split["features"].shape[0] == 256
  assert history["epoch/passes"] == 3.0 and history["train/passes_seen"] == 3.0
  _, state, _, step = train.load_run(workdir)
  assert step == 20 and int(state["method_state"]["passes"]) == 3
  np.testing.assert_allclose(float(state["method_state"]["mean_label"]), noisy.mean(), rtol=1e-6)


def test_views_never_carry_the_kept_truths():
  run = train.build_run(probe_config())
  sample, crops = train._sample_views(run)
  assert "clean_label" in sample and "is_noisy" in sample
  views = train._views(sample, crops)
  assert "label" in views and not set(label_regimes.TRUTH_FIELDS) & set(views)


def test_one_device_gives_the_same_pass(full_run):
  _, _, calls = full_run
  CALLS.clear()
  config = probe_config()
  config.parallel = {"num_devices": 1}
  run = train.build_run(config)
  state, specs = train.init_state(run)
  train.run_epoch_start(run, state, specs, 0)
  np.testing.assert_allclose(CALLS[0][1]["features"], calls[0][1]["features"], rtol=1e-5, atol=1e-5)


def test_resume_mid_epoch_does_not_repeat_the_pass_and_is_exact(full_run, tmp_path):
  workdir, _, _ = full_run
  CALLS.clear()
  train.train_and_evaluate(probe_config(total_steps=12), str(tmp_path))
  train.train_and_evaluate(probe_config(total_steps=20), str(tmp_path))   # resumes at step 12, mid-epoch 1
  assert [epoch for epoch, _ in CALLS] == [0, 1, 2]
  _, a, _, _ = train.load_run(workdir)
  _, b, _, _ = train.load_run(str(tmp_path))
  for x, y in zip(jax.tree.leaves(a["params"]), jax.tree.leaves(b["params"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


class BadShape(EpochProbe):
  def epoch_start(self, state, split, epoch):
    return {**state, "passes": np.zeros((3,), np.int32)}, {}


METHODS.register("epoch_probe_bad")(BadShape)


def test_a_pass_that_changes_the_state_shape_is_one_line():
  run = train.build_run(probe_config(**{"method.name": "epoch_probe_bad"}))
  state, specs = train.init_state(run)
  one_line_error(lambda: train.run_epoch_start(run, state, specs, 0), "BadShape.epoch_start", "shape (3,)")
