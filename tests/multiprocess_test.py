"""The trainer across device and process counts: restore 8 -> 4 devices, 2 processes == 1."""

import os
import shutil
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

import fake_family
from harmonax import checkpoint
from harmonax import train

fake_family.register()
fake_family.enable_compilation_cache()

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
TIMEOUT = 300


def _worker(workdir, total_steps, devices, slurm_env=None, **kwargs):
  command = [sys.executable, WORKER, os.fspath(workdir), f"--total_steps={total_steps}",
             f"--devices={devices}"] + [f"--{k}={v}" for k, v in kwargs.items()]
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  if slurm_env:
    command.append("--slurm")
    env.update(slurm_env)
  return subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _wait(process):
  output, _ = process.communicate(timeout=TIMEOUT)
  assert process.returncode == 0, output[-5000:]


def _params(workdir):
  _, networks = checkpoint.load_networks(workdir)
  return checkpoint.network_states(networks)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """4 steps in this process on 8 devices; the checkpoint of step 2 is kept apart."""
  workdir = tmp_path_factory.mktemp("reference")
  with pytest.MonkeyPatch.context() as mp:
    fake_family.install_synthetic_data(mp.setattr)
    config = fake_family.get_config()
    train.train_and_evaluate(config, os.fspath(workdir))
  return workdir


def _assert_close(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    # Reductions split over other device counts add in another order.
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)


def test_resume_on_a_different_device_count(reference, tmp_path):
  # Step 2 of the 8-device run, resumed on 4 devices up to step 4.
  shutil.copytree(reference / "checkpoints" / "2", tmp_path / "checkpoints" / "2")
  _wait(_worker(tmp_path, total_steps=4, devices=4))
  assert checkpoint.good_steps(tmp_path / "checkpoints") == [4, 2]
  _assert_close(_params(tmp_path), _params(reference))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _slurm_task(index: int, port: int) -> dict[str, str]:
  """The variables srun sets for task `index` of 2 on one node (launch/slurm)."""
  return {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "localhost", "SLURM_NTASKS": "2",
          "SLURM_PROCID": str(index), "SLURM_LOCALID": str(index),
          "JAX_COORDINATOR_PORT": str(port)}


def test_two_processes_match_one(reference, tmp_path):
  # Started as Slurm tasks: jax.distributed.initialize() detects the coordinator,
  # process count and index (launch/slurm's path; the SIGTERM test below passes
  # them explicitly).
  port = _free_port()
  workers = [_worker(tmp_path, total_steps=4, devices=4, slurm_env=_slurm_task(i, port))
             for i in range(2)]
  for process in workers:
    _wait(process)
  steps = checkpoint.good_steps(tmp_path / "checkpoints")
  assert steps == [4, 2]
  # Each process saved its own shard of the data iterator.
  assert sorted(p.name for p in (tmp_path / "checkpoints" / "4" / "data_iter").iterdir()
                if p.suffix == ".json") == ["process_0-of-2.json", "process_1-of-2.json"]
  _assert_close(_params(tmp_path), _params(reference))


def test_sigterm_on_one_host_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
  port = _free_port()
  # Only process 1 gets SIGTERM (at its 3rd batch): JAX's preemption service
  # makes both processes stop, and save, at one agreed step.
  workers = [_worker(tmp_path, total_steps=40, devices=4, num_processes=2, process_id=i,
                     port=port, checkpoint_every=100, sigterm_at_batch=3 if i else 0)
             for i in range(2)]
  for process in workers:
    _wait(process)
  steps = checkpoint.good_steps(tmp_path / "checkpoints")
  assert len(steps) == 1 and 3 <= steps[0] < 40, steps
