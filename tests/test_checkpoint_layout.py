"""Resuming from a checkpoint whose stored tree has other keys fails in one line naming both key lists."""
import os

import jax
import jax.numpy as jnp
import pytest

from cl_jax import checkpoint, train
from tests.harness import tiny_method_config


def test_resume_from_an_old_ema_layout_names_the_change(tmp_path):
  """A real MoCo v2 train state saved with the pre-rename method state (key_params, key_batch_stats)."""
  workdir = str(tmp_path)
  config = tiny_method_config("moco_v2", **{"eval.every": -1, "total_steps": 4})
  state, _ = train.init_state(train.build_run(config))
  ms = dict(state["method_state"])
  ema = ms.pop("ema")
  old = {**state, "method_state": {**ms, "key_params": ema["params"], "key_batch_stats": ema["batch_stats"]}}
  ckpt = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), async_save=False)
  ckpt.save(2, old, None)
  ckpt.close()
  with pytest.raises(ValueError, match=r"^Checkpoint 2 in .* has method_state keys \[batch_stats, key_batch_stats, "
                                       r"key_params, ptr, queue\], this version expects \[batch_stats, ema, ptr, "
                                       r"queue\]; the method state layout changed: .*method_state\['ema'\]") as e:
    train.train_and_evaluate(config, workdir)
  assert "\n" not in str(e.value) and "moco_v1/moco_v2/byol/moco_v3/dino" in str(e.value)
  assert os.listdir(os.path.join(workdir, "checkpoints")) == ["2"]   # not set aside as unreadable


def test_other_key_changes_get_the_generic_line(tmp_path):
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  ckpt.save(1, {"step": jnp.zeros((), jnp.int32), "params": {"w": jnp.ones(3)}}, None)
  with pytest.raises(ValueError, match=r"^Checkpoint 1 in .* has params keys \[w\], this version expects \[v\]; "
                                       r"the state layout changed; resume with the code and config"):
    ckpt.restore({"step": jnp.zeros((), jnp.int32), "params": {"v": jnp.ones(3)}})
  step, restored, _ = ckpt.restore({"step": jnp.zeros((), jnp.int32), "params": {"w": jnp.zeros(3)}})
  assert step == 1 and float(jax.device_get(restored["params"]["w"]).sum()) == 3.0
  ckpt.close()


def test_committed_step_counts_only_finalised_checkpoints(tmp_path):
  # What a dead peer's survivor reports as "the last checkpoint every host finished": a save whose commit never
  # finished (its tmp directory, as a SIGKILLed peer leaves it) is not the step a restart resumes from.
  ckpt = checkpoint.Checkpointer(str(tmp_path / "ckpt"), async_save=False)
  assert ckpt.committed_step() is None
  ckpt.save(1, {"step": jnp.ones((), jnp.int32)}, None)
  os.makedirs(tmp_path / "ckpt" / "3.orbax-checkpoint-tmp")
  assert ckpt.committed_step() == 1
  ckpt.close()
  assert checkpoint.Checkpointer(str(tmp_path / "missing_later"), async_save=False).committed_step() is None
