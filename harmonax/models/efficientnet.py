"""EfficientNet (B0 by default) in Flax NNX, with Harmonizer's two-stem input.

Mirrors lukemelas/EfficientNet-PyTorch, which Harmonizer builds on: MBConv
blocks (1x1 expansion, depthwise conv, squeeze-excitation, 1x1 projection),
swish, batch norm (PyTorch momentum 0.01 = Flax 0.99, eps 1e-3), drop connect
on the residual branches, and TensorFlow "SAME" padding (asymmetric for
stride 2: the extra row/column goes at the bottom/right, which is what
`padding="SAME"` does in JAX). Attribute names equal the PyTorch keys
(`_blocks.3._depthwise_conv`, ...) so `torch_import` maps weights one to one.

`stem="rgb"` is the classifier's stem (`_conv_stem`, `_bn0`: 3 -> 32 channels).
`stem="fg_bg"` is Harmonizer's: two 3x3 stride-2 convs 4 -> 16 channels, one
on (image, mask) and one on (image, 1 - mask), concatenated (`_conv_fg`,
`_bn_fg`, `_conv_bg`, `_bn_bg`).
"""

from collections.abc import Mapping
import dataclasses
import math
import re

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from harmonax import torch_import
from harmonax.models import layers

BN_MOMENTUM = 0.99  # PyTorch momentum 0.01.
BN_EPSILON = 1e-3


@dataclasses.dataclass(frozen=True)
class StageSpec:
  """One stage of MBConv blocks before width/depth scaling."""
  repeats: int
  kernel: int
  stride: int
  expand: int
  in_ch: int
  out_ch: int
  se_ratio: float = 0.25


# EfficientNet-B0 ('r1_k3_s11_e1_i32_o16_se0.25', ...).
B0_STAGES = (
    StageSpec(1, 3, 1, 1, 32, 16),
    StageSpec(2, 3, 2, 6, 16, 24),
    StageSpec(2, 5, 2, 6, 24, 40),
    StageSpec(3, 3, 2, 6, 40, 80),
    StageSpec(3, 5, 1, 6, 80, 112),
    StageSpec(4, 5, 2, 6, 112, 192),
    StageSpec(1, 3, 1, 6, 192, 320),
)


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
  """Channels scaled by `width`, rounded to a multiple of `divisor` (TF rule)."""
  if width == 1.0:
    return filters
  filters *= width
  new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
  if new < 0.9 * filters:  # Never round down by more than 10%.
    new += divisor
  return int(new)


def round_repeats(repeats: int, depth: float) -> int:
  """Blocks per stage scaled by `depth`, rounded up."""
  return int(math.ceil(depth * repeats))


