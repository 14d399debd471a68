"""Harmonizer family: regressor, losses, full-resolution prediction, training
pairs and weight conversion (tests/configs_test.py trains the runlocal recipe
through the trainer, from a pretrained backbone)."""

import ast
import functools
import os

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import scenes
from configs import harmonizer as harmonizer_config
from harmonax import filters
from harmonax import models
from harmonax import torch_import
from harmonax import variables
from harmonax.models import harmonizer
from harmonax.models import layers
import recipes

KEYS = os.path.join(os.path.dirname(__file__), "data", "torch_keys",
                    "harmonizer_keys.txt")


def _official_shapes():
  shapes = {}
  with open(KEYS) as f:
    for line in f:
      if line.startswith("#") or not line.strip():
        continue
      key, shape = line.split("\t")[:2]
      if not key.endswith("num_batches_tracked"):
        shapes[key] = tuple(ast.literal_eval(shape))
  return shapes


@pytest.fixture(scope="module")
def nets():
  """The runlocal network (tiny backbone, arguments at 64x64), eval mode, as the
  paper's: the official random regressor (runlocal's identity_init would give
  arguments within ~1e-3 of 0, and the tests below need them to differ across
  images) and no color statistics."""
  config = recipes.official_network(harmonizer_config.get_config("runlocal"))
  networks = _create(config)
  networks["harmonizer"].eval()
  return networks


# Initialisation and the regressor jitted: eagerly, each op would compile on its own.
_regress = nnx.jit(lambda net, composite, mask: net(composite, mask))


def _create(config):
  return nnx.jit(lambda: harmonizer.create_networks(config, variables.rngs(0)))()


def _batch(b=8, size=64, seed=0):
  rng = np.random.default_rng(seed)
  mask = np.zeros((b, size, size, 1), np.float32)
  mask[:, size // 4:3 * size // 4, size // 8:size // 2] = 1.0
  return {"composite": jnp.asarray(rng.uniform(0.1, 0.9, (b, size, size, 3)), jnp.float32),
          "real": jnp.asarray(rng.uniform(0.1, 0.9, (b, size, size, 3)), jnp.float32),
          "mask": jnp.asarray(mask)}


def test_full_model_matches_official_keys_and_param_count():
  config = harmonizer_config.get_config("")
  net = nnx.eval_shape(lambda: harmonizer.create_networks(config, variables.rngs(0)))["harmonizer"]
  assert torch_import.expected_shapes(net) == _official_shapes()
  # The official checkpoint's 4,726,882 (paper: 4.73M).
  assert sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param))) == 4_726_882


def test_convert_round_trip_of_official_layout():
  config = harmonizer_config.get_config("")
  rng = np.random.default_rng(0)
  state_dict = {k: rng.normal(0, 1, s).astype(np.float32) for k, s in _official_shapes().items()}
  state_dict["backbone._bn1.num_batches_tracked"] = np.array(5)
  states = harmonizer.convert_torch({"default": state_dict}, config)
  net = nnx.eval_shape(lambda: harmonizer.create_networks(config, variables.rngs(0)))["harmonizer"]
  nnx.update(net, states["harmonizer"])
  back = torch_import.to_state_dict(net)
  # num_batches_tracked is optional: imported where given (layers.BatchNorm's
  # warm-up reads it), left as it was elsewhere.
  assert back["backbone._bn1.num_batches_tracked"] == 5
  back = {k: v for k, v in back.items() if not k.endswith("num_batches_tracked")}
  del state_dict["backbone._bn1.num_batches_tracked"]
  assert set(back) == set(state_dict)
  for key, value in state_dict.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
  with pytest.raises(ValueError, match="one checkpoint"):
    harmonizer.convert_torch({"a": state_dict, "b": state_dict}, config)
  del state_dict["regressor.headers.5.1.bias"]
  with pytest.raises(torch_import.StateDictMismatchError, match="headers.5.1.bias"):
    harmonizer.convert_torch({"default": state_dict}, config)


