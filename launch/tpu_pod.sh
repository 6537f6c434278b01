#!/usr/bin/env bash
# Runs a cl_jax config on every host of a Cloud TPU pod slice (one process per host; jax.distributed finds the
# other hosts itself when CL_JAX_DISTRIBUTED=1). The workdir must be shared by all hosts (a gs:// bucket).
#
#   launch/tpu_pod.sh [--dry-run] my-tpu us-central2-b configs/simclr_imagenet.py gs://my-bucket/runs/simclr_r50 [overrides...]
#
# --dry-run prints the commands (one per line) instead of running them. Rerunning the same command resumes from
# the latest checkpoint; preemption (SIGTERM to any host) makes every host checkpoint at the same step first.
set -euo pipefail
DRY_RUN=0
if [[ ${1:-} == --dry-run ]]; then DRY_RUN=1; shift; fi
if [[ $# -lt 4 ]]; then
  echo "usage: $0 [--dry-run] TPU_NAME ZONE CONFIG WORKDIR [--config.key=value ...]" >&2
  exit 2
fi
TPU_NAME=$1; ZONE=$2; CONFIG=$3; WORKDIR=$4; shift 4
if [[ $WORKDIR != gs://* ]]; then
  echo "warning: WORKDIR $WORKDIR is not a gs:// path; every host of the pod must see the same workdir." >&2
fi
EXTRA=$(printf ' %q' "$@")
[[ $# -eq 0 ]] && EXTRA=""

run() {   # prints the command (--dry-run) or runs it
  if [[ $DRY_RUN == 1 ]]; then printf '%q ' "$@" | sed 's/ $//'; echo; else "$@"; fi
}

ROOT=$(git -C "$(dirname "$0")" rev-parse --show-toplevel)
REMOTE="mkdir -p cl_jax && tar -xzf cl_jax_src.tar.gz -C cl_jax && cd cl_jax"
REMOTE+=" && pip install -q -e '.[tfds]' 'jax[tpu]' -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
REMOTE+=" && CL_JAX_DISTRIBUTED=1 python -m cl_jax.main --config=$CONFIG --workdir=$WORKDIR$EXTRA"
# Ship this checkout (committed files) to every host, so all hosts run exactly the same code.
run git -C "$ROOT" archive --format=tar.gz -o /tmp/cl_jax_src.tar.gz HEAD
run gcloud compute tpus tpu-vm scp /tmp/cl_jax_src.tar.gz "$TPU_NAME": --zone="$ZONE" --worker=all
if [[ $DRY_RUN == 1 ]]; then   # the remote command in double quotes, as a user would type it
  echo "gcloud compute tpus tpu-vm ssh $TPU_NAME --zone=$ZONE --worker=all --command \"$REMOTE\""
else
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all --command "$REMOTE"
fi
if [[ $DRY_RUN == 1 ]]; then
  echo "# resume after a preemption or a crash: rerun exactly this command (without --dry-run)"
fi
