"""Trains a config: `python -m cl_jax.main --config=configs/quickstart.py --workdir=/tmp/run`."""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/quickstart.py:method=simclr.",
                                lock_config=True)
flags.DEFINE_string("workdir", None, "Directory for checkpoints, metrics and TensorBoard; reruns resume.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv: list[str]) -> None:
  del argv
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)   # keep orbax/absl chatter out of the progress lines
  from cl_jax import train  # pylint: disable=g-import-not-at-top
  try:
    train.train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except (ValueError, FloatingPointError, FileNotFoundError) as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
