"""Tests for harmonax.checkpoint: save/load of networks and training checkpoints."""

import logging
import sys
from types import SimpleNamespace

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fake_family
from harmonax import checkpoint
from harmonax import cli

fake_family.register()


def _trained_networks(config):
  """Networks whose params and BatchNorm statistics differ from a fresh init."""
  networks = fake_family.create_networks(config, nnx.Rngs(7))
  batch = fake_family.make_train_iterator(config.data, 8, 0)
  example = next(batch)
  networks["generator"].train()
  networks["generator"](jnp.asarray(example["composite"]), jnp.asarray(example["mask"]),
                        jax.random.key(0))
  return networks, example


def _leaves(networks):
  return jax.tree.leaves(checkpoint.network_states(networks))


def _assert_same_state(a, b):
  la, lb = _leaves(a), _leaves(b)
  assert len(la) == len(lb)
  for x, y in zip(la, lb):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_save_and_load_networks_round_trip(tmp_path):
  config = fake_family.get_config(gan=True)
  networks, example = _trained_networks(config)
  checkpoint.save_networks(tmp_path / "model", config, networks)
  assert (tmp_path / "model" / "config.json").exists()

  assert checkpoint.load_networks(tmp_path / "model", return_step=True)[2] is None
  loaded_config, loaded = checkpoint.load_networks(tmp_path / "model")
  assert loaded_config.model.to_dict() == config.model.to_dict()
  assert loaded_config.optim.lr == config.optim.lr
  assert set(loaded) == {"generator", "discriminator"}
  _assert_same_state(networks, loaded)
  # BatchNorm running stats were updated by the forward pass and survive.
  assert not np.allclose(loaded["generator"].norm.mean[...], 0.0)
  # Eval mode: running averages, no dropout.
  assert loaded["generator"].norm.use_running_average
  assert loaded["generator"].dropout.deterministic
  networks["generator"].eval()
  np.testing.assert_allclose(
      fake_family.predict(None, loaded, example),
      fake_family.predict(None, networks, example), atol=1e-6)


def test_save_networks_overwrites(tmp_path):
  config = fake_family.get_config()
  first = fake_family.create_networks(config, nnx.Rngs(1))
  second = fake_family.create_networks(config, nnx.Rngs(2))
  checkpoint.save_networks(tmp_path, config, first)
  checkpoint.save_networks(tmp_path, config, second)
  _assert_same_state(second, checkpoint.load_networks(tmp_path)[1])


def test_save_networks_refuses_a_training_workdir_or_other_files(tmp_path):
  # Into a workdir it replaced config.json and the card, and networks/ then
  # shadowed the run's checkpoints in load_networks.
  config = fake_family.get_config()
  networks = fake_family.create_networks(config, nnx.Rngs(1))
  workdir = tmp_path / "workdir"
  (workdir / "checkpoints" / "2").mkdir(parents=True)
  (workdir / "config.json").write_text("{}")
  with pytest.raises(checkpoint.OutputNotEmptyError, match="workdir is a training workdir"):
    checkpoint.save_networks(workdir, config, networks)
  assert (workdir / "config.json").read_text() == "{}"
  assert not (workdir / "networks").exists()
  # A converted model, evaluated into its own directory, converts again.
  checkpoint.save_networks(tmp_path / "converted", config, networks)
  (tmp_path / "converted" / "eval_iharmony4_all_test_256.md").write_text("| table |")
  checkpoint.save_networks(tmp_path / "converted", config, networks)
  (tmp_path / "photos").mkdir()
  (tmp_path / "photos" / "a.jpg").write_bytes(b"")
  with pytest.raises(checkpoint.OutputNotEmptyError, match=r"not empty \(a.jpg\)"):
    checkpoint.save_networks(tmp_path / "photos", config, networks)


