"""iDIH and iS2AM networks (Sofiiuk et al., WACV 2021), NHWC, in Flax NNX.

Both take an ImageNet-normalized image and the mask as a 4th input channel,
and return the harmonized image in normalized space, mixed with the input by a
learned blending map: a = sigmoid(3 * conv1x1(f)), out = a * image + (1 - a) * to_rgb(f).

Module names mirror the official PyTorch code (SamsungLabs/image_harmonization,
iharm/model/modeling/conv_autoencoder.py and unet.py) one to one, list indices
included, so `harmonax.torch_import.load_into` maps the official checkpoints
directly. The family glue at the bottom makes this module the `dih` family
(config.model.variant 'idih' or 'issam').
"""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from harmonax import losses
from harmonax import optimizers
from harmonax import recolor
from harmonax import torch_import
from harmonax import variables
from harmonax.models import backboned
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
    # The map and the blend in float32 whatever the compute dtype: in bfloat16
    # identity_init's sigmoid(6) = 0.9975 rounds to 1, and its gradient (and
    # that of 1 - a) to 0, so a mixed-precision run never trained.
    a = jax.nn.sigmoid(3.0 * self.conv_attention(features).astype(jnp.float32))
    return a * image.astype(jnp.float32) + (1.0 - a) * rgb.astype(jnp.float32)


# identity_init's blending map: sigmoid(3 * 2.0) = 0.9975 of the input everywhere.
IDENTITY_ATTENTION_BIAS = 2.0


def start_near_input(network: nnx.Module) -> None:
  """`model.identity_init` (not in the papers): every blending head in `network`
  starts close to returning its input image.

  conv_attention's kernel is scaled to 1/100 of its random init and its bias set
  to IDENTITY_ATTENTION_BIAS, so the map starts at about 0.9975 everywhere and
  the untrained output is the input image but for 0.25% of to_rgb. With a bias
  of 1.0 (a map of 0.95) the 20-step runlocal models scored a better fMSE but a
  worse whole-image MSE than their composites, because the background kept 5% of
  a random image (README, runlocal table).
  """
  heads = [m for _, m in nnx.iter_graph(network) if isinstance(m, _Fusion)]
  if not heads or any(h.conv_attention is None for h in heads):
    raise ValueError("model.identity_init needs model.image_fusion=True (a learned "
                     "blending map to start from the input)")
  for head in heads:
    layers.restart(head.conv_attention, 0.01, IDENTITY_ATTENTION_BIAS)


# ----------------------------------------------------------------------------- iDIH


class ConvEncoder(backboned.ConnectedEncoder):
  """Strided 4x4 convs; every second level doubles the channels (up to max_ch)."""

  def __init__(self, depth: int, ch: int, batchnorm_from: int, max_ch: int,
               init: float, rngs: nnx.Rngs, backbone: dict | None = None):
    kw = dict(init=init, rngs=rngs)
    self.block0 = ConvBlock(4, ch, norm=batchnorm_from == 0, **kw)
    self.block1 = ConvBlock(ch, ch, norm=0 <= batchnorm_from <= 1, **kw)
    channels = [ch, ch]
    blocks = {}
    self.connectors = nnx.Dict({})
    backbone = backbone or backboned.encoder_args()
    out_ch = ch
    for i in range(2, depth):
      if i % 2:
        in_ch = out_ch
      else:
        in_ch, out_ch = out_ch, min(2 * out_ch, max_ch)
      in_ch = self._connector(i, in_ch, backbone, _init(init), rngs)
      # The deepest block has no padding: 4x4 -> 1x1 at 256 input.
      blocks[f"block{i}"] = ConvBlock(in_ch, out_ch, norm=0 <= batchnorm_from <= i,
                                      padding=int(i < depth - 1), **kw)
      channels.append(out_ch)
    self.blocks_connected = nnx.Dict(blocks)
    self.depth = depth
    self.channels = tuple(channels)

  def __call__(self, x: jax.Array, backbone_features: list[jax.Array] | None = None
               ) -> list[jax.Array]:
    features = self._check(backbone_features)
    outputs = [self.block0(x)]
    outputs.append(self.block1(outputs[-1]))
    for i in range(2, self.depth):
      x = self._connect(i, outputs[-1], features)
      outputs.append(self.blocks_connected[f"block{i}"](x))
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

  def features(self, encoder_outputs: list[jax.Array]) -> jax.Array:
    """The last decoder features, before the RGB head [B, H, W, C]."""
    x = encoder_outputs[0]
    for block, skip in zip(self.deconv_blocks[:-1], encoder_outputs[1:]):
      x = block(x) + skip
    return self.deconv_blocks[-1](x)

  def __call__(self, encoder_outputs: list[jax.Array], image: jax.Array) -> jax.Array:
    return self._head(self.features(encoder_outputs), image)


