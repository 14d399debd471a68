#!/usr/bin/env bash
# Copies built TFDS datasets from GCS to the local disk of every worker.
#
#   launch/copy_data.sh ZONE NAME gs://BUCKET/tensorflow_datasets/DATASET [LOCAL_DIR]
#   launch/copy_data.sh us-central2-b harmonax-v4 gs://my-bucket/tfds/iharmony4
#
# The dataset lands in LOCAL_DIR (default /tmp/tensorflow_datasets) under its
# own name; train with --config.data.data_dir=LOCAL_DIR (an absolute path). Grain
# reads ArrayRecord files with many small random reads, which local disk serves
# far better than GCS.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,10p' "$0" >&2
  exit 2
fi
ZONE=$1
NAME=$2
SOURCE=${3%/}
LOCAL_DIR=${4:-/tmp/tensorflow_datasets}

gcloud compute tpus tpu-vm ssh "${NAME}" --zone="${ZONE}" --worker=all --command="
  set -e
  mkdir -p ${LOCAL_DIR}
  gcloud storage cp -r '${SOURCE}' ${LOCAL_DIR}/
  du -sh ${LOCAL_DIR}/$(basename "${SOURCE}")
"