def test_relative_paths_work_for_networks_and_training_checkpoints(tmp_path, monkeypatch):
  # The trainer's default workdir (./workdirs/<config>) is relative; orbax
  # itself only takes absolute paths.
  monkeypatch.chdir(tmp_path)
  config = fake_family.get_config()
  networks = fake_family.create_networks(config, nnx.Rngs(1))
  checkpoint.save_networks("model", config, networks)
  _assert_same_state(networks, checkpoint.load_networks("model")[1])

  checkpoint.save_config("workdir", config)
  manager = checkpoint.make_manager("workdir", keep=1, async_save=False)
  checkpoint.save_train_state(manager, 3, _train_state(networks, config, 1.0), None)
  manager.close()
  assert checkpoint.good_steps("workdir/checkpoints") == [3]
  assert (tmp_path / "workdir" / "checkpoints" / "3").is_dir()


def test_load_networks_errors_name_the_problem(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    checkpoint.load_networks(tmp_path)
  checkpoint.save_config(tmp_path, fake_family.get_config())
  with pytest.raises(FileNotFoundError, match="neither networks/"):
    checkpoint.load_networks(tmp_path)
  # One-line errors in every command (cli.UserError), export's included.
  (tmp_path / "config.json").write_text('{"model": {"name": "nosuchmodel"}}')
  with pytest.raises(cli.UserError, match="Unknown model 'nosuchmodel'; valid model names"):
    checkpoint.load_networks(tmp_path)
  (tmp_path / "config.json").write_text('{"model": ')
  with pytest.raises(cli.UserError, match="config.json is not valid JSON"):
    checkpoint.load_networks(tmp_path)


def test_rng_state_in_a_network_is_rejected():
  class WithRngs(nnx.Module):

    def __init__(self):
      self.rngs = nnx.Rngs(0)

  with pytest.raises(ValueError, match="'bad' holds nnx.RngState"):
    checkpoint.network_states({"bad": WithRngs()})


def _train_state(networks, config, scale):
  params = checkpoint.network_states(networks, nnx.Param)
  params = jax.tree.map(lambda x: x * scale, params)
  rest = checkpoint.network_states(networks, nnx.Not(nnx.Param))
  optimizers = fake_family.make_optimizers(config, 8)
  opt_state = {k: optimizers[k].init(params[k]) for k in optimizers}
  return {"params": params, "rest": rest, "opt_state": opt_state,
          "step": jnp.asarray(0, jnp.int32)}


def test_load_networks_from_a_training_workdir_falls_back_past_corruption(
    tmp_path, caplog):
  config = fake_family.get_config(gan=True)
  networks, _ = _trained_networks(config)
  checkpoint.save_config(tmp_path, config)
  manager = checkpoint.make_manager(tmp_path, keep=3)
  for step, scale in ((2, 2.0), (4, 4.0)):
    checkpoint.save_train_state(manager, step, _train_state(networks, config, scale), None)
  manager.wait_until_finished()
  manager.close()
  assert checkpoint.good_steps(tmp_path / "checkpoints") == [4, 2]

  _, loaded, step = checkpoint.load_networks(tmp_path, return_step=True)
  assert step == 4
  kernel = networks["generator"].conv1.kernel[...]
  np.testing.assert_allclose(loaded["generator"].conv1.kernel[...], 4.0 * kernel)
  np.testing.assert_array_equal(loaded["generator"].norm.mean[...],
                                networks["generator"].norm.mean[...])

  # Truncate every data file of the newest step: load falls back to step 2.
  for path in (tmp_path / "checkpoints" / "4" / "state").rglob("*"):
    if path.is_file() and "metadata" not in path.name:
      path.write_bytes(b"")
  with caplog.at_level(logging.WARNING):
    _, loaded, step = checkpoint.load_networks(tmp_path, return_step=True)
  assert step == 2  # What evaluate records in the model card.
  np.testing.assert_allclose(loaded["generator"].conv1.kernel[...], 2.0 * kernel)
  assert "step 4" in caplog.text and "falling back" in caplog.text


def _wider(config, width):
  config = config.copy_and_resolve_references()
  config.model.width = width
  return config


def test_networks_of_another_config_are_refused_naming_the_leaves(tmp_path):
  # orbax restores numpy arrays at their saved shapes: without the check, a
  # config.json that no longer matches the weights loaded without a word.
  config = fake_family.get_config()
  checkpoint.save_networks(tmp_path / "model", config,
                           fake_family.create_networks(config, nnx.Rngs(1)))
  checkpoint.save_config(tmp_path / "model", _wider(config, 8))
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"shapes differ: generator/conv1/kernel "
                           r"\(3, 3, 4, 4\) \(expected \(3, 3, 4, 8\)\)"):
    checkpoint.load_networks(tmp_path / "model")

  # A training workdir: the mismatch is not taken for corruption (no fallback).
  workdir = tmp_path / "workdir"
  networks = fake_family.create_networks(config, nnx.Rngs(1))
  checkpoint.save_config(workdir, config)
  manager = checkpoint.make_manager(workdir, keep=3, async_save=False)
  for step in (2, 4):
    checkpoint.save_train_state(manager, step, _train_state(networks, config, 1.0), None)
  manager.close()
  checkpoint.save_config(workdir, _wider(config, 8))
  with pytest.raises(checkpoint.CheckpointMismatchError, match="checkpoints/4/state"):
    checkpoint.load_networks(workdir)
  gan = fake_family.get_config(gan=True)
  checkpoint.save_config(workdir, gan)  # A discriminator the checkpoint lacks.
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r"leaves missing \(params/discriminator/"):
    checkpoint.load_networks(workdir)

  # The trainer's restore (before any state is placed) too.
  abstract = jax.eval_shape(lambda: _train_state(
      fake_family.create_networks(_wider(config, 8), nnx.Rngs(1)), config, 1.0))
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype,
                                     sharding=jax.sharding.SingleDeviceSharding(
                                         jax.devices()[0])), abstract)
  manager = checkpoint.make_manager(workdir, keep=3, async_save=False)
  with pytest.raises(checkpoint.CheckpointMismatchError, match="shapes differ"):
    checkpoint.restore_train_state(manager, abstract, None)
  manager.close()
  assert checkpoint.good_steps(workdir / "checkpoints") == [4, 2]  # None quarantined.