def test_regressor_matches_official_forward_and_cascades_forward_only():
  reg = harmonizer.CascadeArgumentRegressor(64, rngs=nnx.Rngs(0))
  features = np.random.default_rng(1).normal(0, 1, (3, 2, 2, 64)).astype(np.float32)
  out = np.asarray(reg(jnp.asarray(features)))
  # The official CascadeArgumentRegressor.forward with the same weights.
  t = {k: torch.from_numpy(np.array(v)) for k, v in torch_import.to_state_dict(reg).items()}
  x = torch.from_numpy(features).mean(dim=(1, 2))
  f, g = F.linear(x, t["f.weight"], t["f.bias"]), F.linear(x, t["g.weight"], t["g.bias"])
  ref = []
  for i in range(6):
    g = F.linear(torch.cat([f, g], 1), t[f"headers.{i}.0.weight"], t[f"headers.{i}.0.bias"])
    ref.append(F.linear(g, t[f"headers.{i}.1.weight"], t[f"headers.{i}.1.bias"]))
  np.testing.assert_allclose(out, torch.cat(ref, 1).numpy(), atol=1e-5)

  # Perturbing head 2's hidden layer changes arguments 2..5 and not 0..1.
  reg.headers[2][0].bias.value = reg.headers[2][0].bias.value + 1.0
  changed = np.abs(np.asarray(reg(jnp.asarray(features))) - out).max(axis=0) > 1e-4
  np.testing.assert_array_equal(changed, [False, False, True, True, True, True])


def test_resize_bilinear_matches_torch_interpolate():
  x = np.random.default_rng(2).uniform(0, 1, (2, 37, 50, 3)).astype(np.float32)
  for size in [(16, 16), (64, 80), (37, 21)]:
    ours = np.asarray(layers.resize_bilinear(jnp.asarray(x), size))
    ref = F.interpolate(torch.from_numpy(x).permute(0, 3, 1, 2), size, mode="bilinear",
                        align_corners=False).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(ours, ref, atol=1e-5, err_msg=str(size))


def test_filter_loss_and_dynamic_weighting_on_hand_values():
  pred = jnp.full((1, 2, 2, 3), 0.5)
  mask = jnp.asarray([[[[1.0], [1.0]], [[0.0], [0.0]]]])
  loss = harmonizer.filter_loss(pred, pred + 0.1, mask)
  # Per masked pixel: 3 channels of sqrt(0.01 + 1e-6) + 10 * 0.01, over 2 pixels.
  np.testing.assert_allclose(loss, [3 * (np.sqrt(0.010001) + 0.1)], rtol=1e-5)

  stages = jnp.asarray([1.0, 0.8, 1.1, 0.9, 1.3, 1.2])[:, None]
  terms = harmonizer.dynamic_weighted(stages)
  total = 1.0 + 0.3 + 0.4  # L_0 plus the increases.
  np.testing.assert_allclose(terms[:, 0], [1 / total, 0, 0.3 / total, 0, 0.4 / total, 0],
                             rtol=1e-5)
  grads = jax.grad(lambda s: jnp.sum(harmonizer.dynamic_weighted(s)))(stages)[:, 0]
  # The total and each previous stage's loss are constants: only L_0 and the
  # stages whose loss went up get a gradient, 1 / total each.
  np.testing.assert_allclose(grads, [1 / total, 0, 1 / total, 0, 1 / total, 0], rtol=1e-5)


def test_synthesize_reverses_the_cascade():
  batch = _batch(b=2, size=16)
  real, mask = batch["real"], batch["mask"]
  args = jnp.asarray([[0.2, -0.3, 0.4, -0.5, 0.3, -0.2], [-0.1, 0.2, -0.3, 0.4, -0.2, 0.1]])
  composite, targets = harmonizer.synthesize(real, mask, args)
  assert len(targets) == 6
  np.testing.assert_array_equal(targets[-1], real)
  # Shadow is applied first to the real image: its output is the target of
  # the forward cascade's highlight stage (the last but one).
  np.testing.assert_allclose(
      targets[4], filters.apply_filter("shadow", real, mask, args[:, 5]), atol=1e-6)
  current = real
  for i in reversed(range(6)):
    current = filters.FILTERS[filters.FILTER_NAMES[i]](current, args[:, None, None, i:i + 1])
  np.testing.assert_allclose(composite, mask * current + (1 - mask) * real, atol=1e-6)
  zero_comp, zero_targets = harmonizer.synthesize(real, mask, jnp.zeros((2, 6)))
  for image in [zero_comp] + zero_targets:
    np.testing.assert_allclose(image, real, atol=1e-5)


