"""Trains a config: `python -m cl_jax.main --config=configs/quickstart.py --workdir=/tmp/run`.

Every config or start-up error (a typo'd key, an unknown config argument, a missing file, an impossible value)
is one line on stderr, `error: ...`, and exit status 2; `--verbose` or CL_JAX_DEBUG=1 shows the traceback.
"""
from __future__ import annotations

import importlib.util
import keyword
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from cl_jax.schema import unknown_key_message

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/quickstart.py:method=simclr.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard; reruns resume.")
flags.DEFINE_bool("verbose", False, "Show the traceback of a start-up error (also CL_JAX_DEBUG=1).")

USAGE_ERROR = 2   # exit status of a config or start-up error


def _debug(argv: list[str]) -> bool:
  return os.environ.get("CL_JAX_DEBUG", "") not in ("", "0") or "--verbose" in argv


def _innermost(e: BaseException) -> BaseException:
  while (e.__cause__ or e.__context__) is not None:
    e = e.__cause__ or e.__context__
  return e


def _flag_value(argv: list[str], name: str) -> str | None:
  for i, a in enumerate(argv):
    if a.startswith(f"{name}="):
      return a.split("=", 1)[1]
    if a == name and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _unknown_override(argv: list[str]) -> str | None:
  """For `--config.a.b=v` naming a key the config does not have: the one-line unknown-key message."""
  spec = _flag_value(argv, "--config")
  if not spec:
    return None
  path, _, arg = spec.partition(":")
  try:
    module_spec = importlib.util.spec_from_file_location("cl_jax_cli_config", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    config = module.get_config(arg or None)
  except Exception:  # noqa: BLE001 - the original error is reported instead
    return None
  for a in argv:
    if not a.startswith("--config."):
      continue
    node, section = config, "config"
    for key in a[len("--config."):].split("=", 1)[0].split("."):
      if not hasattr(node, "keys"):
        break
      if key not in node:
        return unknown_key_message(section, key, list(node.keys()))
      node, section = node[key], f"{section}.{key}"
  return None


def _keyword_override(argv: list[str]) -> str | None:
  """For `--config.augment.global.x=v`: absl parses the path as Python, where `global` is a keyword."""
  for a in argv:
    if a.startswith("--config."):
      path, eq, value = a[len("--config."):].partition("=")
      keys = path.split(".")
      bad = [k for k in keys if keyword.iskeyword(k)]
      if bad:
        fixed = ".".join(keys[:keys.index(bad[0])]) + f"['{bad[0]}']" + "".join(
            f".{k}" for k in keys[keys.index(bad[0]) + 1:])
        return (f"--config.{path}: '{bad[0]}' is a Python keyword, which absl cannot parse in a key path; write "
                f"--config.{fixed}{eq}{value}")
  return None


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(USAGE_ERROR)


def parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing plus loading the config and its overrides; a failure is one line and exit status 2."""
  spec = _flag_value(argv, "--config")
  if spec and not os.path.isfile(spec.partition(":")[0]):
    _fail(f"no such config file: {spec.partition(':')[0]}; configs are in configs/, e.g. "
          "--config=configs/quickstart.py.")
  try:
    rest = flags.FLAGS(argv)
    flags.FLAGS.config.keys()   # loads the file and applies the --config.x overrides
    if flags.FLAGS.workdir is None:
      raise ValueError("--workdir is required, e.g. --workdir=/tmp/cl_jax_run.")
    return rest
  except SystemExit:
    raise
  except Exception as e:  # noqa: BLE001 - turned into one line
    if _debug(argv):
      raise
    inner = _innermost(e)
    message = _keyword_override(argv) or _unknown_override(argv)
    if message is None:
      if isinstance(inner, FileNotFoundError):
        message = f"no such file: {inner.filename}; check the --config path."
      else:
        message = " ".join(str(inner).strip("'\"").split()) or type(inner).__name__
    _fail(message)
    raise  # unreachable


def main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # keep orbax/absl chatter out of the progress lines
  from cl_jax import train  # pylint: disable=g-import-not-at-top
  config, workdir = flags.FLAGS.config, flags.FLAGS.workdir
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    _fail(f"--workdir={workdir} is a file; name a directory (new, or a run's workdir to resume).")
  try:
    train.train_and_evaluate(config, workdir)
  except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
    if flags.FLAGS.verbose or _debug([]):
      raise
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1 if isinstance(e, FloatingPointError) else USAGE_ERROR)   # a NaN in training is not a usage error


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
