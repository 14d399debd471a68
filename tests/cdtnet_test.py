"""CDTNet: official key layouts, weight import, parity with a PyTorch forward of
the official layers, strip-wise refinement, initialisation, pretrained base."""

import importlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmonax import checkpoint
from harmonax import torch_import
from harmonax import variables
from harmonax.models import cdtnet
from harmonax.models import lut as lut_ops
import convert_test
from convert_test import read_key_list
from lut_test import official_kernel
from models_dih_test import random_state_dict

torch = pytest.importorskip("torch")
F = torch.nn.functional
MEAN = torch.tensor([.485, .456, .406]).view(1, 3, 1, 1)
STD = torch.tensor([.229, .224, .225]).view(1, 3, 1, 1)


def _config(arg=""):
  return importlib.import_module("configs.cdtnet").get_config(arg)


def _official_shapes(nets) -> dict[str, tuple]:
  """Our networks' expected PyTorch keys under the official prefixes."""
  shapes = dict(torch_import.expected_shapes(nets["base"]))
  for name in ("lut", "refine"):
    if name in nets:
      shapes.update({f"{name}.{k}": s for k, s in
                     torch_import.expected_shapes(nets[name]).items()})
  return shapes


@pytest.mark.parametrize("name, arg", [("cdtnet", ""), ("cdtnet", "hr=2048"),
                                       ("cdtnet_sim", "sim")])
def test_module_tree_equals_official_keys_and_parameter_count(name, arg):
  config = _config(arg)
  nets = nnx.eval_shape(lambda: cdtnet.create_networks(config, variables.rngs(0)))
  official = {k: s for k, s in read_key_list(name).items()
              if not k.endswith("num_batches_tracked")}
  if config.model.sim:  # The sim file carries an unused refinement.
    official = {k: s for k, s in official.items() if not k.startswith("refine.")}
  assert _official_shapes(nets) == official
  params = sum(int(np.prod(x.shape)) for n in nets.values()
               for x in jax.tree.leaves(nnx.state(n, nnx.Param)))
  assert params == (2_744_400 if not config.model.sim else 2_684_428)
  assert abs(2_744_400 - 2.74e6) / 2.74e6 < 0.01


@pytest.mark.parametrize("name, arg", [("cdtnet", ""), ("cdtnet_sim", "sim")])
def test_convert_torch_round_trip(name, arg):
  shapes = read_key_list(name)
  state = random_state_dict({k: s for k, s in shapes.items()
                             if not k.endswith("num_batches_tracked")}, seed=0)
  state.update({k: np.array(3, np.int64) for k in shapes if k.endswith("num_batches_tracked")})
  config = _config(arg)
  states = cdtnet.convert_torch({"default": state}, config)
  assert set(states) == ({"base", "lut"} if config.model.sim else {"base", "lut", "refine"})
  nets = nnx.eval_shape(lambda: cdtnet.create_networks(config, variables.rngs(0)))
  checkpoint.update_networks(nets, {k: s.to_pure_dict() for k, s in states.items()})
  np.testing.assert_array_equal(np.asarray(nets["lut"].LUT2.LUT[...]), state["lut.LUT2.LUT"])
  back = torch_import.to_state_dict(nets["base"])
  np.testing.assert_array_equal(back["decoder.to_rgb.weight"], state["decoder.to_rgb.weight"])
  if "refine" in nets:
    back = torch_import.to_state_dict(nets["refine"])
    np.testing.assert_array_equal(back["block.3.weight"], state["refine.block.3.weight"])


def _small_config(sim=False):
  config = _config("runlocal" + (",sim" if sim else ""))
  config.model.update(base_size=16, lut_chunk=64, refine_rows=0)
  return config


def _random_networks(config, seed=3):
  nets = nnx.eval_shape(lambda: cdtnet.create_networks(config, variables.rngs(0)))
  state = random_state_dict(_official_shapes(nets), seed)
  rng = np.random.default_rng(seed)
  for i in range(config.model.n_luts):  # Plausible tables: identity + noise.
    state[f"lut.LUT{i}.LUT"] = (lut_ops.identity_lut(config.model.lut_dim) * (i == 0)
                                + 0.1 * rng.standard_normal((3,) + (33,) * 3)
                                ).astype(np.float32)
  states = cdtnet.convert_torch({"default": state}, config)
  checkpoint.update_networks(nets, {k: jax.tree.map(jnp.asarray, s.to_pure_dict())
                                    for k, s in states.items()})
  for n in nets.values():
    n.eval()
  return nets, {k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}