def _bn(ch: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
  # Running statistics warm up from the batches (layers.BatchNorm): without it
  # a briefly trained model collapses in eval mode.
  return layers.BatchNorm(ch, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, *, stride: int = 1,
          groups: int = 1, bias: bool = False) -> nnx.Conv:
  # layers.conv_general_dilated runs the depthwise convs as shifted
  # multiply-adds (XLA's CPU grouped convolutions are naive loops).
  return nnx.Conv(cin, cout, (k, k), strides=stride, padding="SAME",
                  feature_group_count=groups, use_bias=bias,
                  conv_general_dilated=layers.conv_general_dilated, rngs=rngs)


class MBConv(nnx.Module):
  """Mobile inverted bottleneck with squeeze-excitation and drop connect."""

  def __init__(self, in_ch: int, out_ch: int, *, kernel: int, stride: int,
               expand: int, se_ratio: float, drop_rate: float, rngs: nnx.Rngs):
    mid = in_ch * expand
    self.expand = expand
    if expand != 1:
      self._expand_conv = _conv(in_ch, mid, 1, rngs)
      self._bn0 = _bn(mid, rngs)
    self._depthwise_conv = _conv(mid, mid, kernel, rngs, stride=stride, groups=mid)
    self._bn1 = _bn(mid, rngs)
    squeezed = max(1, int(in_ch * se_ratio))
    self._se_reduce = _conv(mid, squeezed, 1, rngs, bias=True)
    self._se_expand = _conv(squeezed, mid, 1, rngs, bias=True)
    self._project_conv = _conv(mid, out_ch, 1, rngs)
    self._bn2 = _bn(out_ch, rngs)
    self.residual = stride == 1 and in_ch == out_ch
    # Drop connect = dropping a whole sample's residual branch: dropout whose
    # mask is broadcast over H, W, C (it rescales by 1/keep like the original).
    self.drop_connect = nnx.Dropout(drop_rate, broadcast_dims=(1, 2, 3))

  def __call__(self, inputs: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    x = inputs
    if self.expand != 1:
      x = jax.nn.silu(self._bn0(self._expand_conv(x)))
    x = jax.nn.silu(self._bn1(self._depthwise_conv(x)))
    squeezed = jnp.mean(x, axis=(1, 2), keepdims=True)
    squeezed = self._se_expand(jax.nn.silu(self._se_reduce(squeezed)))
    x = jax.nn.sigmoid(squeezed) * x
    x = self._bn2(self._project_conv(x))
    if self.residual:
      if self.drop_connect.rate > 0 and rngs is not None:
        x = layers.dropout(self.drop_connect, x, rngs)  # x itself in eval mode.
      x = x + inputs
    return x


class EfficientNet(nnx.Module):
  """EfficientNet feature extractor: stem, MBConv blocks, 1x1 head (no classifier)."""

  def __init__(self, *, width: float = 1.0, depth: float = 1.0,
               stem: str = "fg_bg", drop_connect_rate: float = 0.2,
               stages: tuple[StageSpec, ...] = B0_STAGES, rngs: nnx.Rngs):
    if stem not in ("rgb", "fg_bg"):
      raise ValueError(f"stem must be 'rgb' or 'fg_bg', got {stem!r}")
    self.stem = stem
    stem_ch = round_filters(32, width)
    if stem == "rgb":
      self._conv_stem = _conv(3, stem_ch, 3, rngs, stride=2)
      self._bn0 = _bn(stem_ch, rngs)
    else:
      self._conv_fg = _conv(4, stem_ch // 2, 3, rngs, stride=2)
      self._bn_fg = _bn(stem_ch // 2, rngs)
      self._conv_bg = _conv(4, stem_ch // 2, 3, rngs, stride=2)
      self._bn_bg = _bn(stem_ch // 2, rngs)

    specs = []
    for stage in stages:
      in_ch = round_filters(stage.in_ch, width)
      out_ch = round_filters(stage.out_ch, width)
      for i in range(round_repeats(stage.repeats, depth)):
        specs.append((in_ch if i == 0 else out_ch, out_ch,
                      stage.stride if i == 0 else 1, stage))
    blocks = []
    for idx, (in_ch, out_ch, stride, stage) in enumerate(specs):
      blocks.append(MBConv(
          in_ch, out_ch, kernel=stage.kernel, stride=stride, expand=stage.expand,
          se_ratio=stage.se_ratio,
          # Linearly growing rate, as the reference: rate * idx / num_blocks.
          drop_rate=drop_connect_rate * idx / len(specs), rngs=rngs))
    self._blocks = nnx.List(blocks)
    self.out_channels = round_filters(1280, width)
    self._conv_head = _conv(specs[-1][1], self.out_channels, 1, rngs)
    self._bn1 = _bn(self.out_channels, rngs)

  def __call__(self, image: jax.Array, mask: jax.Array | None = None,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Head features [B, H/32, W/32, out_channels] of image [B,H,W,3] (+ mask).

    Drop connect needs `rngs` (a 'dropout' stream) and train mode; without
    rngs the residual branches are kept.
    """
    if self.stem == "rgb":
      x = jax.nn.silu(self._bn0(self._conv_stem(image)))
    else:
      if mask is None:
        raise ValueError("The 'fg_bg' stem needs a mask [B,H,W,1]")
      fg = jax.nn.silu(self._bn_fg(self._conv_fg(
          jnp.concatenate([image, mask], axis=-1))))
      bg = jax.nn.silu(self._bn_bg(self._conv_bg(
          jnp.concatenate([image, 1 - mask], axis=-1))))
      x = jnp.concatenate([fg, bg], axis=-1)
    for block in self._blocks:
      x = block(x, rngs=rngs)
    return jax.nn.silu(self._bn1(self._conv_head(x)))


# --- ImageNet-pretrained initialization ----------------------------------

_STEM_KEYS = re.compile(r"^(_conv_stem|_bn0)\.")


def _block_layout(stages=B0_STAGES) -> list[tuple[int, int, bool]]:
  """(stage, index in stage, has expansion) of every B0 block, in order."""
  return [(s, i, stage.expand != 1) for s, stage in enumerate(stages)
          for i in range(stage.repeats)]


def _torchvision_to_lukemelas(key: str) -> str | None:
  """Renames a torchvision efficientnet_b0 key; None for the stem/classifier."""
  m = re.match(r"^features\.(\d+)\.(\d+)\.(.*)$", key)
  if not m:
    return None  # classifier.*
  stage, idx, rest = int(m[1]), int(m[2]), m[3]
  if stage in (0, 8):  # Stem and head: features.S.0 conv, features.S.1 bn.
    conv, bn = ("_conv_stem.", "_bn0.") if stage == 0 else ("_conv_head.", "_bn1.")
    return (conv if idx == 0 else bn) + rest
  n = _block_layout().index((stage - 1, idx, stage != 1))
  # torchvision's block.j: [expand conv-bn,] depthwise conv-bn, SE, project.
  convs = (["_expand_conv", "_depthwise_conv"] if stage != 1 else ["_depthwise_conv"])
  bns = ["_bn0", "_bn1"] if stage != 1 else ["_bn1"]
  rules = {}
  for j, (conv, bn) in enumerate(zip(convs, bns)):
    rules[f"block.{j}.0."] = conv + "."
    rules[f"block.{j}.1."] = bn + "."
  se = len(convs)
  rules[f"block.{se}.fc1."] = "_se_reduce."
  rules[f"block.{se}.fc2."] = "_se_expand."
  rules[f"block.{se + 1}.0."] = "_project_conv."
  rules[f"block.{se + 1}.1."] = "_bn2."
  for prefix, name in rules.items():
    if rest.startswith(prefix):
      return f"_blocks.{n}.{name}{rest[len(prefix):]}"
  raise ValueError(f"Unrecognized torchvision EfficientNet key {key!r}")


_TIMM_RENAMES = (
    # Depthwise-separable first block: conv_dw, bn1, se, conv_pw, bn2.
    ("ds", {"conv_dw.": "_depthwise_conv.", "bn1.": "_bn1.",
            "se.conv_reduce.": "_se_reduce.", "se.conv_expand.": "_se_expand.",
            "conv_pw.": "_project_conv.", "bn2.": "_bn2."}),
    ("ir", {"conv_pw.": "_expand_conv.", "bn1.": "_bn0.", "conv_dw.": "_depthwise_conv.",
            "bn2.": "_bn1.", "se.conv_reduce.": "_se_reduce.",
            "se.conv_expand.": "_se_expand.", "conv_pwl.": "_project_conv.",
            "bn3.": "_bn2."}),
)


def _timm_to_lukemelas(key: str) -> str | None:
  """Renames a timm (tf_)efficientnet_b0 key; None for the classifier."""
  top = {"conv_stem.": "_conv_stem.", "bn1.": "_bn0.", "conv_head.": "_conv_head.",
         "bn2.": "_bn1."}
  for prefix, name in top.items():
    if key.startswith(prefix):
      return name + key[len(prefix):]
  m = re.match(r"^blocks\.(\d+)\.(\d+)\.(.*)$", key)
  if not m:
    return None  # classifier.*
  stage, idx, rest = int(m[1]), int(m[2]), m[3]
  n = _block_layout().index((stage, idx, stage != 0))
  renames = dict(_TIMM_RENAMES)["ds" if stage == 0 else "ir"]
  for prefix, name in renames.items():
    if rest.startswith(prefix):
      return f"_blocks.{n}.{name}{rest[len(prefix):]}"
  raise ValueError(f"Unrecognized timm EfficientNet key {key!r}")


def imagenet_to_lukemelas(state_dict: Mapping[str, np.ndarray]
                          ) -> dict[str, np.ndarray]:
  """An EfficientNet-B0 state dict (lukemelas, torchvision or timm names)
  with lukemelas names, without the classifier."""
  if any(k.startswith("features.") for k in state_dict):
    rename = _torchvision_to_lukemelas
  elif any(k.startswith("blocks.") for k in state_dict):
    rename = _timm_to_lukemelas
  elif any(k.startswith("_blocks.") for k in state_dict):
    rename = lambda k: None if k.startswith("_fc.") else k
  else:
    raise ValueError("Not an EfficientNet-B0 state dict (no 'features.', "
                     f"'blocks.' or '_blocks.' keys); keys: {sorted(state_dict)[:8]}...")
  out = {}
  for key, value in state_dict.items():
    new = rename(key)
    if new is not None:
      out[new] = np.asarray(value)
  return out


def load_imagenet(net: EfficientNet, state_dict: Mapping[str, np.ndarray]) -> None:
  """Initializes `net` in place from an ImageNet-pretrained EfficientNet-B0.

  Accepts lukemelas, torchvision and timm key names. With the 'fg_bg' stem the
  pretrained RGB stem is dropped and the two new stems keep their random
  initialization, as in the official Harmonizer training code.

  Raises:
    torch_import.StateDictMismatchError: when a block or shape does not match
      (e.g. a B0 state dict for a width-scaled net).
  """
  weights = imagenet_to_lukemelas(state_dict)
  if net.stem == "fg_bg":
    weights = {k: v for k, v in weights.items() if not _STEM_KEYS.match(k)}
    current = torch_import.to_state_dict(net)
    for key in current:
      if key.startswith(("_conv_fg.", "_bn_fg.", "_conv_bg.", "_bn_bg.")):
        weights[key] = current[key]
  torch_import.load_into(net, weights, context="ImageNet EfficientNet-B0")
  # Pretrained statistics are kept as PyTorch would (an EMA from the first
  # step) also when the file has no num_batches_tracked; the new stems warm up.
  for path, bn in nnx.iter_modules(net):
    if isinstance(bn, layers.BatchNorm) and path[0] not in ("_bn_fg", "_bn_bg"):
      n = max(int(bn.num_batches_tracked[...]), round(1 / (1 - bn.momentum)))
      bn.num_batches_tracked[...] = jnp.asarray(n, jnp.int32)
