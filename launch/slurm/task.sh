#!/usr/bin/env bash
# One Slurm task of launch/slurm/train.sbatch: picks this task's GPUs and runs
# the trainer with --distributed (jax.distributed.initialize() reads SLURM_*).
#
#   bash launch/slurm/task.sh CONFIG WORKDIR [TRAIN_FLAGS...]   (run by srun)
set -euo pipefail

if [[ $# -lt 2 ]]; then
  sed -n '2,5p' "$0" >&2
  exit 2
fi
CONFIG=$1
WORKDIR=$2
shift 2

if [[ -n ${VENV:-} ]]; then
  # shellcheck disable=SC1091
  source "${VENV}/bin/activate"
fi

# JAX's Slurm detection gives each task the one GPU numbered SLURM_LOCALID among
# those it sees: right for one task per GPU with every GPU of the node visible.
# Otherwise say which devices to use (indices into CUDA_VISIBLE_DEVICES).
IFS=, read -r -a VISIBLE <<< "${CUDA_VISIBLE_DEVICES:-}"
if [[ ${SLURM_NTASKS_PER_NODE:-} == 1 && ${#VISIBLE[@]} -gt 1 ]]; then
  JAX_LOCAL_DEVICE_IDS=$(seq -s, 0 $((${#VISIBLE[@]} - 1)))  # One task per node.
  export JAX_LOCAL_DEVICE_IDS
elif [[ ${#VISIBLE[@]} == 1 ]]; then
  export JAX_LOCAL_DEVICE_IDS=0  # Slurm bound one GPU to this task (--gpus-per-task).
fi
export PYTHONUNBUFFERED=1

exec "${PYTHON:-python3}" -m harmonax.train --config="${CONFIG}" --workdir="${WORKDIR}" \
  --distributed "$@"
