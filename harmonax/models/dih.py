"""iDIH and iS2AM networks (Sofiiuk et al., WACV 2021), NHWC, in Flax NNX.

Both take an ImageNet-normalized image and the mask as a 4th input channel,
and return the harmonized image in normalized space, mixed with the input by a
learned blending map: a = sigmoid(3 * conv1x1(f)), out = a * image + (1 - a) * to_rgb(f).

Module names mirror the official PyTorch code (SamsungLabs/image_harmonization,
iharm/model/modeling/conv_autoencoder.py and unet.py) one to one, list indices
included, so `harmonax.torch_import.load_into` maps the official checkpoints
directly. The family modules `idih.py` and `issam.py` wrap these networks.
"""

from collections.abc import Callable

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from harmonax import losses
from harmonax import optimizers
from harmonax import torch_import
from harmonax.models import layers

_ACTIVATIONS = {
    "identity": lambda x: x,
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "sigmoid": jax.nn.sigmoid,
}


class Activation(nnx.Module):
  """A parameter-free step of a PyTorch nn.Sequential (keeps the indices aligned)."""

  def __init__(self, name: str):
    if name not in _ACTIVATIONS:
      raise ValueError(f"Unknown activation {name!r}; valid: {sorted(_ACTIVATIONS)}")
    self.name = name

  def __call__(self, x: jax.Array) -> jax.Array:
    return _ACTIVATIONS[self.name](x)


class Upsample2x(nnx.Module):
  """nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True)."""

  def __call__(self, x: jax.Array) -> jax.Array:
    return layers.upsample2x_align_corners(x)


def _run(steps: nnx.List, x: jax.Array) -> jax.Array:
  for step in steps:
    x = step(x)
  return x


def _init(magnitude: float):
  # The official XavierGluon(rnd_type='gaussian', magnitude): std = sqrt(m / fan_avg).
  return nnx.initializers.variance_scaling(magnitude, "fan_avg", "normal")


class ConvBlock(nnx.Module):
  """iharm ConvBlock: block = [conv, batch norm | identity, activation]."""

  def __init__(self, in_ch: int, out_ch: int, *, kernel_size: int = 4, stride: int = 2,
               padding: int = 1, norm: bool = True, activation: str = "elu",
               use_bias: bool = True, transpose: bool = False, init: float, rngs: nnx.Rngs):
    make = layers.ConvTranspose2d if transpose else layers.conv
    self.block = nnx.List([
        make(in_ch, out_ch, kernel_size, stride=stride, padding=padding,
             use_bias=use_bias, kernel_init=_init(init), rngs=rngs),
        layers.batch_norm(out_ch, rngs=rngs) if norm else Activation("identity"),
        Activation(activation),
    ])

  def __call__(self, x: jax.Array) -> jax.Array:
    return _run(self.block, x)


class _Fusion(nnx.Module):
  """The output head shared by both decoders: blending map and to_rgb."""

  def _init_head(self, ch: int, image_fusion: bool, init: float, rngs: nnx.Rngs):
    self.conv_attention = (layers.conv(ch, 1, 1, kernel_init=_init(init), rngs=rngs)
                           if image_fusion else None)
    self.to_rgb = layers.conv(ch, 3, 1, kernel_init=_init(init), rngs=rngs)

  def _head(self, features: jax.Array, image: jax.Array) -> jax.Array:
    rgb = self.to_rgb(features)
    if self.conv_attention is None:
      return rgb
    a = jax.nn.sigmoid(3.0 * self.conv_attention(features))
    return a * image + (1.0 - a) * rgb


# ----------------------------------------------------------------------------- iDIH


class ConvEncoder(nnx.Module):
  """Strided 4x4 convs; every second level doubles the channels (up to max_ch)."""

  def __init__(self, depth: int, ch: int, batchnorm_from: int, max_ch: int,
               init: float, rngs: nnx.Rngs):
    kw = dict(init=init, rngs=rngs)
    self.block0 = ConvBlock(4, ch, norm=batchnorm_from == 0, **kw)
    self.block1 = ConvBlock(ch, ch, norm=0 <= batchnorm_from <= 1, **kw)
    channels = [ch, ch]
    blocks = {}
    out_ch = ch
    for i in range(2, depth):
      if i % 2:
        in_ch = out_ch
      else:
        in_ch, out_ch = out_ch, min(2 * out_ch, max_ch)
      # The deepest block has no padding: 4x4 -> 1x1 at 256 input.
      blocks[f"block{i}"] = ConvBlock(in_ch, out_ch, norm=0 <= batchnorm_from <= i,
                                      padding=int(i < depth - 1), **kw)
      channels.append(out_ch)
    self.blocks_connected = nnx.Dict(blocks)
    self.depth = depth
    self.channels = tuple(channels)

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    outputs = [self.block0(x)]
    outputs.append(self.block1(outputs[-1]))
    for i in range(2, self.depth):
      outputs.append(self.blocks_connected[f"block{i}"](outputs[-1]))
    return outputs[::-1]


