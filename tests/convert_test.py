"""Tests of weight conversion: key lists, round trips, numerics against PyTorch, errors."""

import importlib
import os

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest

from harmonax import checkpoint
from harmonax import conversion
from harmonax import torch_import
from harmonax import variables
from harmonax.models import get_family
from harmonax.models import layers
from models_dih_test import random_state_dict

torch = pytest.importorskip("torch")
F = torch.nn.functional

KEYS_DIR = os.path.join(os.path.dirname(__file__), "data", "torch_keys")


def read_key_list(name: str) -> dict[str, tuple[int, ...]]:
  """tests/data/torch_keys/<name>_keys.txt -> {key: shape}."""
  shapes = {}
  with open(os.path.join(KEYS_DIR, f"{name}_keys.txt")) as f:
    for line in f:
      if line.startswith("#") or not line.strip():
        continue
      key, shape = line.split("\t")[:2]
      shapes[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
  return shapes


def _config(name, arg=""):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def _official_state_dict(name, seed):
  shapes = read_key_list(name)
  state = random_state_dict(
      {k: s for k, s in shapes.items() if not k.endswith("num_batches_tracked")}, seed)
  state.update({k: np.array(3, np.int64) for k in shapes if k.endswith("num_batches_tracked")})
  return state


@pytest.mark.parametrize("name", ["idih", "issam"])
def test_module_tree_equals_official_keys(name):
  net = nnx.eval_shape(lambda: get_family("dih").create_networks(_config(name), variables.rngs(0)))
  official = {k: s for k, s in read_key_list(name).items()
              if not k.endswith("num_batches_tracked")}
  assert torch_import.expected_shapes(net["generator"]) == official


@pytest.mark.parametrize("name", ["idih", "issam"])
def test_convert_cli_round_trip_full_size(name, tmp_path):
  state = _official_state_dict(name, seed=0)
  path = tmp_path / f"{name}.pth"
  torch.save({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()}, path)
  out = tmp_path / "converted"
  conversion.convert(name, conversion.parse_checkpoint_arg(str(path)), str(out))
  config, networks = checkpoint.load_networks(out)
  assert (config.model.name, config.model.variant) == ("dih", name)
  back = torch_import.to_state_dict(networks["generator"])
  expected = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
  assert sorted(back) == sorted(expected)
  for key, value in expected.items():
    np.testing.assert_array_equal(back[key], value, err_msg=key)


def test_single_conv_matches_torch():
  conv = torch.nn.Conv2d(3, 5, 3, stride=2, padding=1)
  net = nnx.eval_shape(lambda: layers.conv(3, 5, 3, stride=2, padding=1, rngs=variables.rngs(0)))
  torch_import.load_into(net, {k: v.detach().numpy() for k, v in conv.state_dict().items()})
  x = np.random.default_rng(0).standard_normal((2, 3, 9, 8)).astype(np.float32)
  expected = conv(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
  np.testing.assert_allclose(net(jnp.asarray(x.transpose(0, 2, 3, 1))), expected, atol=1e-5)


def test_transposed_conv_and_align_corners_resize_match_torch():
  deconv = torch.nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1)
  net = nnx.eval_shape(lambda: layers.ConvTranspose2d(4, 6, 4, stride=2, padding=1,
                                                      rngs=nnx.Rngs(0)))
  torch_import.load_into(net, {k: v.detach().numpy() for k, v in deconv.state_dict().items()})
  x = np.random.default_rng(1).standard_normal((1, 4, 5, 7)).astype(np.float32)
  expected = deconv(torch.from_numpy(x)).detach().numpy().transpose(0, 2, 3, 1)
  x_nhwc = jnp.asarray(x.transpose(0, 2, 3, 1))
  np.testing.assert_allclose(net(x_nhwc), expected, atol=1e-5)
  for size in [(10, 14), (3, 2), (1, 9), (5, 7)]:
    expected = F.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                             align_corners=True).numpy().transpose(0, 2, 3, 1)
    # Gathered taps, and (dense_max: HRNet's upsampling) products with their weights.
    for dense_max in (0, 8):
      np.testing.assert_allclose(
          layers.resize_bilinear_align_corners(x_nhwc, size, dense_max=dense_max), expected,
          atol=1e-6, err_msg=f"{size}, dense_max={dense_max}")


# An independent PyTorch reading of the official forward passes, driven by the
# state dict's key names (iharm/model/modeling/conv_autoencoder.py, unet.py).


def _t_block(sd, prefix, x, stride, padding, act, transpose=False):
  op = F.conv_transpose2d if transpose else F.conv2d
  x = op(x, sd[f"{prefix}.0.weight"], sd.get(f"{prefix}.0.bias"), stride=stride, padding=padding)
  if f"{prefix}.1.running_mean" in sd:
    x = F.batch_norm(x, sd[f"{prefix}.1.running_mean"], sd[f"{prefix}.1.running_var"],
                     sd[f"{prefix}.1.weight"], sd[f"{prefix}.1.bias"], False, 0.0, 1e-5)
  return act(x)


