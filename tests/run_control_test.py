"""The trainer as a process: workdir lock, Ctrl-C, kill -9 and its grain workers.

Each test runs tests/train_worker.py (the fake family on synthetic data, grain
worker processes set up as the real input pipeline's) in a subprocess.
"""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

import fake_family
from harmonax import checkpoint
from harmonax import train
from harmonax import workdir_lock

fake_family.register()

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_worker.py")
TIMEOUT = 300


class Trainer:
  """train_worker.py in its own process group (as a shell starts a command)."""

  def __init__(self, workdir, *args: str):
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    self.process = subprocess.Popen(
        [sys.executable, WORKER, os.fspath(workdir), "--devices=2", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    self.lines: list[str] = []
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for line in self.process.stdout:
      self.lines.append(line)

  @property
  def output(self) -> str:
    return "".join(self.lines)

  def wait_for(self, text: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while text not in self.output:
      assert self.process.poll() is None, f"exited early:\n{self.output[-5000:]}"
      assert time.monotonic() < deadline, f"no {text!r} in:\n{self.output[-5000:]}"
      time.sleep(0.2)

  def wait(self) -> int:
    self.process.wait(timeout=TIMEOUT)
    self._reader.join(timeout=10)
    return self.process.returncode


def _children(pid: int) -> list[int]:
  """Pids whose parent is `pid` (from /proc)."""
  found = []
  for name in os.listdir("/proc"):
    if not name.isdigit():
      continue
    try:
      with open(f"/proc/{name}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    except OSError:
      continue
    if int(fields[1]) == pid:
      found.append(int(name))
  return found


def _alive(pid: int) -> bool:
  """True unless the process is gone or a zombie (dead, waiting to be reaped)."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rpartition(")")[2].split()[0] != "Z"
  except OSError:
    return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_kill_9_of_the_trainer_takes_its_grain_workers_along(tmp_path):
  trainer = Trainer(tmp_path, "--total_steps=100000", "--checkpoint_every=100000",
                    "--num_workers=2")
  try:
    trainer.wait_for("[step 2/")
    children = _children(trainer.process.pid)
    workers = [pid for pid in children if _alive(pid)]
    assert len(workers) >= 2, (children, trainer.output[-3000:])  # + resource tracker
  finally:
    trainer.process.kill()
  trainer.wait()
  deadline = time.monotonic() + 10
  while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
    time.sleep(0.2)
  assert not [pid for pid in workers if _alive(pid)], "workers outlived the trainer"


def test_ctrl_c_saves_a_checkpoint_and_stops_quietly(tmp_path):
  trainer = Trainer(tmp_path, "--total_steps=100000", "--checkpoint_every=100000",
                    "--num_workers=2")
  try:
    trainer.wait_for("[step 2/")
    # What a terminal does on Ctrl-C: SIGINT to the whole foreground group,
    # grain workers included.
    os.killpg(trainer.process.pid, signal.SIGINT)
    assert trainer.wait() == 0, trainer.output[-5000:]
  finally:
    if trainer.process.poll() is None:
      trainer.process.kill()
  output = trainer.output
  assert "Ctrl-C: saving a checkpoint" in output
  assert "Traceback" not in output and "leaked" not in output, output[-5000:]
  steps = checkpoint.good_steps(tmp_path / "checkpoints")
  assert len(steps) == 1 and steps[0] >= 2, steps
  assert f"Stopped at step {steps[0]}; checkpoint saved" in output


def test_a_second_ctrl_c_aborts_without_saving(tmp_path):
  # Both SIGINTs arrive while step 3's batch is read: the first asks for a
  # checkpoint after the step, the second aborts before it is saved.
  trainer = Trainer(tmp_path, "--total_steps=100", "--checkpoint_every=100",
                    "--sigint_at_batch=3", "--sigints=2")
  assert trainer.wait() == 130, trainer.output[-5000:]
  assert trainer.output.rstrip().endswith("interrupted")
  assert "Traceback" not in trainer.output, trainer.output[-5000:]
  assert checkpoint.good_steps(tmp_path / "checkpoints") == []


def test_a_second_trainer_on_a_live_workdir_refuses(tmp_path, monkeypatch):
  # A live holder: another process holding the lock, as a running trainer does.
  holder = subprocess.Popen(
      [sys.executable, "-c",
       "import sys, time\nfrom harmonax import workdir_lock\n"
       "with workdir_lock.hold(sys.argv[1]):\n  print('locked', flush=True)\n"
       "  time.sleep(300)\n", os.fspath(tmp_path)],
      stdout=subprocess.PIPE, text=True,
      cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  try:
    assert holder.stdout.readline().strip() == "locked"
    fake_family.install_synthetic_data(monkeypatch.setattr)
    with pytest.raises(workdir_lock.WorkdirBusyError) as info:
      train.train_and_evaluate(fake_family.get_config(), os.fspath(tmp_path))
    message = str(info.value)
    assert "\n" not in message and f"pid {holder.pid}" in message, message
    assert not (tmp_path / "config.json").exists()  # Refused before touching anything.
  finally:
    holder.kill()  # As kill -9: the lock must not stay behind.
    holder.wait()
  with workdir_lock.hold(tmp_path):
    pass
