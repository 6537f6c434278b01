#!/usr/bin/env bash
# Runs a cl_jax config on every host of a Cloud TPU pod slice (one process per host; jax.distributed finds the
# other hosts itself when CL_JAX_DISTRIBUTED=1). The workdir must be shared by all hosts (a gs:// bucket).
#
#   launch/tpu_pod.sh my-tpu us-central2-b configs/simclr_imagenet.py gs://my-bucket/runs/simclr_r50 [overrides...]
#
# Rerunning the same command resumes from the latest checkpoint; preemption (SIGTERM) writes one first.
set -euo pipefail
if [[ $# -lt 4 ]]; then
  echo "usage: $0 TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
EXTRA=$(printf ' %q' "$@")

# Ship this checkout (committed files) to every host, so all hosts run exactly the same code.
ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
git -C "$ROOT" archive --format=tar.gz -o /tmp/cl_jax_src.tar.gz HEAD
gcloud compute tpus tpu-vm scp /tmp/cl_jax_src.tar.gz "$TPU_NAME": --zone="$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "
  set -e
  mkdir -p cl_jax && tar -xzf cl_jax_src.tar.gz -C cl_jax && cd cl_jax
  pip install -q -e '.[tfds]' 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html
  CL_JAX_DISTRIBUTED=1 python -m cl_jax.main --config=$CONFIG --workdir=$WORKDIR $EXTRA
"