def test_predict_at_full_resolution_equals_filters_on_the_full_image(nets):
  net = nets["harmonizer"]
  rng = np.random.default_rng(3)
  composite = jnp.asarray(rng.uniform(0, 1, (2, 150, 200, 3)), jnp.float32)
  mask = jnp.zeros((2, 150, 200, 1)).at[:, 40:110, 50:120].set(1.0)
  config = harmonizer_config.get_config("runlocal")
  out = nnx.jit(lambda n, i: harmonizer.predict(config, n, i))(
      nets, {"composite": composite, "mask": mask})
  assert out.shape == (2, 150, 200, 3)
  args = _regress(net, composite, mask)
  # Arguments come from the 64x64 view only.
  small = (64, 64)
  np.testing.assert_allclose(
      args, _regress(net, layers.resize_bilinear(composite, small),
                     layers.resize_bilinear(mask, small)), atol=1e-5)
  expected, _ = jax.jit(filters.apply_filters)(composite, mask, args)
  np.testing.assert_allclose(out, expected, atol=1e-5)
  background = np.asarray(mask[..., 0]) == 0
  np.testing.assert_array_equal(np.asarray(out)[background], np.asarray(composite)[background])
  assert np.abs(np.asarray(out) - np.asarray(composite)).max() > 1e-4


def test_compute_losses_trains_on_synthetic_rows_and_real_composites(nets):
  config = _paper_losses(harmonizer_config.get_config("runlocal"))
  models.set_modes(nets, ["harmonizer"])
  step = nnx.jit(lambda n, b, k: harmonizer.compute_losses(config, n, b, k))
  batch = _batch()
  key = jax.random.key(0)
  losses, metrics, outputs = step(nets, batch, key)
  assert outputs["harmonized"].shape == (8, 64, 64, 3)
  assert set(metrics) >= {"filter_0_temperature", "filter_5_shadow", "real_loss", "loss"}
  assert np.isfinite(float(losses["harmonizer"]))
  # The paper's losses at batch 8: the last 2 rows are dataset composites; the
  # first 6 are remade from their real images, so their composites do not matter.
  noisy = batch["composite"] + 0.05
  syn_changed = dict(batch, composite=batch["composite"].at[:6].set(noisy[:6]))
  real_changed = dict(batch, composite=batch["composite"].at[6:].set(noisy[6:]))
  np.testing.assert_allclose(step(nets, syn_changed, key)[0]["harmonizer"],
                             losses["harmonizer"], rtol=1e-5)
  assert abs(float(step(nets, real_changed, key)[1]["real_loss"])
             - float(metrics["real_loss"])) > 1e-4
  # The gradients of this loss: test_briefly_trained_arguments_vary_across_images_in_eval_mode.
  nets["harmonizer"].eval()


def _paper_losses(config):
  """runlocal's config with the paper's losses (runlocal has the demo's) and a
  quarter of the batch dataset rows (6 synthetic + 2 dataset rows of 8)."""
  config.loss.update(real_fraction=0.25, transfer_fraction=0.0, identity_fraction=0.0,
                     contrast_straight_through=False)
  return config


def test_training_rows_transfer_and_identity_fractions():
  config = _paper_losses(harmonizer_config.get_config("runlocal"))
  batch = dict(_batch(), real=scenes.smooth_scene(8, 64, seed=2))  # Rows of different colors.
  keys, rng = (jax.random.key(1), jax.random.key(2)), jax.random.key(3)
  rows = jax.jit(lambda cl, c, m, r: harmonizer.training_rows(cl, c, m, r, keys, rng),
                 static_argnums=0)
  frozen = lambda **loss: ml_collections.FrozenConfigDict(dict(config.loss, **loss))
  plain, plain_targets, synthetic = rows(frozen(), batch["composite"], batch["mask"],
                                         batch["real"])
  assert list(np.asarray(synthetic)) == [True] * 6 + [False] * 2
  np.testing.assert_array_equal(plain[6:], batch["composite"][6:])  # The dataset's composites.
  # transfer_fraction 1: the dataset rows are recolored from their real images
  # (the dataset's composites unused); the synthetic rows are as they were.
  moved, moved_targets, _ = rows(frozen(transfer_fraction=1.0), batch["composite"],
                                 batch["mask"], batch["real"])
  np.testing.assert_array_equal(moved[:6], plain[:6])
  fg = np.asarray(batch["mask"][6:, ..., 0]) > 0
  np.testing.assert_array_equal(np.asarray(moved[6:])[~fg], np.asarray(batch["real"][6:])[~fg])
  assert np.abs(np.asarray(moved[6:])[fg] - np.asarray(batch["real"][6:])[fg]).mean() > 0.02
  for a, b in zip(moved_targets, plain_targets):
    np.testing.assert_array_equal(a, b)
  # identity_fraction 1: every input is its own target, at every stage.
  same, same_targets, _ = rows(frozen(transfer_fraction=1.0, identity_fraction=1.0),
                               batch["composite"], batch["mask"], batch["real"])
  for target in same_targets:
    np.testing.assert_array_equal(target, same)
  np.testing.assert_array_equal(same[6:], batch["real"][6:])


