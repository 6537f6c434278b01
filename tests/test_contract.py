"""The Method contract: declared schemas reject typos and impossible values, run facts are required, and the
command line turns every config or start-up error into one line with exit status 2."""
import pytest

from cl_jax.methods import RunFacts, get_method
from cl_jax.schema import Field, validate
from configs import quickstart
from tests.harness import build_method, cli_one_line

FACTS = RunFacts(total_steps=10, steps_per_epoch=5, num_train=100, num_devices=1)


def test_validate_fills_defaults_and_names_the_nearest_key():
  schema = {"queue_size": Field(65536, low=1), "momentum": Field(0.999, low=0, high=1)}
  assert validate("method", {"name": "moco_v2", "momentum": 0.99}, schema) == {
      "name": "moco_v2", "queue_size": 65536, "momentum": 0.99}
  with pytest.raises(ValueError, match=r"^method.queue_sise: unknown; did you mean queue_size\? known: momentum, "
                                       r"queue_size\.$"):
    validate("method", {"queue_sise": 1024}, schema)
  with pytest.raises(ValueError, match=r"^method.momentum=1.5: must be <= 1\.$"):
    validate("method", {"momentum": 1.5}, schema)


@pytest.mark.parametrize("name", quickstart.method_names())
def test_every_quickstart_method_validates_and_rejects_a_typo(name):
  c = quickstart.get_config(f"method={name},runlocal")
  method = get_method(c, FACTS)
  assert set(method.hp) == set(type(method).SCHEMA) | {"name"}   # every declared field has its value
  with c.unlocked():
    c.method.base_momentun = 0.5
  with pytest.raises(ValueError, match=r"^method.base_momentun: unknown;.* known: "):
    get_method(c, FACTS)


def test_out_of_range_values_fail_at_construction():
  c = quickstart.get_config("method=simclr,runlocal")
  c.method.temperature = 0.0
  with pytest.raises(ValueError, match=r"method.temperature=0.0: must be > 0"):
    get_method(c, FACTS)
  c = quickstart.get_config("method=byol,runlocal")
  c.method.base_momentum = 1.2
  with pytest.raises(ValueError, match=r"method.base_momentum=1.2: must be <= 1"):
    get_method(c, FACTS)


def test_run_facts_are_required():
  c = quickstart.get_config("method=byol,runlocal")
  with pytest.raises(TypeError):
    get_method(c)   # pylint: disable=no-value-for-parameter
  with pytest.raises(TypeError, match="needs run_facts=RunFacts"):
    get_method(c, None)
  with pytest.raises(ValueError, match="RunFacts.total_steps=0: must be >= 1"):
    RunFacts(total_steps=0, steps_per_epoch=1, num_train=0, num_devices=1)
  method = get_method(c, FACTS)
  assert (method.total_steps, method.steps_per_epoch, method.num_train) == (10, 5, 100)


def test_instdisc_bank_pads_to_the_mesh_not_the_process_devices():
  c = quickstart.get_config("method=instdisc,runlocal")
  c.method.bank_size = 10
  assert build_method(c, num_devices=3).run_facts.num_devices == 3


_BAD_INPUTS = [
    (["--config=configs/quickstart.py:methd=x"], "Unknown config argument 'methd'; known: batch, method"),
    (["--config=configs/quickstart.py:method=simclrr"], "no settings for method 'simclrr'; known: byol"),
    (["--config=configs/nope.py"], "no such config file: configs/nope.py"),
    (["--config=configs/quickstart.py", "--config.eval_every=0"], "config.eval_every: unknown; did you mean"),
    (["--config=configs/quickstart.py", "--config.method.temperatur=0.1"],
     "config.method.temperatur: unknown; did you mean temperature?"),
    (["--config=configs/quickstart.py:runlocal", "--config.method.temperature=0"],
     "method.temperature=0.0: must be > 0"),
    (["--config=configs/quickstart.py:runlocal", "--config.batch_size=0"], "batch_size=0: must be a positive"),
    (["--config=configs/quickstart.py:runlocal", "--config.method.queue_sise=4"], "config.method.queue_sise: unknown"),
]


@pytest.mark.parametrize("args,expected", _BAD_INPUTS, ids=[a[-1] for a, _ in _BAD_INPUTS])
def test_cli_bad_input_is_one_line_and_exit_2(tmp_path, args, expected):
  line = cli_one_line(*args, workdir=tmp_path / "run")
  assert expected in line, line


def test_cli_workdir_that_is_a_file(tmp_path):
  f = tmp_path / "afile"
  f.write_text("")
  line = cli_one_line("--config=configs/quickstart.py:runlocal", f"--workdir={f}")
  assert "is a file; name a directory" in line, line
  assert f.read_text() == ""   # nothing lost