class DeepImageHarmonization(nnx.Module):
  """DIH / iDIH encoder-decoder. iDIH256: depth 7, batchnorm_from 2, image_fusion.

  Inputs need H and W multiples of 2**depth and at least 2**(depth + 1)
  (`size_multiple`, `min_size`): the deepest encoder block has no padding.
  """

  def __init__(self, *, depth: int = 7, ch: int = 64, max_channels: int = 512,
               batchnorm_from: int = 2, image_fusion: bool = True, init: float = 2.0,
               backbone_from: int = -1, backbone_channels: tuple[int, ...] = (),
               backbone_mode: str = "", rngs: nnx.Rngs):
    backbone = backboned.encoder_args(backbone_from, backbone_channels, backbone_mode)
    self.encoder = ConvEncoder(depth, ch, batchnorm_from, max_channels, init, rngs, backbone)
    self.decoder = DeconvDecoder(depth, self.encoder.channels, image_fusion, init, rngs)
    self.depth = depth
    self.size_multiple = 2 ** depth
    self.min_size = 2 ** (depth + 1)

  def features(self, image: jax.Array, mask: jax.Array,
               backbone_features: list[jax.Array] | None = None) -> dict:
    """{'encoder': encoder outputs (deepest first), 'decoder': the last decoder
    features before the RGB head, 'images': the normalized output}."""
    encoded = self.encoder(jnp.concatenate([image, mask], axis=-1), backbone_features)
    decoded = self.decoder.features(encoded)
    return {"encoder": encoded, "decoder": decoded,
            "images": self.decoder._head(decoded, image)}

  def __call__(self, image: jax.Array, mask: jax.Array,
               backbone_features: list[jax.Array] | None = None) -> jax.Array:
    """Normalized image [B,H,W,3] and mask [B,H,W,1] -> normalized output [B,H,W,3]."""
    features = self.encoder(jnp.concatenate([image, mask], axis=-1), backbone_features)
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


class UNetEncoder(backboned.ConnectedEncoder):
  """U-Net encoder; channels double at every level up to max_ch."""

  def __init__(self, depth: int, ch: int, batchnorm_from: int, max_ch: int,
               init: float, rngs: nnx.Rngs, backbone: dict | None = None):
    self.block0 = DownBlock(4, ch, batchnorm_from == 0, True, init, rngs)
    out_ch = min(2 * ch, max_ch)
    self.block1 = DownBlock(ch, out_ch, 0 <= batchnorm_from <= 1, True, init, rngs)
    channels = [ch, out_ch]
    blocks = {}
    self.connectors = nnx.Dict({})
    backbone = backbone or backboned.encoder_args()
    for i in range(2, depth):
      in_ch, out_ch = out_ch, min(2 * out_ch, max_ch)
      in_ch = self._connector(i, in_ch, backbone, _init(init), rngs)
      blocks[f"block{i}"] = DownBlock(in_ch, out_ch, 0 <= batchnorm_from <= i,
                                      i < depth - 1, init, rngs)
      channels.append(out_ch)
    self.blocks_connected = nnx.Dict(blocks)
    self.depth = depth
    self.channels = tuple(channels)

  def __call__(self, x: jax.Array, backbone_features: list[jax.Array] | None = None
               ) -> list[jax.Array]:
    features = self._check(backbone_features)
    outputs = []
    y, x = self.block0(x)
    outputs.append(y)
    y, x = self.block1(x)
    outputs.append(y)
    for i in range(2, self.depth):
      y, x = self.blocks_connected[f"block{i}"](self._connect(i, x, features))
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

  def features(self, encoder_outputs: list[jax.Array], mask: jax.Array) -> jax.Array:
    """The last decoder features, before the RGB head [B, H, W, C]."""
    x = encoder_outputs[0]
    for block, skip in zip(self.up_blocks, encoder_outputs[1:]):
      x = block(x, skip, mask)
    return x

  def __call__(self, encoder_outputs: list[jax.Array], image: jax.Array,
               mask: jax.Array) -> jax.Array:
    return self._head(self.features(encoder_outputs, mask), image)


