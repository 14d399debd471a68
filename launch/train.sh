#!/usr/bin/env bash
# Runs the same training command on every worker of a TPU VM / pod slice.
#
#   launch/train.sh ZONE NAME CONFIG WORKDIR [TRAIN_FLAGS...]
#   launch/train.sh us-central2-b harmonax-v4 configs/issam.py:data=iharmony4 \
#       gs://my-bucket/harmonax/issam --config.batch_size=64
#
# WORKDIR should be on GCS (gs://...) so that every host writes its part of the
# checkpoints to one place and a recreated VM can resume. Each worker logs to
# ~/harmonax_train.log; the command waits for all workers (Ctrl-C stops only
# the local ssh sessions; use launch/stop.sh to stop training).
# Rerunning the same command resumes from the newest checkpoint in WORKDIR.
set -euo pipefail

if [[ $# -lt 4 ]]; then
  sed -n '2,13p' "$0" >&2
  exit 2
fi
ZONE=$1
NAME=$2
CONFIG=$3
WORKDIR=$4
shift 4
REMOTE_DIR=${REMOTE_DIR:-harmonax}

EXTRA=""
for arg in "$@"; do
  EXTRA+=" $(printf '%q' "${arg}")"
done

# --distributed: jax.distributed.initialize() finds the other hosts itself on
# Cloud TPU; it also starts JAX's preemption notifier, which the trainer polls.
gcloud compute tpus tpu-vm ssh "${NAME}" --zone="${ZONE}" --worker=all --command="
  set -o pipefail
  cd ~/${REMOTE_DIR} && python3 -m harmonax.train \
    --config=$(printf '%q' "${CONFIG}") --workdir=$(printf '%q' "${WORKDIR}") \
    --distributed ${EXTRA} 2>&1 | tee ~/harmonax_train.log
"
