"""iDIH and iS2AM in PyTorch, mirroring harmonax/models/dih.py name for name.

The encoders take backbone features ('cat' connectors, as HRNet+iDIH's
FeaturesConnector) from level `backbone_from` on; `features` gives the
encoder outputs, the last decoder features and the image (PCT-Net CNN, CDTNet).
Written from harmonax's modules; no official code is copied."""

import torch
from torch import nn
import torch.nn.functional as F

_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
_ACTIVATIONS = {"elu": nn.ELU, "relu": nn.ReLU, "identity": nn.Identity}


def normalize(x: torch.Tensor) -> torch.Tensor:
  return (x - _MEAN) / _STD


class ConvBlock(nn.Module):
  """[conv | transposed conv, batch norm | identity, activation]."""

  def __init__(self, cin: int, cout: int, k: int = 4, stride: int = 2, padding: int = 1,
               norm: bool = True, activation: str = "elu", bias: bool = True,
               transpose: bool = False):
    super().__init__()
    conv = (nn.ConvTranspose2d if transpose else nn.Conv2d)(cin, cout, k, stride, padding,
                                                            bias=bias)
    self.block = nn.Sequential(conv, nn.BatchNorm2d(cout) if norm else nn.Identity(),
                               _ACTIVATIONS[activation]())

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.block(x)