def test_check_resumable_refuses_other_configs_and_names_the_fields(tmp_path, caplog):
  config = fake_family.get_config()
  checkpoint.check_resumable(tmp_path, _wider(config, 8))  # Nothing to resume: fine.
  checkpoint.save_config(tmp_path, config)
  checkpoint.check_resumable(tmp_path, _wider(config, 8))  # Config, no checkpoint: fine.
  manager = checkpoint.make_manager(tmp_path, keep=1, async_save=False)
  networks = fake_family.create_networks(config, nnx.Rngs(1))
  checkpoint.save_train_state(manager, 2, _train_state(networks, config, 1.0), None)
  manager.close()

  changed = _wider(config, 8)
  changed.seed = 3
  changed.optim.b1 = 0.5  # A field the saved config lacks.
  with pytest.raises(checkpoint.CheckpointMismatchError) as e:
    checkpoint.check_resumable(tmp_path, changed)
  message = str(e.value)
  for part in ("model.width: 4 -> 8", "seed: 0 -> 3", 'optim.b1: "(absent)" -> 0.5',
               "train in a new --workdir"):
    assert part in message, (part, message)
  assert "total_steps" not in message.split(":", 1)[1].split(". Resume")[0]

  # The batch asked for must match; the one trained with was rounded up to the
  # device count of its run (config.json records both), so it may differ.
  rounded = config.copy_and_resolve_references()
  with rounded.unlocked():
    rounded[checkpoint.REQUESTED_BATCH_SIZE] = 8
  rounded.batch_size = 12
  checkpoint.save_config(tmp_path, rounded)
  checkpoint.check_resumable(tmp_path, config)  # Asks for 8, as that run did.
  other = config.copy_and_resolve_references()
  other.batch_size = 12
  with pytest.raises(checkpoint.CheckpointMismatchError, match="batch_size: 8 -> 12"):
    checkpoint.check_resumable(tmp_path, other)
  # A config.json from before requested_batch_size was recorded: batch 12 trained
  # (8 asked, rounded up); the same run resumes, another batch does not.
  checkpoint.save_config(tmp_path, other)
  checkpoint.check_resumable(tmp_path, rounded)  # Asks 8, trains 12: as it did.
  with pytest.raises(checkpoint.CheckpointMismatchError, match="batch_size: 12 -> 8"):
    checkpoint.check_resumable(tmp_path, config)  # Asks 8, trains 8.
  checkpoint.save_config(tmp_path, config)
  assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []

  # The run's length, logging, saving and evaluation may change; logged.
  longer = config.copy_and_resolve_references()
  longer.total_steps, longer.log_every, longer.evals.val.max_examples = 8, 5, 4
  with caplog.at_level(logging.INFO):
    checkpoint.check_resumable(tmp_path, longer)
  assert "total_steps: 4 -> 8" in caplog.text
  assert "evals.val.max_examples: 16 -> 4" in caplog.text