def _t_fusion(sd, x, image):
  a = torch.sigmoid(3 * F.conv2d(x, sd["decoder.conv_attention.weight"],
                                 sd["decoder.conv_attention.bias"]))
  return a * image + (1 - a) * F.conv2d(x, sd["decoder.to_rgb.weight"], sd["decoder.to_rgb.bias"])


def torch_dih(sd, image, mask, backbone=None):
  """backbone: {encoder level: features} concatenated to that level's input ('cat')."""
  depth = sum(k.endswith(".block.0.weight") and k.startswith("encoder") for k in sd)
  names = ["encoder.block0", "encoder.block1"] + [
      f"encoder.blocks_connected.block{i}" for i in range(2, depth)]
  outs, x = [], torch.cat([image, mask], 1)
  for i, name in enumerate(names):
    if i in (backbone or {}):
      x = torch.cat([x, backbone[i]], 1)
    x = _t_block(sd, f"{name}.block", x, 2, int(i < depth - 1), F.elu)
    outs.append(x)
  outs = outs[::-1]
  x = outs[0]
  for d in range(depth):
    x = _t_block(sd, f"decoder.deconv_blocks.{d}.block", x, 2, int(d > 0), F.elu, True)
    if d < depth - 1:
      x = x + outs[d + 1]
  return _t_fusion(sd, x, image)


def _t_gate(sd, prefix, x):
  pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)
  h = F.relu(F.linear(pooled, sd[f"{prefix}.0.weight"], sd[f"{prefix}.0.bias"]))
  return torch.sigmoid(F.linear(h, sd[f"{prefix}.2.weight"], sd[f"{prefix}.2.bias"]))[
      ..., None, None] * x


def _t_double(sd, prefix, x):
  for j in range(2):
    x = _t_block(sd, f"{prefix}.block.{j}.block", x, 1, 1, F.relu)
  return x


def torch_ssam(sd, image, mask, features=False, backbone=None):
  """The iS2AM output, or with `features` its last decoder features (PCT-Net);
  backbone: {encoder level: features} concatenated to that level's input ('cat')."""
  depth = 2 + len({k.split(".")[2] for k in sd if k.startswith("encoder.blocks_connected")})
  names = ["encoder.block0", "encoder.block1"] + [
      f"encoder.blocks_connected.block{i}" for i in range(2, depth)]
  outs, x = [], torch.cat([image, mask], 1)
  for i, name in enumerate(names):
    if i in (backbone or {}):
      x = torch.cat([x, backbone[i]], 1)
    y = _t_double(sd, f"{name}.convs", x)
    outs.append(y)
    x = F.max_pool2d(y, 2) if i < depth - 1 else y
  x = outs[-1]
  for d, skip in enumerate(outs[-2::-1]):
    p = f"decoder.up_blocks.{d}"
    up = F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)
    x = torch.cat([skip, _t_block(sd, f"{p}.upconv.1.block", up, 1, 1, F.relu)], 1)
    if f"{p}.attention.mask_blurring.weight" in sd:
      a = f"{p}.attention"
      m = F.interpolate(mask, size=x.shape[-2:], mode="bilinear", align_corners=True)
      m = F.conv2d(m, sd[f"{a}.mask_blurring.weight"], padding=3)
      fg = _t_gate(sd, f"{a}.foreground_gate.attention_transform", x)
      for j in range(2):
        fg = _t_block(sd, f"{a}.learning_block.{j}.block", fg, 1, 1, F.relu)
      mix = _t_gate(sd, f"{a}.mix_gate.attention_transform", x)
      bg = _t_gate(sd, f"{a}.background_gate.attention_transform", x)
      x = m * (fg + mix) + (1 - m) * bg
    x = _t_double(sd, f"{p}.convs", x)
  return x if features else _t_fusion(sd, x, image)


@pytest.mark.parametrize("name, torch_forward, size", [
    ("idih", torch_dih, 64), ("issam", torch_ssam, 32)])
