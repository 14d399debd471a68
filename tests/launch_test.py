"""launch/slurm: the sbatch template and its per-task script, with stand-in srun/scontrol.

The trainer's side of a Slurm run (jax.distributed.initialize() detecting
everything from SLURM_* variables) is covered by multiprocess_test.py's
2-process run.
"""

import os
import signal
import subprocess
import time

import pytest

SLURM = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "launch", "slurm")
SBATCH = os.path.join(SLURM, "train.sbatch")
TASK = os.path.join(SLURM, "task.sh")

# srun stand-in: runs its command as SLURM_NTASKS local tasks, passes SIGTERM on.
FAKE_SRUN = r"""#!/usr/bin/env bash
echo "srun $*"
while [[ $1 == --* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i "$@" &
  pids+=($!)
done
trap 'kill -TERM "${pids[@]}"' TERM
for pid in "${pids[@]}"; do
  while kill -0 "$pid" 2>/dev/null; do wait "$pid"; done
done
"""
# python stand-in: prints what the trainer would get; with SLEEP, waits for SIGTERM.
FAKE_PYTHON = r"""#!/usr/bin/env bash
echo "task $SLURM_PROCID ids=${JAX_LOCAL_DEVICE_IDS:-unset} venv=${VIRTUAL_ENV:-none} $*"
if [[ -n ${SLEEP:-} ]]; then
  trap 'echo "task $SLURM_PROCID saved and stopped"; exit 0' TERM
  echo "task $SLURM_PROCID training"
  while true; do sleep 0.1; done
fi
"""


@pytest.fixture
def env(tmp_path):
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name, text in (("srun", FAKE_SRUN), ("python", FAKE_PYTHON),
                     ("scontrol", '#!/usr/bin/env bash\necho "scontrol $*"\n')):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  venv = tmp_path / "venv"
  (venv / "bin").mkdir(parents=True)
  (venv / "bin" / "activate").write_text(f"export VIRTUAL_ENV={venv}\n")
  return {"PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
          "SLURM_JOB_ID": "77", "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2",
          "SLURM_SUBMIT_DIR": os.path.dirname(os.path.dirname(SLURM)),
          "CUDA_VISIBLE_DEVICES": "0,1", "VENV": str(venv), "HOME": str(tmp_path)}


def test_scripts_parse_and_print_usage():
  for script in (SBATCH, TASK):
    subprocess.run(["bash", "-n", script], check=True)
    usage = subprocess.run(["bash", script], capture_output=True, text=True)
    assert usage.returncode == 2 and "CONFIG WORKDIR" in usage.stderr, script
  with open(SBATCH) as f:
    directives = [l for l in f if l.startswith("#SBATCH")]
  assert any("--signal=B:TERM@" in l for l in directives)
  assert any("--requeue" in l for l in directives)


def test_every_task_runs_the_distributed_trainer(env):
  out = subprocess.run(
      ["bash", SBATCH, "configs/issam.py:data=iharmony4", "/shared/w", "--config.batch_size=64"],
      env=env, capture_output=True, text=True, check=True, timeout=60).stdout
  assert "srun --kill-on-bad-exit=1" in out
  for i in range(2):
    # All GPUs of the node visible, one task per GPU: JAX picks SLURM_LOCALID's.
    assert (f"task {i} ids=unset venv={env['VENV']} -m harmonax.train "
            "--config=configs/issam.py:data=iharmony4 --workdir=/shared/w --distributed "
            "--config.batch_size=64") in out, out
  assert "scontrol" not in out  # Finished: no requeue.


@pytest.mark.parametrize("per_node,visible,expected", [
    ("1", "0,1,2,3", "0,1,2,3"),  # One task per node sees all its GPUs.
    ("4", "2", "0"),  # Slurm bound one GPU to the task.
    ("4", "0,1,2,3", "unset"),  # One task per GPU: JAX uses SLURM_LOCALID.
])
def test_task_devices(env, per_node, visible, expected):
  env = dict(env, SLURM_NTASKS_PER_NODE=per_node, CUDA_VISIBLE_DEVICES=visible,
             SLURM_PROCID="0")
  out = subprocess.run(["bash", TASK, "c.py", "w"], env=env, capture_output=True,
                       text=True, check=True).stdout
  assert out.startswith(f"task 0 ids={expected} "), out


@pytest.mark.parametrize("signum,requeued", [(signal.SIGTERM, True), (signal.SIGUSR1, False)])
def test_preemption_reaches_every_trainer_then_requeues(env, signum, requeued):
  job = subprocess.Popen(["bash", SBATCH, "c.py", "w"], env=dict(env, SLEEP="1"),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  lines = []
  deadline = time.monotonic() + 30
  while sum("training" in l for l in lines) < 2:
    assert time.monotonic() < deadline, lines
    lines.append(job.stdout.readline())
  job.send_signal(signum)  # What Slurm sends the batch shell.
  out = "".join(lines) + job.communicate(timeout=30)[0]
  assert job.returncode == 0, out
  assert "task 0 saved and stopped" in out and "task 1 saved and stopped" in out
  assert ("scontrol requeue 77" in out) == requeued, out
