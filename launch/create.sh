#!/usr/bin/env bash
# Creates a Cloud TPU VM (single host, e.g. v5litepod-8) or pod slice (e.g. v4-32).
#
#   launch/create.sh ZONE ACCELERATOR_TYPE NAME [RUNTIME_VERSION] [--spot]
#   launch/create.sh us-central2-b v4-32 harmonax-v4 tpu-ubuntu2204-base --spot
#
# RUNTIME_VERSION defaults to tpu-ubuntu2204-base (JAX brings its own libtpu).
# Extra arguments after it go to `gcloud compute tpus tpu-vm create` unchanged
# (e.g. --spot, --preemptible, --project=P, --reserved).
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,9p' "$0" >&2
  exit 2
fi
ZONE=$1
TYPE=$2
NAME=$3
shift 3
VERSION=tpu-ubuntu2204-base
if [[ $# -gt 0 && $1 != --* ]]; then
  VERSION=$1
  shift
fi

gcloud compute tpus tpu-vm create "${NAME}" \
  --zone="${ZONE}" \
  --accelerator-type="${TYPE}" \
  --version="${VERSION}" \
  "$@"
gcloud compute tpus tpu-vm describe "${NAME}" --zone="${ZONE}" \
  --format='value(state,acceleratorType,networkEndpoints.len())'