def torch_cdtnet(sd, image, mask, base_size, n_luts, sim, monkeypatch):
  """CDTNet.forward of the official code on NCHW tensors, at batch 1 per image
  (the official CPU LUT), with convert_test's PyTorch iS2AM as the base."""
  normed = (image - MEAN) / STD
  low = F.interpolate(torch.cat([normed, mask], 1), size=(base_size, base_size),
                      mode="bilinear")
  features = {}
  fusion = convert_test._t_fusion

  def record(sd_, x, img):
    features["decoder"] = x
    return fusion(sd_, x, img)

  monkeypatch.setattr(convert_test, "_t_fusion", record)
  base_out = convert_test.torch_ssam(sd, low[:, :3], low[:, 3:])
  monkeypatch.setattr(convert_test, "_t_fusion", fusion)
  deepest = _torch_deepest(sd, low)
  # Weight_predictor_issam (fb=True).
  x = F.conv2d(deepest, sd["lut.classifier.conv.weight"], sd["lut.classifier.conv.bias"])
  down = F.interpolate(mask, size=x.shape[2:], mode="bilinear")
  pooled = torch.cat([F.adaptive_avg_pool2d(x * down, 1),
                      F.adaptive_avg_pool2d(x * (1 - down), 1)], 1)
  weights = F.conv2d(pooled, sd["lut.classifier.fc.weight"], sd["lut.classifier.fc.bias"])
  combined = torch.zeros_like(image)
  for b in range(image.shape[0]):
    for i in range(n_luts):
      out = official_kernel(sd[f"lut.LUT{i}.LUT"].numpy(), image[b:b + 1].numpy(), False)
      combined[b] += weights[b, i, 0, 0] * torch.from_numpy(out[0])
  lut_out = combined * mask + image * (1 - mask)
  if sim:
    return lut_out, lut_out
  # Refine.forward with target_resolution = the input's (H, W).
  size = image.shape[2:]
  up = lambda t: F.interpolate(t, size=size, mode="bilinear")  # noqa: E731
  h = torch.cat([up(base_out), (lut_out - MEAN) / STD, mask, up(features["decoder"])], 1)
  for j in (0, 3):
    h = F.conv2d(h, sd[f"refine.block.{j}.weight"], sd[f"refine.block.{j}.bias"], padding=1)
    p = f"refine.block.{j + 1}"
    h = F.elu(F.batch_norm(h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"],
                           sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-5))
  a = torch.sigmoid(3 * F.conv2d(h, sd["refine.conv_attention.weight"],
                                 sd["refine.conv_attention.bias"]))
  final = a * normed + (1 - a) * F.conv2d(h, sd["refine.to_rgb.weight"], sd["refine.to_rgb.bias"])
  return final * STD + MEAN, lut_out


def _torch_deepest(sd, low):
  """The deepest encoder output of convert_test's iS2AM encoder."""
  depth = 2 + len({k.split(".")[2] for k in sd if k.startswith("encoder.blocks_connected")})
  x = low
  for i, name in enumerate(["encoder.block0", "encoder.block1"] + [
      f"encoder.blocks_connected.block{i}" for i in range(2, depth)]):
    y = convert_test._t_double(sd, f"{name}.convs", x)
    x = F.max_pool2d(y, 2) if i < depth - 1 else y
  return y


def _inputs(b=2, h=24, w=40, seed=5):
  rng = np.random.default_rng(seed)
  image = rng.uniform(0, 1, (b, h, w, 3)).astype(np.float32)
  image[:, 0, :3] = (0.0, 1.0, 0.5)
  mask = np.zeros((b, h, w, 1), np.float32)
  mask[0, 4:14, 6:30] = 1.0
  mask[1:, 10:, :20] = 1.0
  return image, mask


@pytest.mark.parametrize("sim", [False, True])
def test_forward_matches_official_torch_layers(sim, monkeypatch):
  config = _small_config(sim)
  nets, sd = _random_networks(config)
  image, mask = _inputs()
  ours = jax.jit(lambda i, m: cdtnet.forward(config, nets, i, m))(image, mask)
  final, lut_out = torch_cdtnet(sd, torch.from_numpy(image.transpose(0, 3, 1, 2)),
                                torch.from_numpy(mask.transpose(0, 3, 1, 2)),
                                config.model.base_size, config.model.n_luts, sim, monkeypatch)
  nhwc = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
  np.testing.assert_allclose(ours["lut_images"], nhwc(lut_out), atol=2e-4, rtol=1e-4)
  np.testing.assert_allclose(ours["images"], nhwc(final), atol=2e-4, rtol=1e-4)


