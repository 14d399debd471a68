"""EfficientNet: key tree, parameter count, equivalence with a PyTorch
reference of lukemelas' forward pass, and ImageNet weight import."""

import ast
import os

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harmonax import torch_import
from harmonax import variables
from harmonax.models import efficientnet

KEYS = os.path.join(os.path.dirname(__file__), "data", "torch_keys",
                    "harmonizer_keys.txt")


def _official_backbone_shapes():
  shapes = {}
  with open(KEYS) as f:
    for line in f:
      if line.startswith("#") or not line.strip():
        continue
      key, shape = line.split("\t")[:2]
      if key.startswith("backbone.") and not key.endswith("num_batches_tracked"):
        shapes[key[len("backbone."):]] = tuple(ast.literal_eval(shape))
  return shapes


def test_b0_tree_matches_official_keys_and_param_count():
  net = nnx.eval_shape(lambda: efficientnet.EfficientNet(rngs=variables.rngs(0)))
  assert torch_import.expected_shapes(net) == _official_backbone_shapes()
  params = sum(x.size for x in jax.tree.leaves(nnx.state(net, nnx.Param)))
  # harmonizer_keys.txt: 4,726,882 in all, minus the regressor's 719,046.
  assert params == 4_007_836


def _torch_same_conv(x, w, b, stride, groups=1):
  """lukemelas Conv2dDynamicSamePadding: TF 'SAME', extra pad bottom/right."""
  ih, iw = x.shape[-2:]
  kh, kw = w.shape[-2:]
  oh, ow = -(-ih // stride), -(-iw // stride)
  ph = max((oh - 1) * stride + kh - ih, 0)
  pw = max((ow - 1) * stride + kw - iw, 0)
  x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
  return F.conv2d(x, w, b, stride, 0, 1, groups)


def _torch_forward(sd, strides, image, mask, stem):
  """The official forward pass (eval mode) written with torch.nn.functional."""
  t = {k: torch.from_numpy(np.array(v)) for k, v in sd.items()}
  bn = lambda x, p: F.batch_norm(x, t[p + ".running_mean"], t[p + ".running_var"],
                                 t[p + ".weight"], t[p + ".bias"], False, 0.0, 1e-3)
  swish = lambda x: x * torch.sigmoid(x)
  img = torch.from_numpy(image).permute(0, 3, 1, 2)
  if stem == "rgb":
    x = swish(bn(_torch_same_conv(img, t["_conv_stem.weight"], None, 2), "_bn0"))
  else:
    m = torch.from_numpy(mask).permute(0, 3, 1, 2)
    fg = swish(bn(_torch_same_conv(torch.cat([img, m], 1), t["_conv_fg.weight"], None, 2), "_bn_fg"))
    bg = swish(bn(_torch_same_conv(torch.cat([img, 1 - m], 1), t["_conv_bg.weight"], None, 2), "_bn_bg"))
    x = torch.cat([fg, bg], 1)
  for n, stride in enumerate(strides):
    p = f"_blocks.{n}."
    inputs = x
    if p + "_expand_conv.weight" in t:
      x = swish(bn(_torch_same_conv(x, t[p + "_expand_conv.weight"], None, 1), p + "_bn0"))
    w = t[p + "_depthwise_conv.weight"]
    x = swish(bn(_torch_same_conv(x, w, None, stride, groups=w.shape[0]), p + "_bn1"))
    s = F.adaptive_avg_pool2d(x, 1)
    s = F.conv2d(swish(F.conv2d(s, t[p + "_se_reduce.weight"], t[p + "_se_reduce.bias"])),
                 t[p + "_se_expand.weight"], t[p + "_se_expand.bias"])
    x = torch.sigmoid(s) * x
    x = bn(F.conv2d(x, t[p + "_project_conv.weight"]), p + "_bn2")
    if stride == 1 and inputs.shape == x.shape:
      x = x + inputs
  x = swish(bn(F.conv2d(x, t["_conv_head.weight"]), "_bn1"))
  return x.permute(0, 2, 3, 1).numpy()


def _randomize_batch_stats(net, seed):
  rng = np.random.default_rng(seed)
  for _, m in nnx.iter_modules(net):
    if isinstance(m, nnx.BatchNorm):
      shape = m.mean.value.shape
      m.mean.value = jnp.asarray(rng.normal(0, 0.1, shape), jnp.float32)
      m.var.value = jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
      m.scale.value = jnp.asarray(rng.uniform(0.5, 1.5, shape), jnp.float32)
      m.bias.value = jnp.asarray(rng.normal(0, 0.1, shape), jnp.float32)


def _small(stem="fg_bg", drop_connect_rate=0.2, depth=0.34):
  return efficientnet.EfficientNet(width=0.25, depth=depth, stem=stem,
                                   drop_connect_rate=drop_connect_rate,
                                   rngs=nnx.Rngs(0))


@nnx.jit  # Eagerly, each of the backbone's ops would compile on its own.
def _forward(net, image, mask, rngs=None):
  return net(image, mask, rngs=rngs)


@pytest.mark.parametrize("stem,size", [("fg_bg", (45, 37)), ("rgb", (32, 48))])
def test_matches_pytorch_reference(stem, size):
  net = _small(stem)
  _randomize_batch_stats(net, 1)
  net.eval()
  rng = np.random.default_rng(2)
  image = rng.uniform(0, 1, (2, *size, 3)).astype(np.float32)
  mask = (rng.uniform(0, 1, (2, *size, 1)) > 0.5).astype(np.float32)
  ours = np.asarray(_forward(net, jnp.asarray(image), jnp.asarray(mask)))
  strides = [b._depthwise_conv.strides for b in net._blocks]
  strides = [s[0] if isinstance(s, tuple) else s for s in strides]
  assert strides.count(2) == 4  # Blocks that halve the size, as in B0.
  ref = _torch_forward(torch_import.to_state_dict(net), strides, image, mask, stem)
  assert ours.shape == ref.shape == (2, -(-size[0] // 32), -(-size[1] // 32), 320)
  np.testing.assert_allclose(ours, ref, atol=2e-4, rtol=1e-4)


def test_drop_connect_only_in_training_with_rngs():
  net = _small(drop_connect_rate=0.9)
  x = jnp.asarray(np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)), jnp.float32)
  m = jnp.ones((4, 32, 32, 1))
  net.eval()
  a = _forward(net, x, m, nnx.Rngs(dropout=0))
  np.testing.assert_array_equal(a, _forward(net, x, m))
  net.train()
  b = _forward(net, x, m, nnx.Rngs(dropout=0))
  c = _forward(net, x, m, nnx.Rngs(dropout=1))
  assert np.abs(np.asarray(b) - np.asarray(c)).max() > 1e-3


def _b0_lukemelas_state_dict(seed=0, width=1.0):
  """A lukemelas EfficientNet-B0 ImageNet state dict with random values.

  width < 1 keeps B0's block layout with fewer channels (cheaper to build).
  """
  net = nnx.eval_shape(lambda: efficientnet.EfficientNet(
      width=width, stem="rgb", rngs=variables.rngs(0)))
  rng = np.random.default_rng(seed)
  sd = {k: rng.normal(0, 1, s).astype(np.float32)
        for k, s in torch_import.expected_shapes(net).items()}
  sd["_fc.weight"] = np.zeros((1000, net.out_channels), np.float32)
  sd["_fc.bias"] = np.zeros((1000,), np.float32)
  return sd


# torchvision's efficientnet_b0 layout, written from its module tree:
# features.0 stem, features.1..7 stages of MBConv (block.j = [expand conv-bn,]
# depthwise conv-bn, SE fc1/fc2, project conv-bn), features.8 head, classifier.1.
_REPEATS = (1, 2, 2, 3, 3, 4, 1)


def _torchvision_names():
  names = {"_conv_stem.": "features.0.0.", "_bn0.": "features.0.1.",
           "_conv_head.": "features.8.0.", "_bn1.": "features.8.1.",
           "_fc.": "classifier.1."}
  n = 0
  for stage, repeats in enumerate(_REPEATS, start=1):
    for i in range(repeats):
      p, q = f"_blocks.{n}.", f"features.{stage}.{i}.block."
      j = 0
      if stage != 1:
        names[p + "_expand_conv."], names[p + "_bn0."] = q + "0.0.", q + "0.1."
        j = 1
      names[p + "_depthwise_conv."] = f"{q}{j}.0."
      names[p + "_bn1."] = f"{q}{j}.1."
      names[p + "_se_reduce."] = f"{q}{j + 1}.fc1."
      names[p + "_se_expand."] = f"{q}{j + 1}.fc2."
      names[p + "_project_conv."] = f"{q}{j + 2}.0."
      names[p + "_bn2."] = f"{q}{j + 2}.1."
      n += 1
  return names


def _timm_names():
  names = {"_conv_stem.": "conv_stem.", "_bn0.": "bn1.", "_conv_head.": "conv_head.",
           "_bn1.": "bn2.", "_fc.": "classifier."}
  n = 0
  for stage, repeats in enumerate(_REPEATS):
    for i in range(repeats):
      p, q = f"_blocks.{n}.", f"blocks.{stage}.{i}."
      if stage == 0:
        pairs = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.",
                 "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
      else:
        pairs = {"_expand_conv.": "conv_pw.", "_bn0.": "bn1.", "_depthwise_conv.": "conv_dw.",
                 "_bn1.": "bn2.", "_project_conv.": "conv_pwl.", "_bn2.": "bn3."}
      pairs.update({"_se_reduce.": "se.conv_reduce.", "_se_expand.": "se.conv_expand."})
      names.update({p + a: q + b for a, b in pairs.items()})
      n += 1
  return names


def _rename(sd, names):
  out = {}
  for key, value in sd.items():
    prefix = max((p for p in names if key.startswith(p)), key=len)
    out[names[prefix] + key[len(prefix):]] = value
  return out


@pytest.mark.parametrize("flavor", ["lukemelas", "torchvision", "timm"])
def test_load_imagenet_fills_blocks_and_head_keeps_new_stems(flavor):
  lukemelas = _b0_lukemelas_state_dict(width=0.25)
  sd = {"lukemelas": lambda: lukemelas,
        "torchvision": lambda: _rename(lukemelas, _torchvision_names()),
        "timm": lambda: _rename(lukemelas, _timm_names())}[flavor]()
  net = _small(depth=1.0)
  stem_before = np.asarray(net._conv_fg.kernel.value).copy()
  efficientnet.load_imagenet(net, sd)
  got = torch_import.to_state_dict(net)
  for key, value in lukemelas.items():
    if key.startswith(("_fc.", "_conv_stem.", "_bn0.")):
      continue
    np.testing.assert_array_equal(got[key], value, err_msg=key)
  np.testing.assert_array_equal(net._conv_fg.kernel.value, stem_before)


def test_load_imagenet_errors_name_the_problem():
  net = _small()  # Fewer blocks than B0.
  with pytest.raises(torch_import.StateDictMismatchError, match="_blocks.15"):
    efficientnet.load_imagenet(net, _b0_lukemelas_state_dict(width=0.25))
  with pytest.raises(ValueError, match="Not an EfficientNet-B0 state dict"):
    efficientnet.load_imagenet(net, {"conv1.weight": np.zeros((3,))})