def test_after_a_restore_only_closed_event_loop_callbacks_are_dropped(tmp_path, monkeypatch):
  # A failed orbax restore leaves tensorstore reads whose callbacks hit its
  # closed event loop: one unraisable traceback each, from the restore on.
  seen = []
  monkeypatch.setattr(sys, "unraisablehook", seen.append)
  (tmp_path / "3" / checkpoint.STATE_ITEM).mkdir(parents=True)

  def corrupt(step):
    raise ValueError(f"DATA_LOSS at step {step}")

  with pytest.raises(FileNotFoundError, match=r"steps tried: \[3\]\); step 3: ValueError"):
    checkpoint._restore_newest(tmp_path, corrupt)  # pylint: disable=protected-access
  hook = sys.unraisablehook
  closed = SimpleNamespace(exc_value=RuntimeError("Event loop is closed"))
  other = SimpleNamespace(exc_value=RuntimeError("something else"))
  hook(closed)
  hook(other)
  assert seen == [other]
  checkpoint._drop_closed_loop_callbacks()  # pylint: disable=protected-access
  assert sys.unraisablehook is hook  # Installed once.


def test_restore_train_state_onto_new_shardings(tmp_path):
  config = fake_family.get_config()
  networks = fake_family.create_networks(config, nnx.Rngs(0))
  state = _train_state(networks, config, 1.0)
  mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = jax.device_put(state, replicated)
  data_iter = fake_family.make_train_iterator(config.data, 8, 0)
  next(data_iter)
  manager = checkpoint.make_manager(tmp_path, keep=2)
  assert checkpoint.restore_train_state(manager, state, data_iter) is None
  checkpoint.save_train_state(manager, 1, state, data_iter)
  expected_next = next(data_iter)
  manager.wait_until_finished()

  # Restore onto 4 of the 8 devices, with a fresh iterator.
  small = jax.make_mesh((4,), ("data",), axis_types=(jax.sharding.AxisType.Explicit,),
                        devices=jax.devices()[:4])
  target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=jax.sharding.NamedSharding(
          small, jax.sharding.PartitionSpec())), state)
  fresh_iter = fake_family.make_train_iterator(config.data, 8, 0)
  restored, step = checkpoint.restore_train_state(manager, target, fresh_iter)
  manager.close()
  assert step == 1
  for x, y in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    assert y.sharding.num_devices == 4
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  np.testing.assert_array_equal(next(fresh_iter)["real"], expected_next["real"])
  # Optimizer states come back as their optax types, not plain containers.
  assert jax.tree.structure(restored) == jax.tree.structure(state)
