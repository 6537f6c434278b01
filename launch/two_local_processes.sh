#!/usr/bin/env bash
# Rehearses a 2-host run on one machine: two processes with 4 fake CPU devices each, joined by jax.distributed
# on localhost (what tests/test_multihost.py checks). Gives the same numbers as one process with 8 devices.
#
#   launch/two_local_processes.sh configs/quickstart.py:runlocal /tmp/cl_jax_two_hosts
set -euo pipefail
CONFIG=${1:-configs/quickstart.py:runlocal}; WORKDIR=${2:-/tmp/cl_jax_two_hosts}; shift $(( $# < 2 ? $# : 2 ))
PORT=${PORT:-12355}
for PID in 0 1; do
  XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \
  CL_JAX_COORDINATOR=localhost:$PORT CL_JAX_NUM_PROCESSES=2 CL_JAX_PROCESS_ID=$PID \
    python -m cl_jax.main --config="$CONFIG" --workdir="$WORKDIR" "$@" &
done
wait