class DeconvDecoder(_Fusion):
  """Transposed 4x4 convs with additive skips from the encoder."""

  def __init__(self, depth: int, encoder_channels: tuple[int, ...], image_fusion: bool,
               init: float, rngs: nnx.Rngs):
    remaining = list(encoder_channels)
    in_ch = remaining.pop()
    blocks = []
    for d in range(depth):
      out_ch = remaining.pop() if remaining else in_ch // 2
      blocks.append(ConvBlock(in_ch, out_ch, padding=0 if d == 0 else 1, transpose=True,
                              init=init, rngs=rngs))
      in_ch = out_ch
    self.deconv_blocks = nnx.List(blocks)
    self._init_head(in_ch, image_fusion, init, rngs)

  def __call__(self, encoder_outputs: list[jax.Array], image: jax.Array) -> jax.Array:
    x = encoder_outputs[0]
    for block, skip in zip(self.deconv_blocks[:-1], encoder_outputs[1:]):
      x = block(x) + skip
    x = self.deconv_blocks[-1](x)
    return self._head(x, image)


class DeepImageHarmonization(nnx.Module):
  """DIH / iDIH encoder-decoder. iDIH256: depth 7, batchnorm_from 2, image_fusion.

  Inputs need H and W multiples of 2**depth and at least 2**(depth + 1)
  (`size_multiple`, `min_size`): the deepest encoder block has no padding.
  """

  def __init__(self, *, depth: int = 7, ch: int = 64, max_channels: int = 512,
               batchnorm_from: int = 2, image_fusion: bool = True, init: float = 2.0,
               rngs: nnx.Rngs):
    self.encoder = ConvEncoder(depth, ch, batchnorm_from, max_channels, init, rngs)
    self.decoder = DeconvDecoder(depth, self.encoder.channels, image_fusion, init, rngs)
    self.size_multiple = 2 ** depth
    self.min_size = 2 ** (depth + 1)

  def __call__(self, image: jax.Array, mask: jax.Array) -> jax.Array:
    """Normalized image [B,H,W,3] and mask [B,H,W,1] -> normalized output [B,H,W,3]."""
    features = self.encoder(jnp.concatenate([image, mask], axis=-1))
    return self.decoder(features, image)


# ----------------------------------------------------------------------------- iS2AM


class DoubleConv(nnx.Module):
  """UNetDoubleConv: two 3x3 ConvBlocks."""

  def __init__(self, in_ch: int, out_ch: int, norm: bool, init: float, rngs: nnx.Rngs):
    kw = dict(kernel_size=3, stride=1, padding=1, norm=norm, activation="relu",
              init=init, rngs=rngs)
    self.block = nnx.List([ConvBlock(in_ch, out_ch, **kw), ConvBlock(out_ch, out_ch, **kw)])

  def __call__(self, x: jax.Array) -> jax.Array:
    return _run(self.block, x)


class DownBlock(nnx.Module):
  """UNetDownBlock: double conv, then 2x2 max pooling for the next level."""

  def __init__(self, in_ch: int, out_ch: int, norm: bool, pool: bool, init: float,
               rngs: nnx.Rngs):
    self.convs = DoubleConv(in_ch, out_ch, norm, init, rngs)
    self.pool = pool

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = self.convs(x)
    return y, layers.max_pool2x2(y) if self.pool else y


class UNetEncoder(nnx.Module):
  """U-Net encoder; channels double at every level up to max_ch."""

  def __init__(self, depth: int, ch: int, batchnorm_from: int, max_ch: int,
               init: float, rngs: nnx.Rngs):
    self.block0 = DownBlock(4, ch, batchnorm_from == 0, True, init, rngs)
    out_ch = min(2 * ch, max_ch)
    self.block1 = DownBlock(ch, out_ch, 0 <= batchnorm_from <= 1, True, init, rngs)
    channels = [ch, out_ch]
    blocks = {}
    for i in range(2, depth):
      in_ch, out_ch = out_ch, min(2 * out_ch, max_ch)
      blocks[f"block{i}"] = DownBlock(in_ch, out_ch, 0 <= batchnorm_from <= i,
                                      i < depth - 1, init, rngs)
      channels.append(out_ch)
    self.blocks_connected = nnx.Dict(blocks)
    self.depth = depth
    self.channels = tuple(channels)

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    outputs = []
    y, x = self.block0(x)
    outputs.append(y)
    y, x = self.block1(x)
    outputs.append(y)
    for i in range(2, self.depth):
      y, x = self.blocks_connected[f"block{i}"](x)
      outputs.append(y)
    return outputs[::-1]


