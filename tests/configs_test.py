"""Every recipe in configs/: its runlocal variant trains a step through the
trainer, is preempted and checkpoints, resumes for a second step, evaluates and
writes an image grid (synthetic data at the config's size, uint8 batches as
the real pipeline's, 8 CPU devices). Recipes with pretrained initialisation
(config.init) start from a state dict."""

import glob
import importlib
import json
import os

from flax import nnx
import jax
import numpy as np
import pytest

from harmonax import checkpoint
from harmonax import evaluation
from harmonax import models
from harmonax import torch_import
from harmonax import train
from harmonax import variables
import fake_family

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), "..", "configs", "*.py"))
                 if not os.path.basename(p).startswith("_"))


def _harmonizer_backbone(config, folder):
  """config.init.harmonizer: a backbone state dict (EfficientNet keys, .npz),
  applied once before step 1. Returns the check of the first run's state."""
  # Random weights of the backbone's shapes (an eager init would compile each op).
  graphdef, shapes = nnx.split(nnx.eval_shape(lambda: models.get_family(
      "harmonizer").create_networks(config, variables.rngs(7)))["harmonizer"].backbone)
  rng = np.random.default_rng(7)
  donor = nnx.merge(graphdef, jax.tree.map(
      lambda x: rng.uniform(0.5, 1.5, x.shape).astype(x.dtype), shapes))
  path = folder / "backbone.npz"
  np.savez(path, **torch_import.to_state_dict(donor))
  config.init.harmonizer = str(path)
  kernel = lambda b: np.asarray(b["_blocks"][0]["_depthwise_conv"]["kernel"])

  def check(state):
    trained = kernel(state["params"]["harmonizer"]["backbone"])
    assert np.abs(trained - kernel(nnx.to_pure_dict(nnx.state(donor)))).max() < 1e-2
    path.unlink()  # Resuming and serving need no pretrained file: it is in the checkpoint.

  return check


PRETRAINED = {"harmonizer": _harmonizer_backbone}


def _preempt_at_step_1_and_reuse_the_update_step(monkeypatch):
  """The first run is preempted after step 1 (as orbax reports a TPU
  maintenance event: the trainer saves and stops); the rerun, with the same
  config, resumes. It reuses the first run's update step as a second process
  would its persistent compilation cache, without tracing it again."""
  make_manager = checkpoint.make_manager

  def preempted_at_step_1(*args, **kwargs):
    manager = make_manager(*args, **kwargs)
    manager.reached_preemption = lambda step: step == 1
    return manager

  built = {}

  def make_train_fns_once(config, steps_per_epoch):
    key = (config.to_json(sort_keys=True), steps_per_epoch)
    if key not in built:
      built[key] = make_train_fns(config, steps_per_epoch)
    return built[key]

  make_train_fns = train.make_train_fns
  monkeypatch.setattr(checkpoint, "make_manager", preempted_at_step_1)
  monkeypatch.setattr(train, "make_train_fns", make_train_fns_once)


def test_every_recipe_is_listed():
  assert {"idih", "issam", "dovenet", "bargainnet", "harmonizer"} <= set(CONFIGS)


@pytest.mark.parametrize("name", CONFIGS)
def test_runlocal_trains_resumes_and_evaluates(name, tmp_path, monkeypatch):
  config = importlib.import_module(f"configs.{name}").get_config("runlocal")
  family = models.get_family(config.model.name)
  # The families read their loss weights from config.loss, not module constants.
  assert "loss" in config and "evals" in config and "metrics" in config.eval
  # A demo model, evaluated at the size it trains at (64x64 for most), not at 256.
  assert config.demo_model and not importlib.import_module(
      f"configs.{name}").get_config("").demo_model
  (data, _, _), = evaluation.eval_sets(config).values()
  assert data.image_size == config.data.image_size < 256
  fake_family.install_synthetic_data(monkeypatch.setattr)
  config.data.num_examples = 16
  check_pretrained = (PRETRAINED[name](config, tmp_path) if name in PRETRAINED
                      else lambda state: None)
  workdir = tmp_path / "run"
  config.update(total_steps=2, eval_every=2, checkpoint_every=1, log_every=1, image_every=2)
  _preempt_at_step_1_and_reuse_the_update_step(monkeypatch)
  first = jax.device_get(train.train_and_evaluate(config, os.fspath(workdir)))
  assert int(first["step"]) == 1
  check_pretrained(first)
  # The same command again: resumes from step 1, then evaluates and draws at step 2.
  second = jax.device_get(train.train_and_evaluate(config, os.fspath(workdir)))
  assert int(second["step"]) == 2
  assert checkpoint.good_steps(workdir / "checkpoints")[:2] == [2, 1]
  lines = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  evals = [l for l in lines if any(k.startswith("eval/") for k in l)]
  assert [l["step"] for l in evals] == [2]
  assert any(k.endswith("/mse") for k in evals[0])
  trained = family.make_optimizers(config, 2)
  train_lines = [l for l in lines if any(k.startswith("loss/") for k in l)]
  assert [l["step"] for l in train_lines] == [1, 2]  # Each step once across the resume.
  for net in trained:
    for key in (f"loss/{net}", f"grad_norm/{net}"):
      assert all(np.isfinite(l[key]) for l in train_lines), key
    assert train_lines[-1][f"lr/{net}"] > 0, net
    moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), first["params"][net],
                         second["params"][net])
    assert max(jax.tree.leaves(moved)) > 0, f"{net} did not train after resuming"
  # The workdir serves inference: eval-mode networks, any input size.
  loaded_config, networks = checkpoint.load_networks(workdir)
  as_json = lambda c: json.loads(c.to_json())  # Tuples come back as lists.
  assert as_json(loaded_config.model) == as_json(config.model)
  rng = np.random.default_rng(0)
  inputs = {k: rng.uniform(0, 1, (1, 40, 56, 1 if k == "mask" else 3)).astype(np.float32)
            for k in family.INPUTS}
  # Jitted: eagerly, each of the network's ops would compile on its own.
  out = np.asarray(nnx.jit(lambda n, i: family.predict(loaded_config, n, i))(
      networks, inputs))
  assert out.shape == (1, 40, 56, 3) and np.isfinite(out).all()


DEMOS = [n for n in CONFIGS if hasattr(importlib.import_module(f"configs.{n}"), "DEMO_STEPS")]


def test_a_demo_recipe_exists():
  assert "harmonizer" in DEMOS  # The README's quick start trains it.


@pytest.mark.parametrize("name", DEMOS)
def test_demo_recipe_is_a_demo_model_scored_on_the_whole_test_split(name):
  # Its network and data are the runlocal variant's, which the test above trains.
  module = importlib.import_module(f"configs.{name}")
  config, runlocal = module.get_config("demo"), module.get_config("runlocal")
  assert config.demo_model and config.total_steps == module.DEMO_STEPS
  # Demo-only model options (not in the paper) are the one difference; harmonizer_test
  # trains a network with them.
  own = {"color_statistics"}
  assert ({k: v for k, v in config.model.items() if k not in own}
          == {k: v for k, v in runlocal.model.items() if k not in own})
  assert config.data.name == "harmonization_composites/sample"
  assert config.data.image_size == runlocal.data.image_size
  # Evaluated once, at the end, on every test image at the training size.
  assert config.evals.val.max_examples == -1 and config.eval_every == module.DEMO_STEPS
  (data, _, _), = evaluation.eval_sets(config).values()
  assert data.image_size == config.data.image_size < 256
