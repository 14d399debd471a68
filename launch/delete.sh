#!/usr/bin/env bash
# Deletes a TPU VM / pod slice (the GCS workdir stays).
#
#   launch/delete.sh ZONE NAME
set -euo pipefail

if [[ $# -ne 2 ]]; then
  sed -n '2,5p' "$0" >&2
  exit 2
fi
ZONE=$1
NAME=$2

gcloud compute tpus tpu-vm delete "${NAME}" --zone="${ZONE}" --quiet
