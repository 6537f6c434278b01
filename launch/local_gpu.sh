#!/usr/bin/env bash
# One machine, all its GPUs (or CPU): the mesh spans every local device; nothing else to set up.
#
#   launch/local_gpu.sh [--dry-run] configs/simclr_cifar10.py ~/runs/simclr_cifar10 [--config.batch_size=1024 ...]
#
# Needs `pip install -e '.[tfds]' 'jax[cuda12]'`. Rerun the same command to resume; Ctrl-C or SIGTERM writes a
# checkpoint first. --dry-run prints the command instead of running it.
set -euo pipefail
DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
if [[ $# -lt 2 ]]; then
  echo "usage: $0 [--dry-run] CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
CONFIG=$1; WORKDIR=$2; shift 2
FRACTION=${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.9}
CMD=(python -m cl_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@")
if [[ $DRY_RUN == 1 ]]; then
  printf 'XLA_PYTHON_CLIENT_MEM_FRACTION=%s ' "$FRACTION"; printf '%q ' "${CMD[@]}" | sed 's/ $//'; echo
  echo "# resume: rerun exactly this command (without --dry-run)"
  exit 0
fi
XLA_PYTHON_CLIENT_MEM_FRACTION=$FRACTION "${CMD[@]}"