class SSAMImageHarmonization(nnx.Module):
  """S2AM / iS2AM U-Net. iS2AM: depth 4, ch 32, attend_from 2, mid_k 0.5, image_fusion.

  Inputs need H and W multiples of 2**(depth - 1) (`size_multiple`).
  """

  def __init__(self, *, depth: int = 4, ch: int = 32, max_channels: int = 512,
               batchnorm_from: int = 2, attend_from: int = 2, attention_mid_k: float = 0.5,
               image_fusion: bool = True, init: float = 1.0, backbone_from: int = -1,
               backbone_channels: tuple[int, ...] = (), backbone_mode: str = "",
               rngs: nnx.Rngs):
    backbone = backboned.encoder_args(backbone_from, backbone_channels, backbone_mode)
    self.encoder = UNetEncoder(depth, ch, batchnorm_from, max_channels, init, rngs, backbone)
    self.decoder = UNetDecoder(depth, self.encoder.channels, attend_from, attention_mid_k,
                               image_fusion, init, rngs)
    self.depth = depth
    self.size_multiple = 2 ** (depth - 1)
    self.min_size = 0

  def features(self, image: jax.Array, mask: jax.Array,
               backbone_features: list[jax.Array] | None = None) -> dict:
    """{'encoder': encoder outputs (deepest first), 'decoder': the last decoder
    features before the RGB head, 'images': the normalized output}."""
    encoded = self.encoder(jnp.concatenate([image, mask], axis=-1), backbone_features)
    decoded = self.decoder.features(encoded, mask)
    return {"encoder": encoded, "decoder": decoded,
            "images": self.decoder._head(decoded, image)}

  def __call__(self, image: jax.Array, mask: jax.Array,
               backbone_features: list[jax.Array] | None = None) -> jax.Array:
    """Normalized image [B,H,W,3] and mask [B,H,W,1] -> normalized output [B,H,W,3]."""
    features = self.encoder(jnp.concatenate([image, mask], axis=-1), backbone_features)
    return self.decoder(features, image, mask)


# ----------------------------------------------------------------------------- family
# The `dih` family (docs/architecture.md): config.model.variant picks the network.

INPUTS = ("composite", "mask")
PRESERVES_BACKGROUND = True
VARIANTS = ("idih", "issam")

Network = DeepImageHarmonization | SSAMImageHarmonization | backboned.HRNetIHModel


def _base_network(m: ml_collections.ConfigDict, rngs: nnx.Rngs, **backbone) -> nnx.Module:
  common = dict(depth=m.depth, ch=m.ch, max_channels=m.max_channels,
                batchnorm_from=m.batchnorm_from, image_fusion=m.image_fusion,
                init=m.init_magnitude, rngs=rngs, **backbone)
  if m.variant == "idih":
    return DeepImageHarmonization(**common)
  if m.variant == "issam":
    return SSAMImageHarmonization(attend_from=m.attend_from,
                                  attention_mid_k=m.attention_mid_k, **common)
  raise ValueError(f"config.model.variant={m.variant!r}; valid: {VARIANTS}")


def create_networks(config: ml_collections.ConfigDict, rngs: nnx.Rngs
                    ) -> dict[str, nnx.Module]:
  """{'generator': the variant's network} built from config.model.

  variant 'idih': DeepImageHarmonization (depth, ch, max_channels,
  batchnorm_from, image_fusion); 'issam': SSAMImageHarmonization (+ attend_from,
  attention_mid_k). init_magnitude: XavierGluon magnitude (iDIH 2, iS2AM 1).
  config.model.backbone (optional; name 'hrnet', width, blocks, modules, ocr,
  mode, downsize_input, stem): the variant inside backboned.HRNetIHModel.
  identity_init (optional, not in the papers): `start_near_input`.
  """
  m = config.model
  network = _network(m, rngs)
  if m.get("identity_init", False):
    start_near_input(network)
  return {"generator": network}


