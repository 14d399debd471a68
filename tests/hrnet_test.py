"""Tests of the HRNet backbone and the HRNet + iDIH / iS2AM variants of the dih
family: branch shapes, the official module tree and parameter count, numerics
against a PyTorch forward of the same layers, the backbone's learning-rate
multiplier and its ImageNet initialisation."""

import functools
import importlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmonax import conversion
from harmonax import torch_import
from harmonax import variables
from harmonax.models import backboned
from harmonax.models import dih
from convert_test import read_key_list
from convert_test import torch_dih
from convert_test import torch_ssam
from models_dih_test import random_state_dict

torch = pytest.importorskip("torch")
F = torch.nn.functional

_OCR = ("conv3x3_ocr", "ocr_distri_head")


def _config(arg=""):
  return importlib.import_module("configs.hrnet_idih").get_config(arg)


@functools.cache
def _abstract(arg: str) -> nnx.Module:
  # Built once per config (variables.rngs: see harmonax/variables.py).
  return nnx.eval_shape(lambda: dih.create_networks(_config(arg), variables.rngs(0)))["generator"]


def _random(arg: str, seed: int) -> nnx.Module:
  """The config's network filled from a random state dict, eval mode."""
  net = nnx.clone(_abstract(arg))
  torch_import.load_into(net, random_state_dict(torch_import.expected_shapes(net), seed))
  net.eval()
  return net


def _params(module):
  return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(module, nnx.Param)))