def test_demo_recipe():
  config = harmonizer_config.get_config("demo")
  assert (config.loss.real_fraction, config.loss.transfer_fraction,
          config.loss.identity_fraction, config.optim.ema_decay) == (0.5, 1.0, 0.25, 0.998)
  assert tuple(config.loss.argument_ranges) == (0.3, 0.5, 0.5, 0.6, 0.4, 0.4)  # The paper's.
  assert config.model.color_statistics and config.loss.contrast_straight_through
  plain = harmonizer_config.get_config("")
  assert (plain.loss.transfer_fraction, plain.loss.identity_fraction) == (0.0, 0.0)
  assert not (plain.model.color_statistics or plain.loss.contrast_straight_through)
  # runlocal is the demo's network, losses and average, for 20 steps.
  runlocal = harmonizer_config.get_config("runlocal")
  assert runlocal.model.to_dict() == config.model.to_dict()
  assert runlocal.loss.to_dict() == config.loss.to_dict()
  assert (runlocal.total_steps, runlocal.optim.ema_decay) == (20, 0.998)


def test_color_statistics_on_hand_values():
  image = np.zeros((1, 4, 4, 3), np.float32)
  mask = np.zeros((1, 4, 4, 1), np.float32)
  mask[0, :, :2] = 1.0
  image[0, :, :2] = (0.9, 0.3, 0.3)                   # Foreground: one red.
  image[0, :, 2:] = 0.2
  image[0, ::2, 2:] = 0.6                             # Background: grays 0.2 and 0.6.
  stats = np.asarray(harmonizer.color_statistics(jnp.asarray(image), jnp.asarray(mask)))[0]
  np.testing.assert_allclose(stats[:3], (0.9, 0.3, 0.3), atol=1e-6)   # Foreground mean RGB,
  np.testing.assert_allclose(stats[3], 0.6, atol=1e-6)                # chroma,
  np.testing.assert_allclose(stats[4], 0.0, atol=2e-4)                # luminance std;
  np.testing.assert_allclose(stats[5:8], (0.4, 0.4, 0.4), atol=1e-6)  # the background's.
  np.testing.assert_allclose(stats[8], 0.0, atol=1e-6)
  np.testing.assert_allclose(stats[9], 0.2, atol=1e-5)
  # log((bg + 0.02) / (fg + 0.02)) of the chroma, the mean luminance and the luminance
  # std (the flat foreground's is float32 rounding, ~1e-4, checked above).
  np.testing.assert_allclose(
      stats[10:], np.log((0.02 / 0.62, 0.42 / 0.52, (stats[9] + 0.02) / (stats[4] + 0.02))),
      rtol=1e-5)
  assert stats.shape == (harmonizer.NUM_STATISTICS,)


