"""config.init_from: a run starts from another run's backbone (every copy of it), once, and says so; a backbone
of another architecture or a workdir with no run fails in one line."""
import os

import jax
import numpy as np
import pytest

from cl_jax import init_from, train
from tests.harness import tiny_config, tiny_method_config


def leaves(tree):
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def same(a, b):
  la, lb = leaves(a), leaves(b)
  return len(la) == len(lb) and all(np.array_equal(x, y) for x, y in zip(la, lb))


@pytest.fixture(scope="module")
def source(tmp_path_factory):
  """A SimCLR run of 2 steps on the tiny config (resnet_tiny): its workdir and its final backbone."""
  workdir = str(tmp_path_factory.mktemp("simclr"))
  train.train_and_evaluate(tiny_config(total_steps=2, log_every=1, checkpoint_every=2), workdir)
  _, state, _, step = train.load_run(workdir)
  assert step == 2
  return workdir, init_from.source_backbone(jax.device_get(state))


def test_every_backbone_copy_of_a_momentum_method_is_replaced(source):
  workdir, backbone = source
  c = tiny_method_config("maskcon", **{"model": tiny_config().model.to_dict(), "method.queue_size": 64})
  run = train.build_run(c)
  state, _ = train.init_state(run)
  assert not same(state["params"]["backbone"], backbone["params"])         # a fresh init differs
  new, line = init_from.initialise(state, workdir)
  ms = new["method_state"]
  for params in (new["params"]["backbone"], ms["ema"]["params"]["backbone"]):   # query and key encoders
    assert same(params, backbone["params"])
  for stats in (ms["batch_stats"]["backbone"], ms["ema"]["batch_stats"]["backbone"]):
    assert same(stats, backbone["batch_stats"])
  assert same(new["params"]["head"], state["params"]["head"])               # the head starts fresh
  assert same(ms["queue"], state["method_state"]["queue"])
  assert "initialised 4 backbone copies" in line and "simclr" in line and "step 2" in line
  leaf = jax.tree.leaves(new["params"]["backbone"])[0]
  assert leaf.sharding == jax.tree.leaves(state["params"]["backbone"])[0].sharding


def test_the_loop_initialises_once_and_a_resume_keeps_its_own_checkpoint(source, tmp_path, capsys):
  workdir, backbone = source
  c = tiny_config(total_steps=1, log_every=1, checkpoint_every=1, init_from=workdir)
  c.optim.lr = 1e-30                                    # the step moves no float32 parameter: the loaded ones remain
  train.train_and_evaluate(c, str(tmp_path))
  assert f"initialised 2 backbone copies from {workdir}" in capsys.readouterr().out   # params, BN statistics
  _, state, _, _ = train.load_run(str(tmp_path))
  assert same(state["params"]["backbone"], backbone["params"])
  c.total_steps = 2
  train.train_and_evaluate(c, str(tmp_path))            # resumes from its own step 1: no second initialisation
  assert "initialised" not in capsys.readouterr().out


def test_another_architecture_fails_naming_the_leaf(source):
  workdir, _ = source
  run = train.build_run(tiny_config(**{"model.width": 2.0}))
  state, _ = train.init_state(run)
  with pytest.raises(ValueError, match=r"init_from=.*does not fit this model's \(params/backbone: .* has shape"):
    init_from.initialise(state, workdir)


def test_a_workdir_without_a_run_fails_in_one_line(tmp_path):
  run = train.build_run(tiny_config())
  state, _ = train.init_state(run)
  with pytest.raises(ValueError, match="config.init_from=.*nothing holds no cl_jax run"):
    init_from.initialise(state, os.path.join(str(tmp_path), "nothing"))