def test_branch_shapes_per_stage():
  net = _abstract("runlocal").backbone.hrnet  # Width 4, 1 block, 1 module a stage.
  net.eval()
  assert tuple(len(getattr(net, f"stage{s}")) for s in (2, 3, 4)) == (1, 1, 1)
  assert len(net.layer1) == len(net.stage2[0].branches[0]) == 1
  x = jax.ShapeDtypeStruct((2, 64, 96, 3), jnp.float32)
  stages = nnx.eval_shape(lambda n, x: n.stage_outputs(x), net, x)
  # Stage s has s branches: widths w * 2**i at strides 4 * 2**i.
  for s, outputs in zip((2, 3, 4), stages):
    assert [o.shape for o in outputs] == [
        (2, 16 // 2 ** i, 24 // 2 ** i, 4 * 2 ** i) for i in range(s)]
  feats = nnx.eval_shape(lambda n, x: n.hrnet_features(x), net, x)
  assert feats.shape == (2, 16, 24, 4 + 8 + 16 + 32)
  mask = jax.ShapeDtypeStruct((2, 64, 96, 2), jnp.float32)
  out = nnx.eval_shape(lambda n, x, m: n(x, m), net, x, mask)
  assert out.shape == (2, 16, 24, 8) and net.output_channels == 8  # OCR: 2 * ocr_width.


def test_full_size_module_tree_and_parameter_count_match_official():
  net = _abstract("")
  official = {k: s for k, s in read_key_list("hrnet18_idih").items()
              if not k.endswith("num_batches_tracked")}
  assert torch_import.expected_shapes(net) == official
  # HRNet18 + iDIH256: 18.51M in the paper; the module tree gives the checkpoint's count.
  assert _params(net) == 18_512_633
  assert net.backbone.hrnet.branch_channels == (18, 36, 72, 144)
  hr = net.backbone.hrnet
  assert tuple(len(getattr(hr, f"stage{s}")) for s in (2, 3, 4)) == (1, 4, 3)
  assert len(hr.layer1) == len(hr.stage4[0].branches[3]) == 4


# An independent PyTorch reading of the official forward (hrnet_ocr.py, ocr.py,
# ih_model.py), driven by the state dict's key names, eval mode.


def _bn(sd, p, x):
  return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                      sd[f"{p}.bias"], False, 0.0, 1e-5)


def _conv_bn(sd, p, x, stride=1, relu=True):
  w = sd[f"{p}.0.weight"]
  x = _bn(sd, f"{p}.1", F.conv2d(x, w, sd.get(f"{p}.0.bias"), stride, w.shape[-1] // 2))
  return F.relu(x) if relu else x


def _count(sd, prefix):
  return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})


def _blocks(sd, p, x):
  for b in range(_count(sd, f"{p}.")):
    q, out = f"{p}.{b}", x
    n = 3 if f"{p}.{b}.conv3.weight" in sd else 2
    for i in range(1, n + 1):
      w = sd[f"{q}.conv{i}.weight"]
      out = _bn(sd, f"{q}.bn{i}", F.conv2d(out, w, padding=w.shape[-1] // 2))
      out = F.relu(out) if i < n else out
    skip = _conv_bn(sd, f"{q}.downsample", x, relu=False) if f"{q}.downsample.0.weight" in sd else x
    x = F.relu(out + skip)
  return x


def _hr_module(sd, p, xs):
  xs = [_blocks(sd, f"{p}.branches.{i}", x) for i, x in enumerate(xs)]
  fused = []
  for i in range(len(xs)):
    y = 0
    for j, x in enumerate(xs):
      f = f"{p}.fuse_layers.{i}.{j}"
      if j > i:
        x = F.interpolate(_conv_bn(sd, f, x, relu=False), size=xs[i].shape[-2:],
                          mode="bilinear", align_corners=True)
      for k in range(i - j):
        x = _conv_bn(sd, f"{f}.{k}", x, 2, k < i - j - 1)
      y = y + x
    fused.append(F.relu(y))
  return fused


def _cbr(sd, p, x, steps):  # [conv1x1, [bn, relu]] * steps
  for s in range(steps):
    x = F.relu(_bn(sd, f"{p}.{2 * s + 1}.0", F.conv2d(x, sd[f"{p}.{2 * s}.weight"])))
  return x


def torch_hrnet(sd, x, mask, mask_features):
  p = "backbone.hrnet"
  x = F.relu(_bn(sd, f"{p}.bn1", F.conv2d(x, sd[f"{p}.conv1.weight"], None, 2, 1)))
  x = F.relu(_bn(sd, f"{p}.bn2", F.conv2d(x + mask_features, sd[f"{p}.conv2.weight"], None, 2, 1)))
  ys = [_blocks(sd, f"{p}.layer1", x)]
  for s in (2, 3, 4):
    xs = []
    for i in range(s):
      x, t = ys[min(i, len(ys) - 1)], f"{p}.transition{s - 1}.{i}"
      if f"{t}.0.weight" in sd:
        x = _conv_bn(sd, t, x)
      for k in range(_count(sd, f"{t}.") if f"{t}.0.0.weight" in sd else 0):
        x = _conv_bn(sd, f"{t}.{k}", x, 2)
      xs.append(x)
    for m in range(_count(sd, f"{p}.stage{s}.")):
      xs = _hr_module(sd, f"{p}.stage{s}.{m}", xs)
    ys = xs
  feats = torch.cat([ys[0]] + [F.interpolate(y, size=ys[0].shape[-2:], mode="bilinear",
                                             align_corners=True) for y in ys[1:]], 1)
  feats = _conv_bn(sd, f"{p}.conv3x3_ocr", feats)
  b, c, h, w = feats.shape
  probs = F.interpolate(mask, size=(h, w), mode="bilinear", align_corners=True)
  probs = F.softmax(probs.view(b, 2, -1), dim=2)
  context = torch.matmul(probs, feats.view(b, c, -1).permute(0, 2, 1)).permute(0, 2, 1)[..., None]
  o = f"{p}.ocr_distri_head.object_context_block"
  query = _cbr(sd, f"{o}.f_pixel", feats, 2).view(b, -1, h * w).permute(0, 2, 1)
  key = _cbr(sd, f"{o}.f_object", context, 2).view(b, query.shape[-1], -1)
  value = _cbr(sd, f"{o}.f_down", context, 1).view(b, query.shape[-1], -1).permute(0, 2, 1)
  sim = F.softmax(torch.matmul(query, key) * query.shape[-1] ** -0.5, dim=-1)
  ctx = torch.matmul(sim, value).permute(0, 2, 1).reshape(b, -1, h, w)
  ctx = _cbr(sd, f"{o}.f_up", ctx, 1)
  return _cbr(sd, f"{p}.ocr_distri_head.conv_bn_dropout", torch.cat([ctx, feats], 1), 1)


def torch_hrnet_model(sd, image, mask, base):
  mask_features = F.conv2d(mask, sd["mask_conv.0.weight"], sd["mask_conv.0.bias"], 2, 1)
  mask_features = mask_features * sd["mask_conv.1.scale"].abs()
  feats = torch_hrnet(sd, image, torch.cat([mask, 1 - mask], 1), mask_features)
  model = {k[len("model."):]: v for k, v in sd.items() if k.startswith("model.")}
  return base(model, image, mask, backbone={2: feats})


@pytest.mark.parametrize("base, torch_base", [("idih", torch_dih), ("issam", torch_ssam)])
def test_converted_network_matches_torch_forward(base, torch_base, tmp_path):
  arg = f"runlocal,base={base}"
  # Filled batch-norm statistics: random ones make eval-mode HRNet outputs explode.
  state = random_state_dict(torch_import.expected_shapes(_abstract(arg)), seed=3)
  if base == "idih":  # Through harmonax.convert, as the released checkpoints.
    np.savez(tmp_path / "w.npz", **state)
    _, networks = conversion.convert("hrnet_idih", {"default": str(tmp_path / "w.npz")},
                                     None, _config(arg))
    net = networks["generator"]
  else:
    net = nnx.clone(_abstract(arg))
    torch_import.load_into(net, state)
    net.eval()
  rng = np.random.default_rng(4)
  image = rng.standard_normal((2, 64, 64, 3)).astype(np.float32)
  mask = np.zeros((2, 64, 64, 1), np.float32)
  mask[:, 16:40, 20:] = 1.0
  mask[1, 16, 20:] = 0.5
  ours = nnx.jit(lambda n, x, m: n(x, m))(net, image, mask)
  sd = {k: torch.from_numpy(v) for k, v in state.items()}
  theirs = torch_hrnet_model(sd, torch.from_numpy(image.transpose(0, 3, 1, 2)),
                             torch.from_numpy(mask.transpose(0, 3, 1, 2)), torch_base)
  theirs = theirs.numpy().transpose(0, 2, 3, 1)
  assert np.abs(theirs).max() < 100  # The comparison is meaningful.
  np.testing.assert_allclose(ours, theirs, atol=2e-4, rtol=1e-4)


def test_adapt_config_reads_the_hrnet_variant_from_the_checkpoint():
  runlocal = _config("runlocal").model.backbone
  state = {k: np.zeros(s, np.float32) for k, s in torch_import.expected_shapes(
      _abstract("runlocal")).items()}
  adapted = dih.adapt_config(_config(), {"default": state}).model.backbone
  for key in ("width", "blocks", "ocr", "stem"):
    assert adapted[key] == runlocal[key], key
  assert tuple(adapted.modules) == tuple(runlocal.modules)
  base = importlib.import_module("configs.idih").get_config("")
  assert dih.adapt_config(base, {"default": state}) is base


def test_backbone_learning_rate_is_a_tenth_except_the_ocr_head():
  config = _config("runlocal")
  net = _random("runlocal", 0)
  params = nnx.state(net, nnx.Param)
  opt = dih.make_optimizers(config, steps_per_epoch=10)["generator"]
  # Jitted: eager optax compiles every op of every leaf shape separately.
  updates = jax.jit(lambda p: opt.update(jax.tree.map(jnp.ones_like, p), opt.init(p), p)[0])(
      params)
  flat = {".".join(map(str, k)): float(np.asarray(v).ravel()[0])
          for k, v in nnx.to_flat_state(updates)}
  lr = config.optim.lr
  for key, update in flat.items():  # Adam's first step: -lr * sign(grad).
    pretrained = key.startswith("backbone.hrnet.") and key.split(".")[2] not in _OCR
    assert update == pytest.approx(-lr * (0.1 if pretrained else 1.0), rel=1e-3), key
  assert any(k.startswith("backbone.hrnet.ocr_distri_head") for k in flat)
  assert any(k.startswith("mask_conv") for k in flat)


def test_load_pretrained_copies_imagenet_hrnet_and_keeps_the_rest(tmp_path):
  config = _config("runlocal")
  net, donor = _random("runlocal", 0), _random("runlocal", 1)
  before = torch_import.to_state_dict(net)
  # An HRNet-Image-Classification file: no OCR head, a classifier we do not have.
  imagenet = {k: v for k, v in torch_import.to_state_dict(donor.backbone.hrnet).items()
              if k.split(".")[0] not in _OCR}
  imagenet.update({"classifier.weight": np.zeros((10, 8), np.float32),
                   "incre_modules.0.0.conv1.weight": np.zeros((2, 4, 1, 1), np.float32),
                   "conv1.num_batches_tracked": np.array(5)})
  np.savez(tmp_path / "imagenet.npz", **imagenet)
  dih.load_pretrained(config, {"generator": net}, {"generator": str(tmp_path / "imagenet.npz")})
  after = torch_import.to_state_dict(net)
  for key, value in after.items():
    name = key[len("backbone.hrnet."):]
    expected = imagenet[name] if name in imagenet and key.startswith("backbone.") else before[key]
    np.testing.assert_array_equal(value, expected, err_msg=key)
  del imagenet["layer1.0.conv1.weight"]
  np.savez(tmp_path / "bad.npz", **imagenet)
  with pytest.raises(ValueError, match="backbone weights missing.*layer1.0.conv1.weight"):
    dih.load_pretrained(config, {"generator": net}, {"generator": str(tmp_path / "bad.npz")})
  base = importlib.import_module("configs.idih").get_config("runlocal")
  with pytest.raises(ValueError, match="only 'generator' of a backboned"):
    dih.load_pretrained(base, {"generator": net}, {"generator": str(tmp_path / "imagenet.npz")})


def test_connectors_join_backbone_features():
  x = jnp.ones((1, 4, 4, 3))
  features = 2 * jnp.ones((1, 4, 4, 5))
  init = nnx.initializers.ones
  for mode, channels in [("cat", 8), ("catc", 3), ("sum", 3), ("", 3)]:
    connector = backboned.FeaturesConnector(mode, 3, 5, 3, init=init, rngs=nnx.Rngs(0))
    assert connector.output_channels == channels
    assert connector(x, features).shape == (1, 4, 4, channels)
  assert float(backboned.FeaturesConnector("sum", 3, 5, 3, init=init, rngs=nnx.Rngs(0))(
      x, features)[0, 0, 0, 0]) == 11.0  # 1 + 5 * 2 (ones kernel, zero bias).
  with pytest.raises(ValueError, match="valid"):
    backboned.FeaturesConnector("add", 3, 5, 3, init=init, rngs=nnx.Rngs(0))