def test_color_statistics_widen_the_regressor_and_reach_the_arguments():
  config = recipes.official_network(harmonizer_config.get_config("runlocal"))
  config.model.color_statistics = True
  net = _create(config)["harmonizer"]
  net.eval()
  plain = nnx.eval_shape(lambda: harmonizer.create_networks(
      recipes.official_network(harmonizer_config.get_config("runlocal")),
      variables.rngs(0)))["harmonizer"]
  assert net.regressor.f.in_features == plain.regressor.f.in_features + 13
  # The statistics are computed on the 64x64 view the backbone sees: a changed
  # statistic changes the arguments through the regressor's extra inputs alone.
  batch = _batch(b=2)
  composite, mask = batch["composite"], batch["mask"]
  view = layers.resize_bilinear(composite, (64, 64)), layers.resize_bilinear(mask, (64, 64))
  features = nnx.jit(lambda n, c, m: n.backbone(c, m))(net, *view)
  stats = harmonizer.color_statistics(*view)
  args = nnx.jit(lambda n, c, m: n.raw_arguments(c, m))(net, composite, mask)
  np.testing.assert_allclose(net.regressor(features, stats), args, atol=1e-5)
  assert np.abs(np.asarray(net.regressor(features, stats + 0.1) - args)).max() > 1e-3
  # And the training loss (the demo's) runs through them.
  networks = {"harmonizer": net}
  models.set_modes(networks, ["harmonizer"])
  losses, _, _ = nnx.jit(lambda n, b, k: harmonizer.compute_losses(config, n, b, k))(
      networks, _batch(), jax.random.key(0))
  assert np.isfinite(float(losses["harmonizer"]))


def test_random_rot90_rotates_every_array_of_an_example_alike():
  x = jnp.arange(4 * 4 * 4 * 2, dtype=jnp.float32).reshape(4, 4, 4, 2)
  y = x[..., :1] * 10
  rx, ry = harmonizer.random_rot90([x, y], jax.random.key(0))
  for i in range(4):
    k = [r for r in range(4) if np.array_equal(np.rot90(np.asarray(x[i]), r), rx[i])]
    assert len(k) == 1
    np.testing.assert_array_equal(ry[i], np.rot90(np.asarray(y[i]), k[0]))


def test_config_and_optimizer_schedule():
  config = harmonizer_config.get_config("")
  assert (config.batch_size, config.num_epochs, config.optim.lr) == (24, 60, 3e-4)
  assert round(config.batch_size * config.loss.real_fraction) == 8  # 16 + 8.
  opt = harmonizer.make_optimizers(config, steps_per_epoch=10)["harmonizer"]
  params = {"w": jnp.zeros(())}
  update = jax.jit(lambda state: opt.update({"w": jnp.ones(())}, state, params))
  state, steps = opt.init(params), {}
  for i in range(501):
    updates, state = update(state)
    steps[i] = float(updates["w"])
  # Adam with a constant gradient moves by -lr: x0.1 at epochs 25 and 50.
  np.testing.assert_allclose([steps[0], steps[249], steps[250], steps[500]],
                             [-3e-4, -3e-4, -3e-5, -3e-6], rtol=1e-3)


