"""Tests for the DoveNet family: losses, GAN step, parameter counts, predict, import."""

import ast
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import dovenet as dovenet_config
from harmonax import checkpoint
from harmonax import models
from harmonax import torch_import
from harmonax import variables
from harmonax.models import dovenet
import recipes

KEYS = os.path.join(os.path.dirname(__file__), "data", "torch_keys", "dovenet_keys.txt")


def read_key_list(path: str) -> dict[str, dict[str, tuple[tuple[int, ...], str]]]:
  """{'G': {key without 'G.': (shape, dtype)}, ...} from a torch_keys listing."""
  modules: dict[str, dict] = {}
  with open(path) as f:
    for line in f:
      if not line.strip() or line.startswith("#"):
        continue
      key, shape, dtype = line.rstrip("\n").split("\t")[:3]
      module, _, name = key.partition(".")
      modules.setdefault(module, {})[name] = (tuple(ast.literal_eval(shape)), dtype)
  return modules


def random_state_dicts(path: str, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  return {m: {k: (rng.standard_normal(s, dtype=np.float32) if d == "float32"
                  else np.zeros(s, np.int64)) for k, (s, d) in keys.items()}
          for m, keys in read_key_list(path).items()}


def tiny_config(**model):
  """A DoveNet small enough for CPU tests: 32x32 input, the official generator
  (runlocal's residual identity_init off unless `model` turns it on)."""
  config = recipes.official_network(dovenet_config.get_config("runlocal"))
  config.model.update(num_downs=5, ngf=4, ndf=4, d_num_strided=3, **model)
  return config


def assert_identity_init_returns_the_composite(family, config, size: int):
  """runlocal's identity_init (not in the papers): the generator's output is
  tanh(atanh(composite) + last layer) with the last layer at zero, so the
  untrained model returns the composite, black and white pixels included, and
  the last layer gets a gradient."""
  nets = nnx.jit(lambda: family.create_networks(config, variables.rngs(0)))()
  models.set_modes(nets)
  rng = np.random.default_rng(0)
  comp = rng.uniform(0, 1, (2, size, size, 3)).astype(np.float32)
  comp[:, 0], comp[:, 1] = 0.0, 1.0
  mask = (rng.uniform(0, 1, (2, size, size, 1)) > 0.6).astype(np.float32)
  inputs = {"composite": jnp.asarray(comp), "mask": jnp.asarray(mask)}
  predict = nnx.jit(lambda n, i: family.predict(config, n, i))
  np.testing.assert_allclose(predict(nets, inputs), comp, atol=1e-4)
  loss = lambda g: jnp.mean(jnp.abs(family.predict(config, {**nets, "generator": g}, inputs)
                                    - 0.8 * inputs["composite"]))
  grads = nnx.jit(nnx.grad(loss))(nets["generator"])
  assert np.abs(np.asarray(grads["model"]["model"][3]["kernel"][...])).max() > 0


def test_identity_init_returns_the_composite():
  assert dovenet_config.get_config("runlocal").model.identity_init
  assert not dovenet_config.get_config("").model.identity_init
  assert_identity_init_returns_the_composite(dovenet, tiny_config(identity_init=True), 32)


def numpy_networks(create, config, seed: int = 0) -> dict[str, nnx.Module]:
  """`create(config, rngs)` built abstractly, then filled from numpy.

  Eager initialization compiles one XLA random op per parameter shape, which
  dominates these small CPU tests; the values mimic the official init
  (conv kernels N(0, 0.02), zero biases, unit norms, unit-length u and v).
  """
  nets = nnx.eval_shape(lambda: create(config, variables.rngs(seed)))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key if hasattr(path[-1], "key") else str(path[-1])
    if name == "kernel":
      value = rng.normal(0.0, 0.02, leaf.shape)
    elif name in ("scale", "var"):
      value = np.ones(leaf.shape)
    elif name in ("u", "v"):
      value = rng.normal(size=leaf.shape)
      value /= np.linalg.norm(value)
    elif name == "weight":  # BargainNet's code scale
      value = np.full(leaf.shape, 0.1)
    else:  # biases, running means
      value = np.zeros(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  checkpoint.update_networks(nets, {k: jax.tree_util.tree_map_with_path(
      fill, nnx.state(n).to_pure_dict()) for k, n in nets.items()})
  return nets


def random_batch(size=32, batch=2, seed=0):
  """Random composite/real in [0, 1] and a rectangular mask, [B, size, size, C]."""
  rng = np.random.RandomState(seed)
  mask = np.zeros((batch, size, size, 1), np.float32)
  mask[:, size // 4:size // 2, size // 4:3 * size // 4] = 1.0
  return {"composite": jnp.asarray(rng.rand(batch, size, size, 3), jnp.float32),
          "real": jnp.asarray(rng.rand(batch, size, size, 3), jnp.float32),
          "mask": jnp.asarray(mask)}


def test_hinge_loss_hand_values():
  real, fake = jnp.array([0.5, 2.0]), jnp.array([-2.0, 0.0])
  # relu(1 - real) = [0.5, 0] -> 0.25; relu(1 + fake) = [0, 1] -> 0.5.
  np.testing.assert_allclose(dovenet.hinge_d_loss(real, fake), 0.75)


def test_gradient_penalty_hand_value():
  # A linear critic sum(w * x) has input gradient w everywhere: (|w| - 1)^2.
  w = jnp.array([3.0, 4.0]).reshape(1, 2)
  real, fake = jnp.ones((3, 2)), jnp.zeros((3, 2))
  gp = dovenet.gradient_penalty(lambda x: x @ w.T, real, fake, jax.random.key(0), 10.0)
  np.testing.assert_allclose(gp, 10.0 * (5.0 - 1.0) ** 2, rtol=1e-6)


def test_full_size_parameter_counts_match_official():
  config = dovenet_config.get_config()
  count = lambda net: sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
  nets = nnx.eval_shape(lambda: dovenet.create_networks(config, variables.rngs(0)))
  # Batch norm (the default, as the official README): BN scales and offsets,
  # no conv biases before them.
  assert count(nets["generator"]) == 54_759_939
  assert count(nets["discriminator"]) == 17_789_954
  config.model.norm = "instance"  # The released files' key lists (no norm tensors).
  nets = nnx.eval_shape(lambda: dovenet.create_networks(config, variables.rngs(0)))
  assert count(nets["generator"]) == 54_755_587  # official: 54.76M
  assert count(nets["discriminator"]) == 17_787_138  # official: 17.79M


def test_linear_decay_schedule():
  config = tiny_config()
  opt = dovenet.make_optimizers(config, steps_per_epoch=10)
  assert set(opt) == {"generator", "discriminator"}
  sched = dovenet.linear_decay_schedule(2e-4, 100, 100, steps_per_epoch=10)
  np.testing.assert_allclose(sched(0), 2e-4)
  np.testing.assert_allclose(sched(999), 2e-4)           # epoch 99
  np.testing.assert_allclose(sched(1000), 2e-4 * 100 / 101, rtol=1e-6)  # epoch 100
  np.testing.assert_allclose(sched(1999), 2e-4 / 101, rtol=1e-6)        # epoch 199


def test_gan_step_trains_both_networks_with_separate_gradients():
  config = tiny_config()
  nets = numpy_networks(dovenet.create_networks, config)
  graphs, params, rest = {}, {}, {}
  for k, net in nets.items():
    graphs[k], p, r = nnx.split(net, nnx.Param, ...)
    params[k], rest[k] = p.to_pure_dict(), r.to_pure_dict()
  batch = random_batch()

  @jax.jit
  def step(params, rest):
    def loss_fn(p):  # as the trainer: merge pure dicts, one forward pass
      ns = {k: nnx.merge(graphs[k], p[k], rest[k]) for k in graphs}
      models.set_modes(ns, ns)
      losses, metrics, outputs = dovenet.compute_losses(config, ns, batch, jax.random.key(1))
      new_rest = {k: nnx.state(n, nnx.Not(nnx.Param)).to_pure_dict() for k, n in ns.items()}
      return losses, (metrics, outputs, new_rest)

    losses, pullback, aux = jax.vjp(loss_fn, params, has_aux=True)
    grads = {name: pullback({k: jnp.asarray(k == name, v.dtype) for k, v in losses.items()})[0]
             for name in losses}
    return losses, grads, aux

  losses, grads, (metrics, outputs, new_rest) = step(params, rest)
  assert all(np.isfinite(float(v)) for v in list(losses.values()) + list(metrics.values()))
  np.testing.assert_allclose(
      losses["generator"],
      metrics["g_global"] + metrics["g_verification"] + 100 * metrics["l1"], rtol=1e-5)
  np.testing.assert_allclose(
      losses["discriminator"],
      metrics["d_global"] + metrics["d_verification"] + metrics["d_gp"], rtol=1e-5)

  norm = jax.jit(optax.global_norm)  # Eagerly, each leaf's ops would compile on their own.
  g_grads, d_grads = grads["generator"], grads["discriminator"]
  # The generator loss depends on D's params (-D(fake)) -- the trainer keeps
  # that part out of D's update -- and the D loss trains D.
  assert norm(g_grads["discriminator"]) > 0
  assert norm(d_grads["discriminator"]) > 0 and norm(g_grads["generator"]) > 0

  # One Adam step per network changes both; spectral-norm vectors advance.
  optimizers = dovenet.make_optimizers(config, 10)
  for k, g in (("generator", g_grads), ("discriminator", d_grads)):
    @jax.jit
    def moved(g, p, tx=optimizers[k]):
      new = optax.apply_updates(p, tx.update(g, tx.init(p), p)[0])
      return optax.global_norm(jax.tree.map(jnp.subtract, new, p))
    assert moved(g[k], params[k]) > 0
  u_old = rest["discriminator"]["D"]["conv1f"]["u"]
  assert not np.allclose(new_rest["discriminator"]["D"]["conv1f"]["u"], u_old)
  np.testing.assert_allclose(outputs["harmonized"], (outputs["output"] + 1) / 2, atol=1e-6)


@pytest.mark.parametrize("hw", [(32, 32), (20, 45)])
def test_predict_any_size_is_the_raw_generator_output(hw):
  config = tiny_config()
  nets = numpy_networks(dovenet.create_networks, config)
  models.set_modes(nets)
  rng = np.random.RandomState(0)
  comp = jnp.asarray(rng.rand(1, *hw, 3), jnp.float32)
  mask = jnp.asarray(rng.rand(1, *hw, 1) > 0.6, jnp.float32)
  out = np.asarray(jax.jit(lambda n, i: dovenet.predict(config, n, i))(
      nets, {"composite": comp, "mask": mask}))
  assert out.shape == comp.shape and np.all((out >= 0) & (out <= 1))
  # The official test scores the generator's image: reflect-padded to 2**num_downs.
  m = 2 ** config.model.num_downs
  x = np.concatenate([np.asarray(comp) * 2 - 1, np.asarray(mask)], -1)
  x = np.pad(x, ((0, 0), (0, -hw[0] % m), (0, -hw[1] % m), (0, 0)), mode="reflect")
  generated = nnx.jit(lambda g, x: g(x))(nets["generator"], jnp.asarray(x))  # One compile.
  want = (np.asarray(generated)[:, :hw[0], :hw[1]] + 1) / 2
  np.testing.assert_allclose(out, np.clip(want, 0, 1), atol=1e-5)
  bg = np.asarray(mask[..., 0]) == 0
  assert not np.array_equal(out[bg], np.asarray(comp)[bg])


def test_convert_detects_the_generator_norm_from_its_keys():
  """The README command works for a batch-norm and an instance-norm generator."""
  config = dovenet_config.get_config()
  assert config.model.norm == "batch"  # The official README's released model.
  sds = random_state_dicts(KEYS)  # The key list we have: no running statistics.
  assert dovenet.norm_of_state_dict(sds["G"]) == "instance"
  adapted = dovenet.adapt_config(config, sds)
  assert adapted.model.norm == "instance" and config.model.norm == "batch"
  batch_sd = {k: np.zeros(shape, np.float32) for k, shape in torch_import.expected_shapes(
      nnx.eval_shape(lambda: dovenet.create_networks(config, variables.rngs(0)))["generator"]).items()}
  assert dovenet.norm_of_state_dict(batch_sd) == "batch"
  assert dovenet.adapt_config(config, {"default": batch_sd}) is config


def test_convert_round_trips_official_keys():
  config = dovenet_config.get_config()  # full size: the official names and shapes
  sds = random_state_dicts(KEYS)
  states = dovenet.convert_torch(sds, dovenet.adapt_config(config, sds))
  assert set(states) == {"generator", "discriminator"}
  config = dovenet.adapt_config(config, sds)
  abstract = nnx.eval_shape(lambda: dovenet.create_networks(config, variables.rngs(1)))
  for name, short in dovenet.TORCH_NAMES.items():
    back = dovenet.to_torch(nnx.merge(nnx.graphdef(abstract[name]), states[name]))
    assert sorted(back) == sorted(sds[short])
    for key, value in sds[short].items():
      np.testing.assert_array_equal(back[key], value, err_msg=key)
  # Layouts: PyTorch [O, I, kh, kw] -> [kh, kw, I, O]; raw SN weight; u vector.
  g = states["generator"]
  np.testing.assert_array_equal(g["model"]["model"][0]["kernel"][...],
                                sds["G"]["model.model.0.weight"].transpose(2, 3, 1, 0))
  d = states["discriminator"]["D"]["conv2f"]
  np.testing.assert_array_equal(d["layer"]["kernel"][...],
                                sds["D"]["D.conv2f.weight_orig"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(d["u"][...], sds["D"]["D.conv2f.weight_u"])


def test_convert_names_bad_keys_and_requires_generator():
  config = tiny_config()
  sd = torch_import.to_state_dict(numpy_networks(dovenet.create_networks, config)["generator"])
  sd["model.model.0.weight"] = sd["model.model.0.weight"][:1]
  with pytest.raises(torch_import.StateDictMismatchError, match="model.model.0.weight"):
    dovenet.convert_torch({"G": sd}, config)
  with pytest.raises(ValueError, match="No generator weights"):
    dovenet.convert_torch({"D": {}}, config)


def torch_attention_unet(in_features, num_downs, ngf, norm, code_features=0):
  """A PyTorch pix2pix attention U-Net (module names as the official code), for
  checking the NNX port and the imported layouts against PyTorch's own ops."""
  torch = pytest.importorskip("torch")
  tnn = torch.nn
  bias = norm == "instance"
  make_norm = tnn.InstanceNorm2d if norm == "instance" else tnn.BatchNorm2d

  class Block(tnn.Module):

    def __init__(self, outer, inner, inp=None, sub=None, kind="middle",
                 attention=False, dropout=False):
      super().__init__()
      inp = inp or outer
      self.kind = kind
      down = tnn.Conv2d(inp, inner, 4, 2, 1, bias=bias)
      if kind == "outer":
        layers = [down, sub, tnn.ReLU(True), tnn.ConvTranspose2d(inner * 2, outer, 4, 2, 1),
                  tnn.Tanh()]
      elif kind == "inner":
        layers = [tnn.LeakyReLU(0.2, True), down, tnn.ReLU(True),
                  tnn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias), make_norm(outer)]
      else:
        layers = [tnn.LeakyReLU(0.2, True), down, make_norm(inner), sub, tnn.ReLU(True),
                  tnn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias), make_norm(outer)]
        layers += [tnn.Dropout(0.5)] if dropout else []
      self.model = tnn.Sequential(*layers)
      if attention:
        self.attention = tnn.Sequential(tnn.Conv2d(outer + inp, outer + inp, 1), tnn.Sigmoid())

    def forward(self, x):
      if self.kind == "outer":
        return self.model(x)
      y = torch.cat([x, self.model(x)], 1)  # in-place LeakyReLU: x is already activated
      return self.attention(y) * y if hasattr(self, "attention") else y

  class UNet(tnn.Module):

    def __init__(self):
      super().__init__()
      block = Block(ngf * 8, ngf * 8, kind="inner")
      for _ in range(num_downs - 5):
        block = Block(ngf * 8, ngf * 8, sub=block, dropout=True)
      for mult in (4, 2, 1):
        block = Block(ngf * mult, ngf * mult * 2, sub=block, attention=True)
      self.model = Block(3, ngf, in_features, block, kind="outer")
      if code_features:
        self.weight = tnn.Parameter(torch.tensor([0.1]))

    def forward(self, x):
      if code_features:
        scale = torch.clamp(self.weight, min=0.001)
        x = torch.cat([x[:, :-code_features], x[:, -code_features:] * scale], 1)
      return self.model(x)

  return UNet()


def assert_matches_torch(net, ref, x, atol=1e-5):
  """Loads net's variables into ref (PyTorch) and compares eval-mode outputs."""
  torch = pytest.importorskip("torch")
  state = {k: torch.from_numpy(np.array(v))
           for k, v in torch_import.to_state_dict(net).items()}
  missing, unexpected = ref.load_state_dict(state, strict=False)
  assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
  ref.eval()
  net.eval()
  with torch.no_grad():
    want = ref(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
  got = nnx.jit(lambda n, v: n(v))(net, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=atol)


def test_generator_matches_pytorch():
  config = tiny_config(norm="instance")  # The released generator's layers.
  gen = numpy_networks(dovenet.create_networks, config)["generator"]
  ref = torch_attention_unet(4, config.model.num_downs, config.model.ngf, "instance")
  # Larger weights than the 0.02 init, so that every layer matters.
  rng = np.random.default_rng(1)
  nnx.update(gen, jax.tree.map(lambda v: jnp.asarray(rng.normal(0, 0.3, v.shape), v.dtype),
                               nnx.state(gen, nnx.Param)))
  x = np.random.RandomState(0).uniform(-1, 1, (2, 32, 32, 4)).astype(np.float32)
  assert_matches_torch(gen, ref, x)


@pytest.mark.parametrize("norm", ["batch", "instance"])
def test_convert_command_reads_the_norm_of_the_generator_file(norm, tmp_path):
  """harmonax.convert with a batch-norm or an instance-norm generator file: the
  written config carries the file's norm and the weights load exactly."""
  from harmonax import conversion  # pylint: disable=g-import-not-at-top
  config = tiny_config(norm=norm)
  gen = numpy_networks(dovenet.create_networks, config, seed=3)["generator"]
  sd = torch_import.to_state_dict(gen)
  np.savez(tmp_path / "latest_net_G.npz", **sd)
  # Also from a runlocal config: its identity_init (a residual generator) is off
  # for imported weights.
  other = tiny_config(norm="instance" if norm == "batch" else "batch", identity_init=True)
  conversion.convert("dovenet", {"G": str(tmp_path / "latest_net_G.npz")}, str(tmp_path / "out"),
                     other)
  loaded_config, networks = checkpoint.load_networks(tmp_path / "out")
  assert loaded_config.model.norm == norm and not loaded_config.model.identity_init
  assert not networks["generator"].model.residual
  back = torch_import.to_state_dict(networks["generator"])
  for key, value in sd.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)
