"""HRNetV2 with the OCR head (Wang et al. 2019; Yuan et al. 2020), NHWC, Flax NNX.

The backbone of the iharm models with a backbone (SamsungLabs/image_harmonization,
iharm/model/modeling/hrnet_ocr.py and ocr.py): a stride-4 stem, a Bottleneck
layer, then stages of 2, 3 and 4 parallel branches (widths w, 2w, 4w, 8w at
strides 4, 8, 16, 32) that exchange information after every module. The four
branch outputs are upsampled to stride 4 and concatenated (HRNetV2); the OCR
head turns them into 2 * ocr_width channels, using the soft mask regions
(mask, 1 - mask) as its two "object" regions.

Module names mirror the official code one to one, list indices and None
entries included, so `harmonax.torch_import` maps official state dicts (and
HRNet-Image-Classification's ImageNet weights) directly. `stem` (64 in every
official model) and blocks/modules below the official counts are only for tiny
CPU test models.
"""

from collections.abc import Callable

from flax import nnx
import jax
import jax.numpy as jnp

from harmonax.models import layers

Init = Callable  # A kernel initializer (the family's XavierGluon).
# The branches' upsampling (fuse layers, the final concatenation) resizes maps
# of up to this many rows and columns as products with dense weight matrices
# rather than gathers (`layers.resize_bilinear_align_corners`): on the 2-core
# CPU, HRNet18 + iDIH256's predict at 256x256 took 0.43 s against 0.59 s
# gathered, and at 1024 3.6 s against 5.9 s (benchmarks/dense_resize.py,
# BENCHMARKS.md). 256 covers the branches of a 1024 input.
DENSE_RESIZE_MAX = 256