def _network(m: ml_collections.ConfigDict, rngs: nnx.Rngs) -> Network:
  bb = m.get("backbone")
  if not bb:
    return _base_network(m, rngs)
  if bb.name != "hrnet":
    raise ValueError(f"config.model.backbone.name={bb.name!r}; valid: ('hrnet',)")
  make = lambda start, channels, mode: _base_network(
      m, rngs, backbone_from=start, backbone_channels=channels, backbone_mode=mode)
  return backboned.HRNetIHModel(
      make, width=bb.width, blocks=bb.blocks, modules=tuple(bb.modules), ocr=bb.ocr, mode=bb.mode,
      downsize_input=bb.downsize_input, stem=bb.stem, init=_init(m.init_magnitude), rngs=rngs)


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam with the lr multiplied by optim.decay_factor at each of
  optim.decay_epochs; the pretrained backbone's updates x backbone.lr_mult
  (Adam's step is linear in its rate, so this is the official per-parameter lr)."""
  adam = optimizers.step_decay_adam(config.optim, steps_per_epoch)
  bb = config.model.get("backbone")
  if not bb or bb.lr_mult == 1.0:
    return {"generator": adam}
  return {"generator": optax.chain(
      adam, optax.masked(optax.scale(bb.lr_mult), backboned.backbone_lr_mask))}


def load_pretrained(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                    paths: dict[str, str]) -> None:
  """config.init = {'generator': path}: an official HRNet ImageNet state dict
  (HRNet-Image-Classification) into the backbone, as the official recipes start."""
  for name, path in paths.items():
    if name != "generator" or not config.model.get("backbone"):
      raise ValueError(f"dih: config.init names {name!r}; only 'generator' of a backboned "
                       "variant (an HRNet ImageNet state dict) can be initialised")
    backboned.load_imagenet(networks[name].backbone.hrnet, torch_import.load_state_dict(path))


def size_divisor(net: Network) -> int:
  """The official predictor's padding divisor, 2**(depth + 1): 256 for iDIH256
  (depth 7), 32 for iS2AM (depth 4)."""
  return 2 ** (net.depth + 1)


def forward(net: Network, composite: jax.Array, mask: jax.Array,
            padding: str = "centered_zero", rng: jax.Array | None = None) -> jax.Array:
  """Network output in normalized space for any H, W.

  padding 'centered_zero' (default) is the official predictor: zeros (black
  pixels, an empty mask) split around the image up to a multiple of
  2**(depth + 1). 'edge' pads the bottom/right by replication to the
  network's own multiple (and minimum size): cheaper, but the output differs
  (iDIH's deepest block sees the whole image). rng: the training dropout of
  the HRNet variants' OCR head.

  The official predictor does not pad the HRNet variants (it reads the
  network's `depth`, which IHModelWithBackbone lacks), so it only takes sizes
  their encoder accepts; we pad them as their base network (a no-op at 256).
  """
  x = jnp.concatenate([composite, mask], axis=-1)
  if padding == "centered_zero":
    x, crop = layers.pad_to_multiple(x, size_divisor(net), mode="centered_zero")
  else:
    x, crop = layers.pad_to_multiple(x, net.size_multiple, net.min_size, mode=padding)
  # split, not x[..., :3]: with a symbolic size jnp indexes by a gather that
  # jax2onnx cannot convert.
  image, padded_mask = jnp.split(x, [3], axis=-1)
  image = layers.imagenet_normalize(image)
  if isinstance(net, backboned.HRNetIHModel):
    out = net(image, padded_mask, None if rng is None else variables.rngs(dropout=rng))
  else:
    out = net(image, padded_mask)
  return layers.crop_to(out, crop)


def compute_losses(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                   batch: dict[str, jax.Array], rng: jax.Array
                   ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
  """FN-MSE of the network's output, as the official trainer computes it.

  The official loss compares the learned-blend output with the target in
  ImageNet-normalized space (both pass through the same Normalize), over all
  pixels, divided by C * max(mask area, config.loss.min_area) (iDIH 100, iS2AM
  1000). Crops that do not fit the network are edge-padded (a no-op at 256).
  Off in the papers' recipes: config.loss.transfer_fraction / identity_fraction
  replace that share of the composites by in-step ones (harmonax.recolor).
  """
  batch = layers.floats(batch)
  composite, mask = batch["composite"], batch["mask"]
  # In-step composites where config.loss asks for them (harmonax.recolor).
  composite, _ = recolor.training_composites(config.loss, composite, batch["real"], mask, rng)
  out = forward(networks["generator"], composite, mask, padding="edge", rng=rng)
  loss = losses.fn_mse(out, layers.imagenet_normalize(batch["real"]), mask,
                       config.loss.min_area)
  harmonized = jnp.clip(layers.imagenet_denormalize(out), 0.0, 1.0)
  return {"generator": loss}, {"fn_mse": loss}, {"harmonized": harmonized}


def predict(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
            inputs: dict[str, jax.Array]) -> jax.Array:
  """The network's image [B,H,W,3] clipped to [0, 1], for any H, W, padded as
  config.model.padding says (default: the official predictor). Not
  background-pasted: the official evaluation scores this image."""
  composite, mask = layers.to_float(inputs["composite"]), layers.to_float(inputs["mask"])
  out = forward(networks["generator"], composite, mask,
                config.model.get("padding", "centered_zero"))
  return jnp.clip(layers.imagenet_denormalize(out), 0.0, 1.0)


def adapt_config(config: ml_collections.ConfigDict, state_dicts: dict
                 ) -> ml_collections.ConfigDict:
  """A backboned config with the HRNet settings of the checkpoint (convert):
  hrnet18s_idih256.pth and hrnet32_idih256.pth convert with configs/hrnet_idih.py."""
  settings = (backboned.hrnet_settings(next(iter(state_dicts.values())))
              if config.model.get("backbone") and state_dicts else None)
  if settings is None:
    return config
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.backbone.update(settings)
  return config


def convert_torch(state_dicts: dict[str, dict[str, np.ndarray]],
                  config: ml_collections.ConfigDict) -> dict[str, nnx.State]:
  """An official checkpoint (idih256.pth, issam256.pth: role 'default' or
  'generator') -> {'generator': state}."""
  return torch_import.convert_single(state_dicts, config, create_networks, "generator")
