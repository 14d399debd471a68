"""Tests for the BargainNet family: triplet loss, step, harmony score, predict, import."""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import bargainnet as bargainnet_config
from dovenet_test import numpy_networks
from dovenet_test import random_batch
from dovenet_test import random_state_dicts
from dovenet_test import assert_identity_init_returns_the_composite
from dovenet_test import assert_matches_torch
from dovenet_test import torch_attention_unet
from harmonax import models
from harmonax import variables
from harmonax.evaluators import harmony_score
from harmonax.models import bargainnet
import recipes

KEYS = os.path.join(os.path.dirname(__file__), "data", "torch_keys", "bargainnet_keys.txt")


def tiny_config():
  """A BargainNet small enough for CPU tests (64x64: the code extractor needs >= 63)."""
  config = recipes.official_network(bargainnet_config.get_config("runlocal"))
  config.model.update(num_downs=6, ngf=4, ndf=4)
  return config


def test_identity_init_returns_the_composite():
  assert bargainnet_config.get_config("runlocal").model.identity_init
  assert not bargainnet_config.get_config("").model.identity_init
  config = tiny_config()
  config.model.identity_init = True
  assert_identity_init_returns_the_composite(bargainnet, config, 64)


def test_triplet_loss_hand_values():
  a, p, n = jnp.zeros((1, 2)), jnp.array([[3.0, 4.0]]), jnp.array([[0.0, 1.0]])
  # d(a, p) = 5, d(a, n) = 1: relu(5 - 1 + 0.1) = 4.1; swapped: relu(1 - 5 + 0.1) = 0.
  np.testing.assert_allclose(bargainnet.triplet_margin_loss(a, p, n, 0.1, eps=0.0), 4.1)
  np.testing.assert_allclose(bargainnet.triplet_margin_loss(a, n, p, 0.1, eps=0.0), 0.0)
  # Official codes: per-dimension triplets, relu(|a-p| - |a-n| + m) averaged:
  # dim 0: relu(3 - 0 + 0.1) = 3.1; dim 1: relu(4 - 1 + 0.1) = 3.1.
  np.testing.assert_allclose(bargainnet.code_triplet_loss(a, p, n, 0.1), 3.1, rtol=1e-5)


def test_code_triplet_loss_matches_torch_on_official_shapes():
  torch = pytest.importorskip("torch")
  rng = np.random.RandomState(0)
  a, p, n = (rng.randn(3, 16).astype(np.float32) for _ in range(3))
  loss = torch.nn.TripletMarginLoss(margin=0.1, p=2)
  want = loss(*(torch.from_numpy(x)[:, :, None, None] for x in (a, p, n))).item()
  np.testing.assert_allclose(bargainnet.code_triplet_loss(a, p, n), want, rtol=1e-5)


def test_full_size_parameter_counts_match_official():
  config = bargainnet_config.get_config()
  nets = nnx.eval_shape(lambda: bargainnet.create_networks(config, variables.rngs(0)))
  count = lambda net: sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
  assert count(nets["generator"]) == 54_776_324  # official: 54.78M
  assert count(nets["encoder"]) == 3_919_376     # official: 3.92M