class _Head(nn.Module):

  def _init_head(self, ch: int, image_fusion: bool):
    self.conv_attention = nn.Conv2d(ch, 1, 1) if image_fusion else None
    self.to_rgb = nn.Conv2d(ch, 3, 1)

  def _head(self, features: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    rgb = self.to_rgb(features)
    if self.conv_attention is None:
      return rgb
    a = torch.sigmoid(3.0 * self.conv_attention(features))
    return a * image + (1.0 - a) * rgb


def _connect(connected: set, level: int, x: torch.Tensor, features: list) -> torch.Tensor:
  """FeaturesConnector(mode='cat'): the level's backbone features concatenated."""
  return torch.cat([x, features.pop(0)], 1) if level in connected else x


class ConvEncoder(nn.Module):

  def __init__(self, depth: int, ch: int, batchnorm_from: int, max_ch: int,
               backbone_from: int = -1, backbone_channels: tuple[int, ...] = ()):
    super().__init__()
    remaining, self.connected = list(backbone_channels), set()
    self.block0 = ConvBlock(4, ch, norm=batchnorm_from == 0)
    self.block1 = ConvBlock(ch, ch, norm=0 <= batchnorm_from <= 1)
    self.channels = [ch, ch]
    blocks, out_ch = {}, ch
    for i in range(2, depth):
      if i % 2:
        in_ch = out_ch
      else:
        in_ch, out_ch = out_ch, min(2 * out_ch, max_ch)
      if 0 <= backbone_from <= i and remaining:
        in_ch += remaining.pop(0)
        self.connected.add(i)
      blocks[f"block{i}"] = ConvBlock(in_ch, out_ch, norm=0 <= batchnorm_from <= i,
                                      padding=int(i < depth - 1))
      self.channels.append(out_ch)
    self.blocks_connected = nn.ModuleDict(blocks)

  def forward(self, x: torch.Tensor, backbone_features=None) -> list[torch.Tensor]:
    features = list(backbone_features or [])
    outputs = [self.block0(x)]
    outputs.append(self.block1(outputs[-1]))
    for i, block in enumerate(self.blocks_connected.values(), 2):
      outputs.append(block(_connect(self.connected, i, outputs[-1], features)))
    return outputs[::-1]


class DeconvDecoder(_Head):

  def __init__(self, depth: int, encoder_channels: list[int], image_fusion: bool):
    super().__init__()
    remaining = list(encoder_channels)
    in_ch = remaining.pop()
    blocks = []
    for d in range(depth):
      out_ch = remaining.pop() if remaining else in_ch // 2
      blocks.append(ConvBlock(in_ch, out_ch, padding=0 if d == 0 else 1, transpose=True))
      in_ch = out_ch
    self.deconv_blocks = nn.ModuleList(blocks)
    self._init_head(in_ch, image_fusion)

  def features(self, encoder_outputs, mask=None):
    del mask
    x = encoder_outputs[0]
    for block, skip in zip(self.deconv_blocks[:-1], encoder_outputs[1:]):
      x = block(x) + skip
    return self.deconv_blocks[-1](x)

  def forward(self, encoder_outputs, image):
    return self._head(self.features(encoder_outputs), image)


class _Model(nn.Module):

  def features(self, image, mask, backbone_features=None) -> dict:
    """{'encoder': outputs (deepest first), 'decoder': last features, 'images'}."""
    encoded = self.encoder(torch.cat([image, mask], 1), backbone_features)
    decoded = self.decoder.features(encoded, mask)
    return {"encoder": encoded, "decoder": decoded,
            "images": self.decoder._head(decoded, image)}

  def forward(self, image, mask, backbone_features=None):
    return self.features(image, mask, backbone_features)["images"]


class DeepImageHarmonization(_Model):

  def __init__(self, depth=7, ch=64, max_channels=512, batchnorm_from=2, image_fusion=True,
               backbone_from=-1, backbone_channels=()):
    super().__init__()
    self.encoder = ConvEncoder(depth, ch, batchnorm_from, max_channels, backbone_from,
                               backbone_channels)
    self.decoder = DeconvDecoder(depth, self.encoder.channels, image_fusion)


class DoubleConv(nn.Module):

  def __init__(self, cin: int, cout: int, norm: bool):
    super().__init__()
    kw = dict(k=3, stride=1, padding=1, norm=norm, activation="relu")
    self.block = nn.Sequential(ConvBlock(cin, cout, **kw), ConvBlock(cout, cout, **kw))

  def forward(self, x):
    return self.block(x)


class DownBlock(nn.Module):

  def __init__(self, cin: int, cout: int, norm: bool, pool: bool):
    super().__init__()
    self.convs = DoubleConv(cin, cout, norm)
    self.pool = pool

  def forward(self, x):
    y = self.convs(x)
    return y, F.max_pool2d(y, 2, 2) if self.pool else y


class UNetEncoder(nn.Module):

  def __init__(self, depth: int, ch: int, batchnorm_from: int, max_ch: int,
               backbone_from: int = -1, backbone_channels: tuple[int, ...] = ()):
    super().__init__()
    remaining, self.connected = list(backbone_channels), set()
    self.block0 = DownBlock(4, ch, batchnorm_from == 0, True)
    out_ch = min(2 * ch, max_ch)
    self.block1 = DownBlock(ch, out_ch, 0 <= batchnorm_from <= 1, True)
    self.channels = [ch, out_ch]
    blocks = {}
    for i in range(2, depth):
      in_ch, out_ch = out_ch, min(2 * out_ch, max_ch)
      if 0 <= backbone_from <= i and remaining:
        in_ch += remaining.pop(0)
        self.connected.add(i)
      blocks[f"block{i}"] = DownBlock(in_ch, out_ch, 0 <= batchnorm_from <= i, i < depth - 1)
      self.channels.append(out_ch)
    self.blocks_connected = nn.ModuleDict(blocks)

  def forward(self, x, backbone_features=None):
    features = list(backbone_features or [])
    outputs = []
    for i, block in enumerate([self.block0, self.block1, *self.blocks_connected.values()]):
      y, x = block(_connect(self.connected, i, x, features))
      outputs.append(y)
    return outputs[::-1]


class ChannelAttention(nn.Module):

  def __init__(self, ch: int):
    super().__init__()
    mid = max(ch // 16, 8)
    self.attention_transform = nn.Sequential(nn.Linear(2 * ch, mid), nn.ReLU(),
                                             nn.Linear(mid, ch), nn.Sigmoid())

  def forward(self, x):
    pooled = torch.cat([x.mean((2, 3)), x.amax((2, 3))], 1)
    return self.attention_transform(pooled)[:, :, None, None] * x


class GaussianSmoothing(nn.Module):

  def __init__(self, channels: int, k: int, padding: int):
    super().__init__()
    self.register_buffer("weight", torch.zeros(channels, 1, k, k))
    self.padding = padding

  def forward(self, x):
    return F.conv2d(x, self.weight, padding=self.padding, groups=x.shape[1])


class SpatialSeparatedAttention(nn.Module):

  def __init__(self, ch: int, mid_k: float):
    super().__init__()
    self.background_gate = ChannelAttention(ch)
    self.foreground_gate = ChannelAttention(ch)
    self.mix_gate = ChannelAttention(ch)
    mid = int(mid_k * ch)
    kw = dict(k=3, stride=1, padding=1, norm=True, activation="relu", bias=False)
    self.learning_block = nn.Sequential(ConvBlock(ch, mid, **kw), ConvBlock(mid, ch, **kw))
    self.mask_blurring = GaussianSmoothing(1, 7, 3)

  def forward(self, x, mask):
    mask = F.interpolate(mask, size=x.shape[2:], mode="bilinear", align_corners=True)
    mask = self.mask_blurring(mask)
    foreground = self.learning_block(self.foreground_gate(x))
    return mask * (foreground + self.mix_gate(x)) + (1 - mask) * self.background_gate(x)


class UpBlock(nn.Module):

  def __init__(self, dec_ch: int, enc_ch: int, out_ch: int, mid_k: float | None):
    super().__init__()
    self.upconv = nn.Sequential(
        nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
        ConvBlock(dec_ch, out_ch, k=3, stride=1, padding=1, norm=False, activation="relu"))
    self.convs = DoubleConv(enc_ch + out_ch, out_ch, True)
    self.attention = (None if mid_k is None else
                      SpatialSeparatedAttention(enc_ch + out_ch, mid_k))

  def forward(self, x, skip, mask):
    x = torch.cat([skip, self.upconv(x)], 1)
    if self.attention is not None:
      x = self.attention(x, mask)
    return self.convs(x)


class UNetDecoder(_Head):

  def __init__(self, depth, encoder_channels, attend_from, mid_k, image_fusion):
    super().__init__()
    remaining = list(encoder_channels)
    in_ch = remaining.pop()
    blocks = []
    for d in range(depth - 1):
      out_ch = remaining.pop() if remaining else in_ch // 2
      blocks.append(UpBlock(in_ch, out_ch, out_ch,
                            mid_k if 0 <= attend_from <= d else None))
      in_ch = out_ch
    self.up_blocks = nn.ModuleList(blocks)
    self._init_head(in_ch, image_fusion)

  def features(self, encoder_outputs, mask):
    x = encoder_outputs[0]
    for block, skip in zip(self.up_blocks, encoder_outputs[1:]):
      x = block(x, skip, mask)
    return x


class SSAMImageHarmonization(_Model):

  def __init__(self, depth=4, ch=32, max_channels=512, batchnorm_from=2, attend_from=2,
               attention_mid_k=0.5, image_fusion=True, backbone_from=-1, backbone_channels=()):
    super().__init__()
    self.encoder = UNetEncoder(depth, ch, batchnorm_from, max_channels, backbone_from,
                               backbone_channels)
    self.decoder = UNetDecoder(depth, self.encoder.channels, attend_from, attention_mid_k,
                               image_fusion)


def base_network(m, backbone_from: int = -1, backbone_channels=()) -> nn.Module:
  """config.model's iDIH or iS2AM (m.variant), with 'cat' backbone connectors."""
  kw = dict(backbone_from=backbone_from, backbone_channels=backbone_channels)
  if m.variant == "idih":
    return DeepImageHarmonization(m.depth, m.ch, m.max_channels, m.batchnorm_from,
                                  m.image_fusion, **kw)
  return SSAMImageHarmonization(m.depth, m.ch, m.max_channels, m.batchnorm_from,
                                m.attend_from, m.attention_mid_k, m.image_fusion, **kw)


def build(config) -> nn.Module:
  """The config's generator (config.model.variant 'idih' or 'issam')."""
  model = base_network(config.model)
  model.min_area = config.loss.min_area
  return model


def train_loss(model: nn.Module, batch: dict, generator: torch.Generator) -> torch.Tensor:
  """FN-MSE in normalized space (the official MaskWeightedMSE)."""
  del generator
  out = model(normalize(batch["composite"]), batch["mask"])
  error = ((out - normalize(batch["real"])) ** 2).sum((1, 2, 3))
  area = batch["mask"].sum((1, 2, 3)).clamp_min(model.min_area)
  return (error / (3 * area)).mean()


def predict(model: nn.Module, composite: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
  """The network's image clipped to [0, 1] (sizes that fit the network)."""
  return (model(normalize(composite), mask) * _STD + _MEAN).clamp(0, 1)
