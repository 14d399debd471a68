"""Data parallelism over a 1-D ('data',) device mesh, on one host or many.

The batch is split over 'data' and the train state is replicated. Each host
feeds its own rows (its shard of the input pipeline); `global_batch` turns
them into global `jax.Array`s.
"""

import math
from typing import Any

from absl import logging
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

PyTree = Any


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None) -> None:
  """Starts JAX's multi-process runtime; call before any other JAX work.

  On a TPU pod slice (and under Slurm / Open MPI) every argument is detected
  automatically. Elsewhere (e.g. several CPU processes) pass all three.
  """
  kwargs = {}
  if coordinator_address:
    if num_processes is None or process_id is None:
      raise ValueError(
          "With coordinator_address, num_processes and process_id are needed too; "
          f"got num_processes={num_processes}, process_id={process_id}")
    kwargs = dict(coordinator_address=coordinator_address,
                  num_processes=num_processes, process_id=process_id)
  jax.distributed.initialize(**kwargs)
  logging.info("Distributed JAX: process %d of %d, %d local of %d devices",
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())


def make_mesh(devices: list[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh ('data',) over all devices (or `devices`), with explicit axes."""
  if devices is None:
    return jax.make_mesh((jax.device_count(),), ("data",),
                         axis_types=(AxisType.Explicit,))
  return jax.make_mesh((len(devices),), ("data",), axis_types=(AxisType.Explicit,),
                       devices=devices)


def replicated(mesh: Mesh) -> NamedSharding:
  """Every device holds the whole array (train state, rng, metrics)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'."""
  return NamedSharding(mesh, P("data"))


def fit_batch_size(batch_size: int, mesh: Mesh) -> int:
  """The global batch to train with: `batch_size`, rounded up to split evenly.

  Every device must get the same number of rows, and every host too. A config's
  batch_size is the paper's global batch (1 for DoveNet and BargainNet); when it
  does not divide over the devices (e.g. batch 1 on a TPU VM's 4 or 8 chips) it
  is rounded up to the next multiple of the device count, with a warning naming
  both numbers: the run takes more examples per step, fewer steps per epoch,
  and batch statistics over the larger batch. Run on fewer devices to keep the
  exact batch (docs/architecture.md).

  Raises:
    ValueError: if batch_size is not positive.
  """
  if batch_size <= 0:
    raise ValueError(f"config.batch_size={batch_size} must be positive")
  devices, hosts = mesh.size, jax.process_count()
  multiple = math.lcm(devices, hosts)
  fitted = -(-batch_size // multiple) * multiple
  if fitted != batch_size:
    logging.warning(
        "config.batch_size=%d does not split evenly over %d devices: training with "
        "a global batch of %d (%d per device) instead, so with fewer steps per "
        "epoch and batch statistics over %d examples. To train with batch %d "
        "exactly, make fewer devices visible (a count that divides it, e.g. "
        "CUDA_VISIBLE_DEVICES=0 for one GPU).",
        batch_size, devices, fitted, fitted // devices, fitted, batch_size)
  return fitted


def global_batch(local_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """This host's rows -> global batch-sharded arrays (rows ordered by process)."""
  sharding = batch_sharded(mesh)
  out = {}
  for key, value in local_batch.items():
    value = np.asarray(value)
    if value.dtype == object:
      raise ValueError(
          f"Batch key {key!r} is host-side metadata (dtype object); training "
          "batches must hold numeric arrays only")
    out[key] = jax.make_array_from_process_local_data(sharding, value)
  return out


def abstract_like(tree: PyTree, sharding: jax.sharding.Sharding) -> PyTree:
  """ShapeDtypeStructs of `tree`'s leaves with `sharding` (a restore target)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def local_rows(array: jax.Array) -> np.ndarray:
  """The rows of a batch-sharded global array that live on this host, in order."""
  shards = {}
  for shard in array.addressable_shards:
    start = shard.index[0].start or 0
    shards.setdefault(start, shard.data)  # Replicas hold the same rows.
  return np.concatenate([np.asarray(shards[k]) for k in sorted(shards)], axis=0)
