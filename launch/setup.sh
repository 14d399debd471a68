#!/usr/bin/env bash
# Copies this checkout to every worker of a TPU VM / pod slice and installs it
# there with the TPU extra (jax[tpu]).
#
#   launch/setup.sh ZONE NAME [REMOTE_DIR]
#
# REMOTE_DIR (default: harmonax, in each worker's home) receives the files that
# git tracks, so every host runs exactly this commit's code.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,8p' "$0" >&2
  exit 2
fi
ZONE=$1
NAME=$2
REMOTE_DIR=${3:-harmonax}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

ARCHIVE=$(mktemp --suffix=.tar.gz)
trap 'rm -f "${ARCHIVE}"' EXIT
git -C "${ROOT}" archive --format=tar.gz --output="${ARCHIVE}" HEAD
echo "Packed $(git -C "${ROOT}" rev-parse --short HEAD) into ${ARCHIVE}"

gcloud compute tpus tpu-vm scp "${ARCHIVE}" "${NAME}:harmonax.tar.gz" \
  --zone="${ZONE}" --worker=all
gcloud compute tpus tpu-vm ssh "${NAME}" --zone="${ZONE}" --worker=all --command="
  set -e
  rm -rf ~/${REMOTE_DIR} && mkdir -p ~/${REMOTE_DIR}
  tar -xzf ~/harmonax.tar.gz -C ~/${REMOTE_DIR}
  cd ~/${REMOTE_DIR}
  python3 -m pip install -q --upgrade pip
  python3 -m pip install -q -e '.[tpu]'
  python3 -c 'import jax; print(jax.process_index(), jax.local_device_count(), jax.devices()[0].platform)'
"
