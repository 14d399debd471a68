"""One-line errors: harmonax.cli, and the command lines' answers to routine mistakes."""

import os
import subprocess
import sys

from absl import app
from absl import flags
from absl.testing import flagsaver
from flax import nnx
import numpy as np
import pytest

from harmonax import checkpoint
from harmonax import cli
from harmonax import models
from harmonax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_guarded_prints_routine_errors_as_one_line(capsys):
  def fails(error):
    def main(argv):
      del argv
      raise error
    return main

  assert cli.guarded(fails(cli.UserError("no such workdir: w")))([]) == 1
  assert capsys.readouterr().err == "error: no such workdir: w\n"
  assert cli.guarded(fails(FileNotFoundError("x.pth")), (FileNotFoundError,))([]) == 1
  assert capsys.readouterr().err == "error: x.pth\n"
  assert cli.guarded(fails(app.UsageError("--output is required")))([]) == 1
  assert capsys.readouterr().err == "error: --output is required (--help for usage)\n"
  assert cli.guarded(fails(KeyboardInterrupt()))([]) == cli.EXIT_INTERRUPTED
  assert capsys.readouterr().err == "interrupted\n"
  with pytest.raises(ZeroDivisionError):  # A bug: the traceback stays.
    cli.guarded(fails(ZeroDivisionError()))([])
  assert cli.guarded(lambda argv: 3)([]) == 3
  cli._define_verbose()  # pylint: disable=protected-access
  with flagsaver.flagsaver(verbose=True), pytest.raises(cli.UserError):
    cli.guarded(fails(cli.UserError("shown with its traceback")))([])
  assert "verbose" in flags.FLAGS


def _cli(*args: str) -> subprocess.CompletedProcess:
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def _assert_one_line_error(result: subprocess.CompletedProcess, *expected: str) -> None:
  assert result.returncode == 1, result.stderr[-3000:]
  assert "Traceback" not in result.stderr, result.stderr[-3000:]
  errors = [l for l in result.stderr.splitlines() if l.startswith("error: ")]
  assert len(errors) == 1, result.stderr[-3000:]
  for text in expected:
    assert text in result.stderr, result.stderr[-3000:]


def test_evaluate_missing_workdir_and_unbuilt_dataset(tmp_path):
  _assert_one_line_error(
      _cli("harmonax.evaluate", f"--workdir={tmp_path / 'none'}"), "config.json not found")
  from configs import issam  # pylint: disable=g-import-not-at-top
  config = issam.get_config("runlocal")
  networks = models.get_family(config.model.name).create_networks(config, nnx.Rngs(0))
  checkpoint.save_networks(tmp_path / "ckpt", config, networks)
  result = _cli("harmonax.evaluate", f"--checkpoint={tmp_path / 'ckpt'}",
                "--dataset=iharmony4/hcoco", f"--data_dir={tmp_path / 'data'}")
  _assert_one_line_error(result, "is not built", "python -m data_builders.build iharmony4/hcoco")


def test_convert_missing_file_and_mismatched_state_dict(tmp_path):
  _assert_one_line_error(
      _cli("harmonax.convert", "--model=issam", f"--torch_checkpoint={tmp_path / 'x.pth'}",
           f"--output={tmp_path / 'out'}"), "Checkpoint file not found")
  np.savez(tmp_path / "other.npz", **{"some.weight": np.zeros((2, 2), np.float32)})
  result = _cli("harmonax.convert", "--model=issam",
                f"--torch_checkpoint={tmp_path / 'other.npz'}", f"--output={tmp_path / 'out'}")
  _assert_one_line_error(result, "State dict does not match", "unexpected keys (1): some.weight")
  assert not (tmp_path / "out").exists()


def test_train_on_a_busy_workdir_refuses_in_one_line(tmp_path):
  with workdir_lock.hold(tmp_path):
    result = _cli("harmonax.train", "--config=configs/issam.py:runlocal",
                  f"--workdir={tmp_path}")
  _assert_one_line_error(result, f"workdir {tmp_path} is in use by another trainer "
                                 f"(pid {os.getpid()} on")


def test_a_mistyped_config_field_is_one_line_with_the_hint():
  # Raised while absl parses the flags, before main (outside cli.guarded).
  result = _cli("harmonax.train", "--config=configs/issam.py:runlocal", "--config.modle.ch=3")
  _assert_one_line_error(result, "error: bad flag: no such config field 'modle'",
                         'Did you mean "model"', "(in --config.modle.ch)")
  result = _cli("harmonax.train", "--config=configs/issam.py:runlocal", "--config.model.chh=3")
  _assert_one_line_error(result, "no such config field 'chh'", 'Did you mean "ch"')


def test_a_bug_in_a_config_file_keeps_its_traceback(tmp_path):
  (tmp_path / "bad.py").write_text(
      "import ml_collections\n"
      "def get_config():\n"
      "  c = ml_collections.ConfigDict({'model': {}})\n"
      "  return c.model.undefined_thing\n")
  result = _cli("harmonax.train", f"--config={tmp_path / 'bad.py'}", "--config.model.x=1")
  assert result.returncode != 0 and "Traceback" in result.stderr
  assert "undefined_thing" in result.stderr and "error: bad flag" not in result.stderr


def test_configs_that_cannot_train_are_refused_before_the_workdir_is_touched(tmp_path):
  import fake_family  # pylint: disable=g-import-not-at-top
  from harmonax import train  # pylint: disable=g-import-not-at-top
  fake_family.register()
  cases = {
      ("data", "image_size", -5): r"config.data.image_size=-5: expected a positive integer",
      (None, "batch_size", 0): r"config.batch_size=0: expected a positive integer",
      (None, "total_steps", -1): r"config.total_steps=-1: expected an integer >= 0",
      ("model", "name", "nope"): r"config.model \('nope'\) cannot be built: .*nope",
  }
  for (block, field, value), message in cases.items():
    config = fake_family.get_config()
    (config[block] if block else config)[field] = value
    with pytest.raises(cli.UserError, match=message):
      train.train_and_evaluate(config, os.fspath(tmp_path / "w"))
    assert not (tmp_path / "w").exists()

  (tmp_path / "file").write_text("")
  with pytest.raises(workdir_lock.WorkdirUnusableError,
                     match=f"cannot use {tmp_path / 'file' / 'w'} as the workdir"):
    with workdir_lock.hold(tmp_path / "file" / "w"):
      pass


def test_a_workdir_without_checkpoints_says_to_train_first(tmp_path):
  from configs import issam  # pylint: disable=g-import-not-at-top
  checkpoint.save_config(tmp_path, issam.get_config("runlocal"))
  (tmp_path / "checkpoints").mkdir()
  with pytest.raises(FileNotFoundError, match="yet: its run saved none.*harmonax.train first"):
    checkpoint.load_networks(tmp_path)


def test_data_dir_is_settable_from_the_command_line(tmp_path):
  # launch/README.md passes --config.data.data_dir=gs://...: a plain None
  # default made config_flags refuse it ("Type NoneType ... not supported").
  # (batch_size=0 stops the run right after the flags parsed.)
  result = _cli("harmonax.train", "--config=configs/issam.py:runlocal",
                f"--config.data.data_dir={tmp_path}", "--config.batch_size=0",
                f"--workdir={tmp_path / 'w'}")
  _assert_one_line_error(result, "config.batch_size=0: expected a positive integer")