def test_converted_network_matches_torch_forward(name, torch_forward, size, tmp_path):
  config = _config(name, "runlocal")
  abstract = nnx.eval_shape(lambda: get_family("dih").create_networks(config, variables.rngs(0)))
  state = random_state_dict(torch_import.expected_shapes(abstract["generator"]), seed=3)
  np.savez(tmp_path / "w.npz", **state)
  _, networks = conversion.convert(name, {"default": str(tmp_path / "w.npz")}, None, config)
  rng = np.random.default_rng(4)
  image = rng.standard_normal((2, size, size, 3)).astype(np.float32)
  mask = np.zeros((2, size, size, 1), np.float32)
  mask[:, size // 4: size // 2, size // 3:] = 1.0
  ours = nnx.jit(lambda n, x, m: n(x, m))(networks["generator"], image, mask)
  sd = {k: torch.from_numpy(v) for k, v in state.items()}
  theirs = torch_forward(sd, torch.from_numpy(image.transpose(0, 3, 1, 2)),
                         torch.from_numpy(mask.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(ours, theirs.numpy().transpose(0, 2, 3, 1), atol=2e-4, rtol=1e-4)


def test_mismatches_give_clear_errors(tmp_path):
  state = _official_state_dict("issam", seed=1)
  key = "decoder.to_rgb.weight"
  state["decoder.extra.weight"] = np.zeros((1,), np.float32)
  state[key] = np.zeros((3, 16, 1, 1), np.float32)
  del state["decoder.to_rgb.bias"]
  path = tmp_path / "bad.npz"
  np.savez(path, **state)
  with pytest.raises(torch_import.StateDictMismatchError) as info:
    conversion.convert("issam", {"default": str(path)}, None)
  message = str(info.value)
  assert "missing keys (1): decoder.to_rgb.bias" in message
  assert "unexpected keys (1): decoder.extra.weight" in message
  assert f"shape mismatch at {key}: expected (3, 32, 1, 1), got (3, 16, 1, 1)" in message


def test_bad_arguments_give_clear_errors(tmp_path):
  assert conversion.parse_checkpoint_arg("a.pth") == {"default": "a.pth"}
  assert conversion.parse_checkpoint_arg("g=a.pth,d=b.pth") == {"g": "a.pth", "d": "b.pth"}
  with pytest.raises(ValueError, match="twice"):
    conversion.parse_checkpoint_arg("g=a.pth,g=b.pth")
  with pytest.raises(ValueError, match="not role=PATH"):
    conversion.parse_checkpoint_arg("g=a.pth,b.pth")
  with pytest.raises(FileNotFoundError, match="not found"):
    conversion.convert("idih", {"default": str(tmp_path / "none.pth")}, None)
  with pytest.raises(ValueError, match="takes one checkpoint"):
    state = _official_state_dict("idih", seed=0)
    np.savez(tmp_path / "a.npz", **state)
    conversion.convert("idih", {"g": str(tmp_path / "a.npz"), "d": str(tmp_path / "a.npz")}, None)
  with pytest.raises(ValueError, match="No recipe configs/nope.py; valid --model values"):
    conversion.convert("nope", {"default": "x.pth"}, None)
  not_a_state = tmp_path / "list.pth"
  torch.save([1, 2], not_a_state)
  with pytest.raises(ValueError, match="holds no state dict"):
    torch_import.load_state_dict(str(not_a_state))


class _Payload:
  """Pickles as a call of os.system: what a malicious checkpoint holds."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_a_pth_holding_code_is_refused_plainly(tmp_path):
  path, marker = tmp_path / "evil.pth", tmp_path / "pwned"
  torch.save({"weight": torch.zeros(2), "x": _Payload(marker)}, path)
  with pytest.raises(torch_import.CheckpointFileError) as info:
    torch_import.load_state_dict(str(path))
  message = str(info.value)
  assert message.startswith(f"{path}: refused to load: the file contains pickled code")
  assert "system" in message and "weights_only" not in message
  assert not marker.exists()


def test_files_that_are_not_checkpoints_are_named_for_what_they_are(tmp_path):
  # They used to reach the unpickler and read as "contains pickled code".
  cases = {
      "page.pth": (b"<!DOCTYPE html><html>404</html>", "an HTML page"),
      "lfs.pth": (b"version https://git-lfs.github.com/spec/v1\noid sha256:ab", "git-lfs pointer"),
      "empty.pth": (b"", "it is empty"),
      "page.npz": (b"<html></html>", r"not an .npz \(zip\) archive: it is an HTML page"),
      "text.pt": (b"weights", r"not a PyTorch checkpoint \(zip or pickle\); it starts with "
                              r"b'weights'"),
  }
  for name, (data, message) in cases.items():
    (tmp_path / name).write_bytes(data)
    with pytest.raises(torch_import.CheckpointFileError, match=message):
      torch_import.load_state_dict(str(tmp_path / name))
  # torch.save's zip format and its legacy pickle format both still load.
  for legacy in (False, True):
    path = tmp_path / f"legacy{legacy}.pth"
    torch.save({"a": torch.ones(2)}, path, _use_new_zipfile_serialization=not legacy)
    np.testing.assert_array_equal(torch_import.load_state_dict(str(path))["a"], [1, 1])


def test_load_state_dict_unwraps_and_strips_prefix(tmp_path):
  path = tmp_path / "wrapped.pth"
  torch.save({"state_dict": {"module.a.weight": torch.ones(2)}, "epoch": 3}, path)
  assert list(torch_import.load_state_dict(str(path))) == ["a.weight"]


def test_command_line(tmp_path):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  state = _official_state_dict("issam", seed=2)
  np.savez(tmp_path / "issam.npz", **state)
  out = tmp_path / "out"
  root = os.path.join(os.path.dirname(__file__), "..")
  result = subprocess.run(
      [sys.executable, "-m", "harmonax.convert", "--model=issam",
       f"--torch_checkpoint={tmp_path / 'issam.npz'}", f"--output={out}"],
      cwd=root, capture_output=True, text=True, timeout=300,
      env={**os.environ, "JAX_PLATFORMS": "cpu"})
  assert result.returncode == 0, result.stderr[-2000:]
  _, networks = checkpoint.load_networks(out)
  np.testing.assert_array_equal(
      torch_import.to_state_dict(networks["generator"])["decoder.to_rgb.weight"],
      state["decoder.to_rgb.weight"])
