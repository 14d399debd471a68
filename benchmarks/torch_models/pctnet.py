"""PCT-Net (CNN and ViT) in PyTorch, mirroring harmonax/models/{pctnet,pctnet_vit,
pct_ops}.py with the official parameter names (`encoder.*`, `decoder.*`,
`get_params`). Written from harmonax's modules and the official definitions
(PCTNet_CNN / PCTNet_ViT); no official code is copied.

The full-resolution branch is the official straightforward one: the
low-resolution parameter map (and CNN attention map) is upsampled to the
input's size with F.interpolate(bicubic), applied per pixel to the normalised
input, clamped, normalised and blended, all at once (no row chunks).
Loss as the family's with its default config and no VGG weights: FN-MSE of the
full-resolution output in the variant's normalised space + loss.smoothness x
the mean Sobel magnitude (kornia's definition) of the low-resolution map.
"""

import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_models import dih

NUM_PARAMS = 12


class PCTNetCNN(dih.SSAMImageHarmonization):
  """The iS2AM U-Net (its to_rgb head unused) + a 1x1 `get_params` conv."""

  def __init__(self, m):
    super().__init__(m.depth, m.ch, m.max_channels, m.batchnorm_from, m.attend_from,
                     m.attention_mid_k, True)
    self.get_params = nn.Conv2d(self.encoder.channels[0], NUM_PARAMS, 1)

  def forward(self, image, mask):
    """ImageNet-normalised image, mask -> (parameter map, attention map)."""
    decoded = self.decoder.features(self.encoder(torch.cat([image, mask], 1)), mask)
    attention = torch.sigmoid(3.0 * self.decoder.conv_attention(decoded))
    return self.get_params(decoded), attention


class ViTHarmonizer(nn.Module):
  """ViT_Harmonizer: patches of image + mask, Linear, post-LN TransformerEncoder
  (no positional embedding), ConvTranspose2d(k = s = patch) + tanh."""

  def __init__(self, m, out_ch: int):
    super().__init__()
    self.patch = m.patch
    self.patch_to_embedding = nn.Sequential(nn.Identity(), nn.Linear(m.patch ** 2 * 4, m.dim))
    self.transformer_enc = nn.TransformerEncoder(
        nn.TransformerEncoderLayer(m.dim, m.heads, m.ffn, m.dropout, activation="gelu"),
        m.num_layers, enable_nested_tensor=False)
    self.dec = nn.Sequential(nn.ConvTranspose2d(m.dim, out_ch, m.patch, stride=m.patch),
                             nn.Tanh())

  def forward(self, x):
    b, c, h, w = x.shape
    p = self.patch
    # 'b c (h p1) (w p2) -> b (h w) (p1 p2 c)'.
    tokens = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 3, 5, 1)
    tokens = self.patch_to_embedding[1](tokens.reshape(b, (h // p) * (w // p), p * p * c))
    content = self.transformer_enc(tokens.permute(1, 0, 2))  # Sequence first.
    grid = content.permute(1, 2, 0).reshape(b, -1, h // p, w // p)
    return self.dec(grid)


class PCTNetViT(nn.Module):

  def __init__(self, m):
    super().__init__()
    self.encoder = ViTHarmonizer(m, NUM_PARAMS)
    self.get_params = nn.Conv2d(NUM_PARAMS, NUM_PARAMS, 1)

  def forward(self, image, mask):
    """[0, 1] image and mask -> (parameter map, None)."""
    return self.get_params(self.encoder(torch.cat([image, mask], 1))), None


def build(config) -> nn.Module:
  m = config.model
  model = PCTNetCNN(m) if m.variant == "cnn" else PCTNetViT(m)
  if m.variant == "cnn":
    mean, std = dih._MEAN, dih._STD  # pylint: disable=protected-access
  else:
    mean, std = torch.zeros(1, 3, 1, 1), torch.ones(1, 3, 1, 1)
  model.norm = (mean, std)
  model.low_res = m.low_res
  model.loss = config.loss
  return model


def _full_resolution(model, composite, mask):
  """(images_fullres in normalised space, low-resolution parameter map)."""
  mean, std = model.norm
  size = (model.low_res, model.low_res)
  small = F.interpolate(torch.cat([composite, mask], 1), size=size, mode="bilinear")
  params, attention = model((small[:, :3] - mean) / std, small[:, 3:])
  h, w = composite.shape[2:]
  up = F.interpolate(params, size=(h, w), mode="bicubic")
  a = mask if attention is None else F.interpolate(attention, size=(h, w), mode="bicubic")
  x = (composite - mean) / std
  # Linear_PCT: y = M x + b per pixel, M row-major in channels 0-8, b in 9-11.
  b, _ = x.shape[:2]
  pixels = x.permute(0, 2, 3, 1).reshape(b, h, w, 3, 1)
  m = up[:, :9].permute(0, 2, 3, 1).reshape(b, h, w, 3, 3)
  y = (m @ pixels)[..., 0] + up[:, 9:].permute(0, 2, 3, 1)
  y = (y.permute(0, 3, 1, 2).clamp(0, 1) - mean) / std
  return y * a + x * (1 - a), params


def sobel_magnitude(x, eps=1e-6):
  """kornia.filters.sobel: kernels / 8, replicate padding, sqrt(gx^2 + gy^2 + eps)."""
  gx = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
  kernel = torch.stack([gx, gx.T])[:, None].repeat(x.shape[1], 1, 1, 1)
  g = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
  gx, gy = g[:, 0::2], g[:, 1::2]
  return torch.sqrt(gx * gx + gy * gy + eps)


def train_loss(model, batch, generator):
  """FN-MSE (normalised space, min_area) + smoothness x mean Sobel magnitude."""
  del generator
  mean, std = model.norm
  out, params = _full_resolution(model, batch["composite"], batch["mask"])
  error = ((out - (batch["real"] - mean) / std) ** 2).sum((1, 2, 3))
  area = batch["mask"].sum((1, 2, 3)).clamp_min(model.loss.min_area)
  pixel = (error / (3 * area)).mean()
  return model.loss.pixel * pixel + model.loss.smoothness * sobel_magnitude(params).mean()


def make_optimizers(model, config) -> list:
  """Adam(optim.lr x batch_size / 16), as the family."""
  o = config.optim
  return [torch.optim.Adam(model.parameters(), lr=o.lr * config.batch_size / 16,
                           betas=(o.b1, o.b2), eps=o.eps)]


def predict(model, composite, mask):
  """images_fullres clipped to [0, 1], any size."""
  mean, std = model.norm
  out, _ = _full_resolution(model, composite, mask)
  return (out * std + mean).clamp(0, 1)