def test_step_trains_generator_and_encoder_with_one_loss():
  config = tiny_config()
  nets = numpy_networks(bargainnet.create_networks, config)
  graphs, params, rest = {}, {}, {}
  for k, net in nets.items():
    graphs[k], p, r = nnx.split(net, nnx.Param, ...)
    params[k], rest[k] = p.to_pure_dict(), r.to_pure_dict()
  batch = random_batch(size=64)

  @jax.jit
  def step(params):
    def loss_fn(p):
      ns = {k: nnx.merge(graphs[k], p[k], rest[k]) for k in graphs}
      models.set_modes(ns, ns)
      losses, metrics, _ = bargainnet.compute_losses(config, ns, batch, jax.random.key(1))
      new_rest = {k: nnx.state(n, nnx.Not(nnx.Param)).to_pure_dict() for k, n in ns.items()}
      return losses["generator"], (losses, metrics, new_rest)
    return jax.grad(loss_fn, has_aux=True)(params)

  grads, (losses, metrics, new_rest) = step(params)
  np.testing.assert_array_equal(losses["generator"], losses["encoder"])
  np.testing.assert_allclose(
      losses["generator"],
      metrics["l1"] + 0.01 * (metrics["triplet_fg"] + metrics["triplet_bg"]), rtol=1e-6)
  assert metrics["triplet_fg"] > 0 and metrics["triplet_bg"] > 0
  norm = optax.global_norm
  assert norm(grads["generator"]) > 0 and norm(grads["encoder"]) > 0
  assert float(grads["generator"]["weight"][0]) != 0.0  # the code scale is learned
  assert not np.allclose(new_rest["encoder"]["norm2f"]["mean"], rest["encoder"]["norm2f"]["mean"])
  optimizers = bargainnet.make_optimizers(config, steps_per_epoch=10)
  assert set(optimizers) == {"generator", "encoder"}
  for k in optimizers:
    # Jitted: eagerly, each optimizer op would compile on its own for each shape.
    update = jax.jit(lambda g, p, tx=optimizers[k]: norm(tx.update(g, tx.init(p), p)[0]))
    assert update(grads[k], params[k]) > 0


def _learning_rates(tx, steps):
  params = {"w": jnp.ones(2)}
  state, rates = tx.init(params), []
  for _ in range(steps):
    _, state = tx.update(params, state, params)
    rates.append(float(state.hyperparams["learning_rate"]))
  return rates


def test_schedule_is_steplr_and_fits_iharmony4_sizes():
  config = bargainnet_config.get_config("")
  # The official decay (every 6574200 epochs) never happens: a constant rate,
  # also at iHarmony4's 65742 steps per epoch (the raw step count overflows int32).
  tx = bargainnet.make_optimizers(config, steps_per_epoch=65742)["generator"]
  np.testing.assert_allclose(_learning_rates(tx, 3), [1e-4] * 3, rtol=1e-6)
  config.optim.decay_epochs, config.num_epochs = 2, 5
  tx = bargainnet.make_optimizers(config, steps_per_epoch=10)["encoder"]
  rates = _learning_rates(tx, 45)  # rates[i]: the rate of update i.
  np.testing.assert_allclose([rates[0], rates[19], rates[20], rates[40]],
                             [1e-4, 1e-4, 1e-5, 1e-6], rtol=1e-5)


def test_code_scale_is_clamped():
  config = tiny_config()
  gen = numpy_networks(bargainnet.create_networks, config)["generator"]
  gen.eval()
  x = jax.random.uniform(jax.random.key(0), (1, 64, 64, 20))
  forward = nnx.jit(lambda g, x: g(x))  # Eagerly, each op would compile on its own.
  gen.weight[...] = jnp.array([-1.0])
  low = forward(gen, x)
  gen.weight[...] = jnp.array([0.001])
  np.testing.assert_allclose(forward(gen, x), low, atol=1e-6)


def test_generator_with_batch_norm_and_code_matches_pytorch():
  config = tiny_config()
  gen = numpy_networks(bargainnet.create_networks, config)["generator"]
  ref = torch_attention_unet(20, config.model.num_downs, config.model.ngf, "batch", 16)
  rng = np.random.default_rng(1)

  def randomize(path, leaf):  # running stats and affine terms all matter
    name = str(path[-1].key)
    if name == "var":
      return jnp.asarray(rng.uniform(0.5, 2.0, leaf.shape), leaf.dtype)
    scale = 0.05 if name == "kernel" else 0.2
    return jnp.asarray(rng.normal(1.0 if name == "scale" else 0.0, scale, leaf.shape),
                       leaf.dtype)
  state = nnx.state(gen)
  nnx.replace_by_pure_dict(state, jax.tree_util.tree_map_with_path(
      randomize, state.to_pure_dict()))
  nnx.update(gen, state)
  gen.weight[...] = jnp.array([0.3])
  x = np.random.RandomState(0).uniform(-1, 1, (2, 64, 64, 20)).astype(np.float32)
  assert_matches_torch(gen, ref, x, atol=1e-4)


