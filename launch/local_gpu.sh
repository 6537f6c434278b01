#!/usr/bin/env bash
# One machine, all its GPUs (or CPU): the mesh spans every local device; nothing else to set up.
#
#   launch/local_gpu.sh configs/simclr_cifar10.py ~/runs/simclr_cifar10 [--config.batch_size=1024 ...]
#
# Needs `pip install -e '.[tfds]' 'jax[cuda12]'`. Rerun the same command to resume.
set -euo pipefail
if [[ $# -lt 2 ]]; then
  echo "usage: $0 CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
XLA_PYTHON_CLIENT_MEM_FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9} \
  python -m cl_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@"