def test_weight_predictor_pools_over_the_whole_map():
  """fg/bg averages divide by H * W (nn.AdaptiveAvgPool2d), not the mask area."""
  config = _small_config()
  nets, sd = _random_networks(config)
  predictor = nets["lut"].classifier
  rng = np.random.default_rng(0)
  deepest = rng.standard_normal((1, 4, 4, predictor.conv.in_features)).astype(np.float32)
  mask = np.zeros((1, 16, 16, 1), np.float32)
  mask[:, :4, :4] = 1.0  # Exactly the top-left cell of the 4x4 map.
  x = np.asarray(predictor.conv(deepest))
  pooled = np.concatenate([x[0, 0, 0] / 16, (x[0].sum((0, 1)) - x[0, 0, 0]) / 16])
  kernel = sd["lut.classifier.fc.weight"].numpy()[:, :, 0, 0]
  expected = kernel @ pooled + sd["lut.classifier.fc.bias"].numpy()
  np.testing.assert_allclose(predictor(deepest, mask)[0], expected, rtol=1e-4, atol=1e-5)


def test_refinement_in_strips_equals_whole_image():
  config = _small_config()
  nets, _ = _random_networks(config)
  image, mask = _inputs(h=37)
  whole = jax.jit(lambda i, m: cdtnet.forward(config, nets, i, m))(image, mask)["images"]
  strips = jax.jit(lambda i, m: cdtnet.forward(config, nets, i, m, refine_rows=8))(image, mask)
  np.testing.assert_allclose(strips["images"], whole, atol=1e-5)


def test_fresh_lut_branch_is_the_identity():
  """LUT0 identity, the rest zero, weights = fc bias 1 when its kernel is zero."""
  config = _small_config()
  # Jitted: eagerly, each op of the initialisation and the forward pass would compile.
  nets = nnx.jit(lambda: cdtnet.create_networks(config, variables.rngs(0)))()
  nets["lut"].classifier.fc.kernel.value = jnp.zeros_like(nets["lut"].classifier.fc.kernel)
  image, mask = _inputs()
  out = nnx.jit(lambda n, i, m: cdtnet.forward(config, n, i, m))(nets, image, mask)
  np.testing.assert_allclose(out["lut_images"], image, atol=2e-6)
  # runlocal's identity_init (not in the paper): the refinement's blending map
  # starts at 0.9975 (dih.start_near_input), so the final image is the composite
  # but for 0.25% of its RGB head. Measured: mean |difference| 0.0008.
  assert config.model.identity_init and not _config("").model.identity_init
  assert np.abs(np.asarray(out["images"]) - image).mean() < 0.002
  assert cdtnet.make_optimizers(config, 10).keys() == {"lut", "refine"}
  config.model.finetune_base = True
  assert cdtnet.make_optimizers(config, 10).keys() == {"base", "lut", "refine"}


def test_load_pretrained_base_from_official_file(tmp_path):
  config = _small_config()
  nets = nnx.eval_shape(lambda: cdtnet.create_networks(config, variables.rngs(0)))
  state = random_state_dict(torch_import.expected_shapes(nets["base"]), seed=7)
  np.savez(tmp_path / "issam.npz", **state)
  nets = cdtnet.create_networks(config, nnx.Rngs(0))
  cdtnet.load_pretrained(config, nets, {"base": str(tmp_path / "issam.npz")})
  back = torch_import.to_state_dict(nets["base"])
  for key in state:
    np.testing.assert_array_equal(back[key], state[key], err_msg=key)
  with pytest.raises(ValueError, match="only 'base'"):
    cdtnet.load_pretrained(config, nets, {"lut": "x"})


def test_harmonize_api_any_size_keeps_background():
  from harmonax import inference  # pylint: disable=g-import-not-at-top
  config = _small_config()
  config.model.refine_rows = 16  # Strips, as at 4K.
  nets, _ = _random_networks(config)
  image, mask = _inputs(b=1, h=37, w=50)
  composite = np.round(image[0] * 255).astype(np.uint8)
  out = inference.harmonize(nets, composite, mask[0, ..., 0] > 0, config=config)
  assert out.shape == composite.shape and out.dtype == np.uint8
  np.testing.assert_array_equal(out[mask[0, ..., 0] == 0], composite[mask[0, ..., 0] == 0])