@pytest.mark.parametrize("hw", [(64, 64), (40, 70)])
def test_predict_any_size_is_the_raw_generator_output(hw):
  config = tiny_config()
  nets = numpy_networks(bargainnet.create_networks, config)
  models.set_modes(nets)
  rng = np.random.RandomState(0)
  comp = jnp.asarray(rng.rand(1, *hw, 3), jnp.float32)
  mask = jnp.asarray(rng.rand(1, *hw, 1) > 0.6, jnp.float32)
  out = np.asarray(jax.jit(lambda n, i: bargainnet.predict(config, n, i))(
      nets, {"composite": comp, "mask": mask}))
  assert out.shape == comp.shape and np.all((out >= 0) & (out <= 1))
  bg = np.asarray(mask[..., 0]) == 0
  assert not np.array_equal(out[bg], np.asarray(comp)[bg])  # Not pasted.
  if hw == (64, 64):  # Fits the network: the generator on [comp, mask, E(bg) code].
    z = nets["encoder"](comp * 2 - 1, 1 - mask)
    x = bargainnet._generator_input(comp * 2 - 1, mask, z)
    np.testing.assert_allclose(out, np.clip((nets["generator"](x) + 1) / 2, 0, 1), atol=1e-5)


def test_harmony_score_is_exp_of_code_distance():
  nets = numpy_networks(bargainnet.create_networks, tiny_config())
  enc = nets["encoder"]
  enc.eval()
  batch = random_batch(size=64)
  # Jitted: eagerly, each of the encoder's ops would compile on its own.
  harmony = nnx.jit(bargainnet.harmony_score, static_argnames="size")
  encode = nnx.jit(lambda e, x, m: e(x, m))
  score = harmony(enc, batch["composite"], batch["mask"], size=None)
  x = batch["composite"] * 2 - 1
  dist = np.linalg.norm(encode(enc, x, batch["mask"]) - encode(enc, x, 1 - batch["mask"]),
                        axis=-1)
  np.testing.assert_allclose(score, np.exp(-0.04212 * dist), rtol=1e-5)
  assert score.shape == (2,) and np.all((score > 0) & (score <= 1))
  # A region compared with itself is perfectly harmonious.
  same = harmony(enc, batch["composite"], jnp.full_like(batch["mask"], 0.5), size=None)
  np.testing.assert_allclose(same, 1.0, rtol=1e-6)
  models.set_modes(nets)
  extra = harmony_score.score(None, nets, batch, batch["real"], None)
  assert set(extra) == {"harmony_score", "harmony_score_composite"}
  assert all(v.shape == (2,) for v in extra.values())
  np.testing.assert_allclose(extra["harmony_score_composite"],
                             harmony(enc, batch["composite"], batch["mask"]), rtol=1e-6)
  with pytest.raises(ValueError, match="needs a BargainNet domain encoder"):
    harmony_score.score(None, {"generator": nets["generator"]}, batch, batch["real"], None)


def test_convert_round_trips_official_keys():
  config = bargainnet_config.get_config()
  sds = random_state_dicts(KEYS)
  states = bargainnet.convert_torch(sds, config)
  assert set(states) == {"generator", "encoder"}
  abstract = nnx.eval_shape(lambda: bargainnet.create_networks(config, variables.rngs(1)))
  for name, short in bargainnet.TORCH_NAMES.items():
    back = bargainnet.to_torch(nnx.merge(nnx.graphdef(abstract[name]), states[name]))
    expected = {k: v for k, v in sds[short].items() if not k.endswith("num_batches_tracked")}
    assert sorted(back) == sorted(expected)
    for key, value in expected.items():
      np.testing.assert_array_equal(back[key], value, err_msg=key)
  np.testing.assert_array_equal(states["generator"]["weight"][...], sds["G"]["weight"])
  np.testing.assert_array_equal(states["encoder"]["norm3f"]["var"][...],
                                sds["E"]["norm3f.running_var"])
