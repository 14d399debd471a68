#!/usr/bin/env bash
# Stops training on every worker with SIGTERM: the trainer saves a checkpoint
# at a step all hosts agree on and exits; rerun launch/train.sh to resume.
#
#   launch/stop.sh ZONE NAME
set -euo pipefail

if [[ $# -ne 2 ]]; then
  sed -n '2,6p' "$0" >&2
  exit 2
fi
ZONE=$1
NAME=$2

gcloud compute tpus tpu-vm ssh "${NAME}" --zone="${ZONE}" --worker=all \
  --command="pkill -TERM -f '^python3 -m harmonax.train' || true"