class ChannelAttention(nnx.Module):
  """Channel gates from global average and max pooling through a 2-layer MLP."""

  def __init__(self, ch: int, init: float, rngs: nnx.Rngs):
    mid = max(ch // 16, 8)
    kw = dict(kernel_init=_init(init), rngs=rngs)
    self.attention_transform = nnx.List([
        nnx.Linear(2 * ch, mid, **kw), Activation("relu"),
        nnx.Linear(mid, ch, **kw), Activation("sigmoid")])

  def __call__(self, x: jax.Array) -> jax.Array:
    # The official code concatenates [avg, max]: the order fixes the weight layout.
    pooled = jnp.concatenate([x.mean(axis=(1, 2)), x.max(axis=(1, 2))], axis=-1)
    return _run(self.attention_transform, pooled)[:, None, None, :] * x


class SpatialSeparatedAttention(nnx.Module):
  """S2AM: foreground, background and mix gates, separated by the blurred mask."""

  def __init__(self, ch: int, mid_k: float, init: float, rngs: nnx.Rngs):
    self.background_gate = ChannelAttention(ch, init, rngs)
    self.foreground_gate = ChannelAttention(ch, init, rngs)
    self.mix_gate = ChannelAttention(ch, init, rngs)
    mid = int(mid_k * ch)
    kw = dict(kernel_size=3, stride=1, padding=1, norm=True, activation="relu",
              use_bias=False, init=init, rngs=rngs)
    self.learning_block = nnx.List([ConvBlock(ch, mid, **kw), ConvBlock(mid, ch, **kw)])
    self.mask_blurring = layers.GaussianSmoothing(1, 7, 1.0, padding=3)

  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    mask = layers.resize_bilinear_align_corners(mask, x.shape[1:3])
    mask = self.mask_blurring(mask)
    background = self.background_gate(x)
    foreground = _run(self.learning_block, self.foreground_gate(x))
    mix = self.mix_gate(x)
    return mask * (foreground + mix) + (1.0 - mask) * background


class UpBlock(nnx.Module):
  """UNetUpBlock: upsample + 3x3 conv, concat [skip, up], optional S2AM, double conv."""

  def __init__(self, dec_ch: int, enc_ch: int, out_ch: int, attention_mid_k: float | None,
               init: float, rngs: nnx.Rngs):
    self.upconv = nnx.List([
        Upsample2x(),
        ConvBlock(dec_ch, out_ch, kernel_size=3, stride=1, padding=1, norm=False,
                  activation="relu", init=init, rngs=rngs)])
    self.convs = DoubleConv(enc_ch + out_ch, out_ch, True, init, rngs)
    self.attention = (None if attention_mid_k is None else
                      SpatialSeparatedAttention(enc_ch + out_ch, attention_mid_k, init, rngs))

  def __call__(self, x: jax.Array, skip: jax.Array, mask: jax.Array) -> jax.Array:
    x = jnp.concatenate([skip, _run(self.upconv, x)], axis=-1)
    if self.attention is not None:
      x = self.attention(x, mask)
    return self.convs(x)


class UNetDecoder(_Fusion):
  """depth - 1 up blocks (the deepest encoder level does not pool)."""

  def __init__(self, depth: int, encoder_channels: tuple[int, ...], attend_from: int,
               attention_mid_k: float, image_fusion: bool, init: float, rngs: nnx.Rngs):
    remaining = list(encoder_channels)
    in_ch = remaining.pop()
    blocks = []
    for d in range(depth - 1):
      out_ch = remaining.pop() if remaining else in_ch // 2
      mid_k = attention_mid_k if 0 <= attend_from <= d else None
      blocks.append(UpBlock(in_ch, out_ch, out_ch, mid_k, init, rngs))
      in_ch = out_ch
    self.up_blocks = nnx.List(blocks)
    self._init_head(in_ch, image_fusion, init, rngs)

  def __call__(self, encoder_outputs: list[jax.Array], image: jax.Array,
               mask: jax.Array) -> jax.Array:
    x = encoder_outputs[0]
    for block, skip in zip(self.up_blocks, encoder_outputs[1:]):
      x = block(x, skip, mask)
    return self._head(x, image)


class SSAMImageHarmonization(nnx.Module):
  """S2AM / iS2AM U-Net. iS2AM: depth 4, ch 32, attend_from 2, mid_k 0.5, image_fusion.

  Inputs need H and W multiples of 2**(depth - 1) (`size_multiple`).
  """

  def __init__(self, *, depth: int = 4, ch: int = 32, max_channels: int = 512,
               batchnorm_from: int = 2, attend_from: int = 2, attention_mid_k: float = 0.5,
               image_fusion: bool = True, init: float = 1.0, rngs: nnx.Rngs):
    self.encoder = UNetEncoder(depth, ch, batchnorm_from, max_channels, init, rngs)
    self.decoder = UNetDecoder(depth, self.encoder.channels, attend_from, attention_mid_k,
                               image_fusion, init, rngs)
    self.size_multiple = 2 ** (depth - 1)
    self.min_size = 0

  def __call__(self, image: jax.Array, mask: jax.Array) -> jax.Array:
    """Normalized image [B,H,W,3] and mask [B,H,W,1] -> normalized output [B,H,W,3]."""
    features = self.encoder(jnp.concatenate([image, mask], axis=-1))
    return self.decoder(features, image, mask)


# ----------------------------------------------------------------------------- family glue
# Shared by the idih and issam family modules (docs/architecture.md contract).

Network = DeepImageHarmonization | SSAMImageHarmonization


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam with the lr multiplied by optim.decay_factor at each of optim.decay_epochs."""
  return {"generator": optimizers.step_decay_adam(config.optim, steps_per_epoch)}


def _forward(net: Network, composite: jax.Array, mask: jax.Array) -> jax.Array:
  """Network output in normalized space for any H, W: edge-pads to the
  network's size multiple (and minimum size), then crops back."""
  _, h, w, _ = composite.shape
  padded = layers.pad_to_multiple(jnp.concatenate([composite, mask], axis=-1),
                                  net.size_multiple, net.min_size)
  image, padded_mask = padded[..., :3], padded[..., 3:]
  out = net(layers.imagenet_normalize(image), padded_mask)
  return out[:, :h, :w]


def _to_image(out: jax.Array, composite: jax.Array, mask: jax.Array) -> jax.Array:
  pred = jnp.clip(layers.imagenet_denormalize(out), 0.0, 1.0)
  return layers.blend_background(pred, composite, mask)


def compute_losses(networks: dict[str, nnx.Module], batch: dict[str, jax.Array],
                   train: bool, min_area: float
                   ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
  """FN-MSE of the network's output, as the official trainer computes it.

  The official loss compares the learned-blend output with the target in
  ImageNet-normalized space (both pass through the same Normalize), over all
  pixels, divided by C * max(mask area, min_area). 'harmonized' is the
  [0, 1] output blended with the untouched background by the mask.
  """
  net = networks["generator"]
  if train:
    net.train()
  else:
    net.eval()
  composite, mask = batch["composite"], batch["mask"]
  out = _forward(net, composite, mask)
  loss = losses.fn_mse(out, layers.imagenet_normalize(batch["real"]), mask, min_area)
  return {"generator": loss}, {"fn_mse": loss}, {"harmonized": _to_image(out, composite, mask)}


def predict(networks: dict[str, nnx.Module], composite: jax.Array, mask: jax.Array
            ) -> jax.Array:
  """Harmonized [B,H,W,3] in [0, 1] for any H, W; background pixels == composite."""
  out = _forward(networks["generator"], composite, mask)
  return _to_image(out, composite, mask)


def convert_torch(state_dicts: dict[str, dict[str, np.ndarray]],
                  config: ml_collections.ConfigDict,
                  create_networks: Callable[..., dict[str, nnx.Module]]
                  ) -> dict[str, nnx.State]:
  """An official checkpoint ({'default' or 'generator': state dict}) -> generator state."""
  names = set(state_dicts)
  if len(names) != 1 or not names <= {"default", "generator"}:
    raise ValueError(f"{config.model.name} takes one checkpoint (role 'default' or "
                     f"'generator'); got roles {sorted(names)}")
  (state_dict,) = state_dicts.values()
  # Every variable is overwritten, so the abstract network needs no random init.
  net = nnx.eval_shape(lambda: create_networks(config, nnx.Rngs(0)))["generator"]
  torch_import.load_into(net, state_dict, context=f"model {config.model.name}")
  return {"generator": nnx.state(net)}