class ReLU(nnx.Module):
  """nn.ReLU as a step of a list (keeps the PyTorch indices aligned)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return jax.nn.relu(x)


def run(steps: nnx.List, x: jax.Array) -> jax.Array:
  """nn.Sequential: applies the steps in order (nested lists included)."""
  for step in steps:
    x = run(step, x) if isinstance(step, nnx.List) else step(x)
  return x


def conv_bn(in_ch: int, out_ch: int, kernel_size: int, stride: int, relu: bool,
            init: Init, rngs: nnx.Rngs) -> nnx.List:
  """[Conv2d(bias=False, 'same' padding), BatchNorm2d(, ReLU)]."""
  steps = [layers.conv(in_ch, out_ch, kernel_size, stride=stride, padding=kernel_size // 2,
                       use_bias=False, kernel_init=init, rngs=rngs),
           layers.batch_norm(out_ch, rngs=rngs)]
  return nnx.List(steps + [ReLU()] if relu else steps)


class BasicBlock(nnx.Module):
  """BasicBlockV1b: two 3x3 convs and a residual."""
  expansion = 1

  def __init__(self, in_ch: int, planes: int, downsample: bool, init: Init, rngs: nnx.Rngs):
    kw = dict(padding=1, use_bias=False, kernel_init=init, rngs=rngs)
    self.conv1 = layers.conv(in_ch, planes, 3, **kw)
    self.bn1 = layers.batch_norm(planes, rngs=rngs)
    self.conv2 = layers.conv(planes, planes, 3, **kw)
    self.bn2 = layers.batch_norm(planes, rngs=rngs)
    self.downsample = nnx.data(conv_bn(in_ch, planes, 1, 1, False, init, rngs)
                               if downsample else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    residual = x if self.downsample is None else run(self.downsample, x)
    return jax.nn.relu(out + residual)


class Bottleneck(nnx.Module):
  """BottleneckV1b: 1x1, 3x3, 1x1 (x4 channels) convs and a residual."""
  expansion = 4

  def __init__(self, in_ch: int, planes: int, downsample: bool, init: Init, rngs: nnx.Rngs):
    out_ch = planes * self.expansion
    kw = dict(use_bias=False, kernel_init=init, rngs=rngs)
    self.conv1 = layers.conv(in_ch, planes, 1, **kw)
    self.bn1 = layers.batch_norm(planes, rngs=rngs)
    self.conv2 = layers.conv(planes, planes, 3, padding=1, **kw)
    self.bn2 = layers.batch_norm(planes, rngs=rngs)
    self.conv3 = layers.conv(planes, out_ch, 1, **kw)
    self.bn3 = layers.batch_norm(out_ch, rngs=rngs)
    self.downsample = nnx.data(conv_bn(in_ch, out_ch, 1, 1, False, init, rngs)
                               if downsample else None)

  def __call__(self, x: jax.Array) -> jax.Array:
    out = jax.nn.relu(self.bn1(self.conv1(x)))
    out = jax.nn.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    residual = x if self.downsample is None else run(self.downsample, x)
    return jax.nn.relu(out + residual)


def make_layer(block: type, in_ch: int, planes: int, num_blocks: int, init: Init,
               rngs: nnx.Rngs) -> nnx.List:
  """num_blocks residual blocks; the first projects when the channels change."""
  out_ch = planes * block.expansion
  return nnx.List([block(in_ch if i == 0 else out_ch, planes, i == 0 and in_ch != out_ch,
                         init, rngs) for i in range(num_blocks)])


class HighResolutionModule(nnx.Module):
  """Parallel branches of BasicBlocks, then every branch receives the sum of all
  (higher resolutions through strided 3x3 convs, lower ones through a 1x1 conv
  and align-corners bilinear upsampling)."""

  def __init__(self, channels: list[int], num_blocks: int, init: Init, rngs: nnx.Rngs):
    n = len(channels)
    self.branches = nnx.List([make_layer(BasicBlock, c, c, num_blocks, init, rngs)
                              for c in channels])
    fuse_layers = []
    for i in range(n):
      row = []
      for j in range(n):
        if j > i:
          row.append(conv_bn(channels[j], channels[i], 1, 1, False, init, rngs))
        elif j == i:
          row.append(None)
        else:  # i - j strided convs; only the last changes channels, and has no ReLU.
          row.append(nnx.List([
              conv_bn(channels[j], channels[i] if k == i - j - 1 else channels[j], 3, 2,
                      k < i - j - 1, init, rngs) for k in range(i - j)]))
      fuse_layers.append(nnx.List(row))
    self.fuse_layers = nnx.List(fuse_layers)

  def __call__(self, xs: list[jax.Array]) -> list[jax.Array]:
    xs = [run(branch, x) for branch, x in zip(self.branches, xs)]
    fused = []
    for i, row in enumerate(self.fuse_layers):
      y = xs[0] if i == 0 else run(row[0], xs[0])
      for j in range(1, len(xs)):
        if j == i:
          y = y + xs[j]
        elif j > i:
          y = y + layers.resize_bilinear_align_corners(run(row[j], xs[j]), xs[i].shape[1:3],
                                                       dense_max=DENSE_RESIZE_MAX)
        else:
          y = y + run(row[j], xs[j])
      fused.append(jax.nn.relu(y))
    return fused


def make_transition(pre: list[int], cur: list[int], init: Init, rngs: nnx.Rngs) -> nnx.List:
  """Per new-stage branch: None (unchanged), a 3x3 conv (new width) or, for a
  new branch, strided 3x3 convs from the previous lowest resolution."""
  steps = []
  for i, c in enumerate(cur):
    if i < len(pre):
      steps.append(conv_bn(pre[i], c, 3, 1, True, init, rngs) if c != pre[i] else None)
    else:
      n = i + 1 - len(pre)
      steps.append(nnx.List([conv_bn(pre[-1], c if k == n - 1 else pre[-1], 3, 2, True,
                                     init, rngs) for k in range(n)]))
  return nnx.List(steps)


def spatial_gather(feats: jax.Array, probs: jax.Array) -> jax.Array:
  """SpatialGather_Module: region descriptors [B, K, 1, C] as softmax(probs over
  the pixels)-weighted sums of feats [B, H, W, C]; probs [B, H, W, K]."""
  b, h, w, k = probs.shape
  weights = jax.nn.softmax(probs.reshape(b, h * w, k), axis=1)
  context = jnp.einsum("bnk,bnc->bkc", weights, feats.reshape(b, h * w, -1))
  return context[:, :, None, :]


class ObjectAttentionBlock(nnx.Module):
  """ObjectAttentionBlock2D (scale 1): every pixel attends over the regions."""

  def __init__(self, ch: int, key_ch: int, init: Init, rngs: nnx.Rngs):
    def block(i, o):  # [Conv1x1, [BN, ReLU]], the official nesting.
      return [layers.conv(i, o, 1, use_bias=False, kernel_init=init, rngs=rngs),
              nnx.List([layers.batch_norm(o, rngs=rngs), ReLU()])]
    self.f_pixel = nnx.List(block(ch, key_ch) + block(key_ch, key_ch))
    self.f_object = nnx.List(block(ch, key_ch) + block(key_ch, key_ch))
    self.f_down = nnx.List(block(ch, key_ch))
    self.f_up = nnx.List(block(key_ch, ch))
    self.key_channels = key_ch

  def __call__(self, x: jax.Array, proxy: jax.Array) -> jax.Array:
    b, h, w, _ = x.shape
    query = run(self.f_pixel, x).reshape(b, h * w, -1)
    key = run(self.f_object, proxy).reshape(b, -1, self.key_channels)
    value = run(self.f_down, proxy).reshape(b, -1, self.key_channels)
    sim = jax.nn.softmax(jnp.einsum("bnc,bkc->bnk", query, key) * self.key_channels ** -0.5,
                         axis=-1)
    context = jnp.einsum("bnk,bkc->bnc", sim, value).reshape(b, h, w, self.key_channels)
    return run(self.f_up, context)


class SpatialOCR(nnx.Module):
  """SpatialOCR_Module: object context, concatenated with the features, 1x1 conv,
  BN, ReLU and Dropout2d(0.05) (active in training: needs a 'dropout' rng)."""

  def __init__(self, ch: int, key_ch: int, init: Init, rngs: nnx.Rngs):
    self.object_context_block = ObjectAttentionBlock(ch, key_ch, init, rngs)
    self.conv_bn_dropout = nnx.List([
        layers.conv(2 * ch, ch, 1, use_bias=False, kernel_init=init, rngs=rngs),
        nnx.List([layers.batch_norm(ch, rngs=rngs), ReLU()]),
        nnx.Dropout(0.05, broadcast_dims=(1, 2))])  # Dropout2d: whole channels.

  def __call__(self, feats: jax.Array, proxy: jax.Array,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    context = self.object_context_block(feats, proxy)
    x = run(self.conv_bn_dropout[:2], jnp.concatenate([context, feats], axis=-1))
    return layers.dropout(self.conv_bn_dropout[2], x, rngs)


class HighResolutionNet(nnx.Module):
  """HRNetV2-W`width` with `blocks` residual blocks in layer1 and every branch,
  `modules` HighResolutionModules in stages 2, 3, 4 (official: 4 and 1/4/3;
  `small`, HRNet-W18-small-v2: 2 and 1/3/2), and the OCR head when ocr_width > 0."""

  def __init__(self, width: int, *, ocr_width: int = 64, blocks: int = 4,
               modules: tuple[int, int, int] = (1, 4, 3), stem: int = 64, init: Init,
               rngs: nnx.Rngs):
    kw = dict(init=init, rngs=rngs)
    self.conv1 = layers.conv(3, stem, 3, stride=2, padding=1, use_bias=False,
                             kernel_init=init, rngs=rngs)
    self.bn1 = layers.batch_norm(stem, rngs=rngs)
    self.conv2 = layers.conv(stem, stem, 3, stride=2, padding=1, use_bias=False,
                             kernel_init=init, rngs=rngs)
    self.bn2 = layers.batch_norm(stem, rngs=rngs)
    self.layer1 = make_layer(Bottleneck, stem, stem, blocks, **kw)
    pre = [stem * Bottleneck.expansion]
    for stage, count in zip((2, 3, 4), modules):
      cur = [width * 2 ** i for i in range(stage)]
      setattr(self, f"transition{stage - 1}", make_transition(pre, cur, **kw))
      setattr(self, f"stage{stage}", nnx.List([HighResolutionModule(cur, blocks, **kw)
                                               for _ in range(count)]))
      pre = cur
    self.branch_channels = tuple(pre)
    self.ocr_width = ocr_width
    if ocr_width > 0:
      mid = 2 * ocr_width
      self.conv3x3_ocr = nnx.List([
          layers.conv(sum(pre), mid, 3, padding=1, kernel_init=init, rngs=rngs),
          layers.batch_norm(mid, rngs=rngs), ReLU()])
      self.ocr_distri_head = SpatialOCR(mid, ocr_width, **kw)
    self.output_channels = 2 * ocr_width if ocr_width > 0 else sum(pre)

  def stem(self, x: jax.Array, additional_features: jax.Array | None) -> jax.Array:
    """compute_pre_stage_features: the mask features join after the first conv."""
    x = jax.nn.relu(self.bn1(self.conv1(x)))
    if additional_features is not None:
      x = x + additional_features
    return jax.nn.relu(self.bn2(self.conv2(x)))

  def stage_outputs(self, x: jax.Array, additional_features: jax.Array | None = None
                    ) -> list[list[jax.Array]]:
    """The branch outputs of stages 2, 3 and 4 (strides 4, 8, 16, 32)."""
    ys = [run(self.layer1, self.stem(x, additional_features))]
    outputs = []
    for stage in (2, 3, 4):
      transition = getattr(self, f"transition{stage - 1}")
      # A new branch grows from the previous stage's lowest resolution.
      xs = [ys[min(i, len(ys) - 1)] if t is None else run(t, ys[min(i, len(ys) - 1)])
            for i, t in enumerate(transition)]
      for module in getattr(self, f"stage{stage}"):
        xs = module(xs)
      outputs.append(xs)
      ys = xs
    return outputs

  def hrnet_features(self, x: jax.Array, additional_features: jax.Array | None = None
                     ) -> jax.Array:
    """compute_hrnet_feats: the four branches at stride 4, concatenated."""
    xs = self.stage_outputs(x, additional_features)[-1]
    size = xs[0].shape[1:3]
    return jnp.concatenate(
        [xs[0]] + [layers.resize_bilinear_align_corners(y, size, dense_max=DENSE_RESIZE_MAX)
                   for y in xs[1:]], axis=-1)

  def __call__(self, x: jax.Array, mask: jax.Array, additional_features: jax.Array | None = None,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """ImageNet-normalized x [B,H,W,3], region maps mask [B,H,W,2] -> [B,H/4,W/4,C]."""
    feats = self.hrnet_features(x, additional_features)
    if self.ocr_width <= 0:
      return feats
    feats = run(self.conv3x3_ocr, feats)
    mask = layers.resize_bilinear_align_corners(mask, feats.shape[1:3])
    return self.ocr_distri_head(feats, spatial_gather(feats, mask), rngs)