def _photo_like_batch(b: int, size: int = 64, seed: int = 0) -> dict[str, jax.Array]:
  """Smooth images with per-image brightness, contrast and color, and box masks."""
  rng = np.random.default_rng(seed)
  coarse = rng.uniform(0, 1, (b, 4, 4, 3))
  smooth = jax.image.resize(jnp.asarray(coarse, jnp.float32), (b, size, size, 3), "bilinear")
  gain = rng.uniform(0.3, 1.0, (b, 1, 1, 1))
  offset = rng.uniform(0.0, 0.6, (b, 1, 1, 3))
  real = jnp.clip(smooth * gain + offset, 0, 1).astype(jnp.float32)
  mask = np.zeros((b, size, size, 1), np.float32)
  for i in range(b):
    top, left = rng.integers(0, size // 2, 2)
    h, w = rng.integers(size // 4, size // 2, 2)
    mask[i, top:top + h, left:left + w] = 1.0
  tint = rng.uniform(0.6, 1.4, (b, 1, 1, 3)).astype(np.float32)
  composite = jnp.where(mask > 0, jnp.clip(real * tint, 0, 1), real)
  return {"composite": composite, "real": real, "mask": jnp.asarray(mask)}


def _straight_through_losses():
  """runlocal with the paper's losses, no color statistics, and the demo's
  straight-through contrast: the official contrast filter gives a positive
  argument no gradient at all (floor(); filters_test), whatever the init."""
  config = _paper_losses(harmonizer_config.get_config("runlocal"))
  config.model.color_statistics = False
  config.loss.contrast_straight_through = True
  return config


@functools.cache
def _train_step():
  """One jitted update (gradients, then the optimizer) of _straight_through_losses,
  returning the gradients: the two tests that train share its compilation (they
  share an xdist group, so one worker runs both)."""
  config = _straight_through_losses()

  @nnx.jit
  def step(net, opt, batch, key):
    grads = nnx.grad(lambda n: harmonizer.compute_losses(
        config, {"harmonizer": n}, batch, key)[0]["harmonizer"])(net)
    opt.update(net, grads)
    return grads

  return step


@pytest.mark.xdist_group("harmonizer_train_step")
def test_briefly_trained_arguments_vary_across_images_in_eval_mode():
  # Regression test of the eval-mode collapse: with batch-norm running
  # statistics starting at (0, 1) and momentum 0.99, 20 steps left every
  # layer's running variance ~10x its real one, the shrinkage compounded over
  # the 32 batch norms and every image got the same arguments in eval mode
  # (spread 0.000 against 0.19 in train mode). layers.BatchNorm warms up.
  # The official random regressor, trained with _straight_through_losses.
  config = recipes.official_network(_straight_through_losses())  # The step's losses.
  net = _create(config)["harmonizer"]
  opt = nnx.Optimizer(net, harmonizer.make_optimizers(config, 10)["harmonizer"], wrt=nnx.Param)

  net.train()  # As the trainer sets it.
  for step in range(10):
    grads = jax.tree.leaves(_train_step()(
        net, opt, _photo_like_batch(8, seed=step), jax.random.key(step)))
    # The loss trains the regressor at every step.
    assert all(np.isfinite(g).all() for g in grads), step
    assert max(float(np.abs(g).max()) for g in grads) > 0, step
  test = _photo_like_batch(16, seed=100)
  net.eval()
  eval_spread = float(np.asarray(_regress(net, test["composite"], test["mask"])
                                 ).std(axis=0).mean())
  net.train()  # Batch statistics of the test images themselves, no drop connect.
  train_spread = float(np.asarray(_regress(net, test["composite"], test["mask"])
                                  ).std(axis=0).mean())
  assert train_spread > 0.01
  # Within a factor of 3 either way. Measured: eval 0.113, train 0.079 (0.109 and
  # 0.085 without the straight-through contrast); with nnx.BatchNorm's update
  # instead, eval 1e-8 (the collapse, measured without it).
  assert train_spread / 3 < eval_spread < 3 * train_spread, (eval_spread, train_spread)


@pytest.mark.xdist_group("harmonizer_train_step")
def test_identity_init_starts_near_zero_arguments_and_learns_every_filter(nets):
  # identity_init (runlocal, demo): the untrained model keeps the composite (within
  # the filters' response to arguments of about 1e-3), where the official random
  # regressor recolors it; not exactly zero, so that one step moves every
  # argument, the temperature too (its filter has no gradient at exactly 0).
  config = harmonizer_config.get_config("runlocal")
  assert config.model.identity_init and not harmonizer_config.get_config().model.identity_init
  assert harmonizer_config.get_config("demo").model.identity_init
  # The paper's network and losses (cheaper to compile; the fixture's network
  # but for the init) with the demo's straight-through contrast.
  config = _straight_through_losses()
  networks = _create(config)
  net = networks["harmonizer"]
  batch = _batch()
  net.eval()
  before = np.asarray(_regress(net, batch["composite"], batch["mask"]))
  assert 0 < np.abs(before).min() and np.abs(before).max() < 2e-3
  predict = nnx.jit(lambda n, i: harmonizer.predict(config, n, i))
  np.testing.assert_allclose(predict(networks, batch), batch["composite"], atol=2 / 255)
  official = predict(nets, batch)  # The same network with the official regressor.
  assert np.abs(np.asarray(official) - np.asarray(batch["composite"])).max() > 0.05

  net.train()
  opt = nnx.Optimizer(net, harmonizer.make_optimizers(config, 10)["harmonizer"], wrt=nnx.Param)
  grads = _train_step()(net, opt, batch, jax.random.key(0))
  for i, name in enumerate(filters.FILTER_NAMES):
    assert np.abs(np.asarray(grads["regressor"]["headers"][i][1]["kernel"].value)).max() > 0, name
  net.eval()
  moved = np.abs(np.asarray(_regress(net, batch["composite"], batch["mask"])) - before)
  assert (moved.min(axis=0) > 1e-5).all(), moved.min(axis=0)
