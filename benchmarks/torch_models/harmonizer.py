"""Harmonizer in PyTorch: EfficientNet-B0 (two stems), cascade regressor, the
six filters and the training loss, mirroring harmonax/models/harmonizer.py,
efficientnet.py and harmonax/filters.py."""

import torch
from torch import nn
import torch.nn.functional as F

from harmonax.models import efficientnet as jax_efficientnet

EPS, POW_EPS = 1e-6, 1e-9


class SameConv(nn.Conv2d):
  """TensorFlow 'SAME' padding (extra row/column at the bottom/right)."""

  def forward(self, x):
    ih, iw = x.shape[-2:]
    (kh, kw), (s, _) = self.kernel_size, self.stride
    ph = max((-(-ih // s) - 1) * s + kh - ih, 0)
    pw = max((-(-iw // s) - 1) * s + kw - iw, 0)
    if ph or pw:
      x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return super().forward(x)


def _bn(ch: int) -> nn.BatchNorm2d:
  return nn.BatchNorm2d(ch, momentum=0.01, eps=1e-3)


class MBConv(nn.Module):

  def __init__(self, cin, cout, kernel, stride, expand, se_ratio, drop_rate):
    super().__init__()
    mid = cin * expand
    self.expand = expand
    if expand != 1:
      self._expand_conv = SameConv(cin, mid, 1, bias=False)
      self._bn0 = _bn(mid)
    self._depthwise_conv = SameConv(mid, mid, kernel, stride, groups=mid, bias=False)
    self._bn1 = _bn(mid)
    squeezed = max(1, int(cin * se_ratio))
    self._se_reduce = nn.Conv2d(mid, squeezed, 1)
    self._se_expand = nn.Conv2d(squeezed, mid, 1)
    self._project_conv = SameConv(mid, cout, 1, bias=False)
    self._bn2 = _bn(cout)
    self.residual = stride == 1 and cin == cout
    self.drop_rate = drop_rate

  def forward(self, inputs):
    x = inputs
    if self.expand != 1:
      x = F.silu(self._bn0(self._expand_conv(x)))
    x = F.silu(self._bn1(self._depthwise_conv(x)))
    s = self._se_expand(F.silu(self._se_reduce(x.mean((2, 3), keepdim=True))))
    x = self._bn2(self._project_conv(torch.sigmoid(s) * x))
    if self.residual:
      if self.training and self.drop_rate > 0:  # Drop connect.
        keep = 1 - self.drop_rate
        x = x * torch.bernoulli(torch.full((x.shape[0], 1, 1, 1), keep)) / keep
      x = x + inputs
    return x


class EfficientNet(nn.Module):
  """Harmonizer's backbone (the 'fg_bg' stem), blocks as harmonax's."""

  def __init__(self, width=1.0, depth=1.0, drop_connect_rate=0.2):
    super().__init__()
    ef = jax_efficientnet
    stem = ef.round_filters(32, width)
    self._conv_fg = SameConv(4, stem // 2, 3, 2, bias=False)
    self._bn_fg = _bn(stem // 2)
    self._conv_bg = SameConv(4, stem // 2, 3, 2, bias=False)
    self._bn_bg = _bn(stem // 2)
    specs = []
    for st in ef.B0_STAGES:
      cin, cout = ef.round_filters(st.in_ch, width), ef.round_filters(st.out_ch, width)
      for i in range(ef.round_repeats(st.repeats, depth)):
        specs.append((cin if i == 0 else cout, cout, st.stride if i == 0 else 1, st))
    self._blocks = nn.ModuleList([
        MBConv(cin, cout, st.kernel, stride, st.expand, st.se_ratio,
               drop_connect_rate * idx / len(specs))
        for idx, (cin, cout, stride, st) in enumerate(specs)])
    self.out_channels = ef.round_filters(1280, width)
    self._conv_head = SameConv(specs[-1][1], self.out_channels, 1, bias=False)
    self._bn1 = _bn(self.out_channels)

  def forward(self, image, mask):
    fg = F.silu(self._bn_fg(self._conv_fg(torch.cat([image, mask], 1))))
    bg = F.silu(self._bn_bg(self._conv_bg(torch.cat([image, 1 - mask], 1))))
    x = torch.cat([fg, bg], 1)
    for block in self._blocks:
      x = block(x)
    return F.silu(self._bn1(self._conv_head(x)))


class Regressor(nn.Module):

  def __init__(self, cin: int, heads: int = 6):
    super().__init__()
    self.f, self.g = nn.Linear(cin, 160), nn.Linear(cin, 160)
    self.headers = nn.ModuleList([nn.ModuleList([nn.Linear(320, 160), nn.Linear(160, 1)])
                                  for _ in range(heads)])

  def forward(self, features):
    x = features.mean((2, 3))
    f, g = self.f(x), self.g(x)
    args = []
    for hidden, out in self.headers:
      g = hidden(torch.cat([f, g], 1))
      args.append(out(g))
    return torch.cat(args, 1)


class Harmonizer(nn.Module):

  def __init__(self, input_size=256, width=1.0, depth=1.0, drop_connect_rate=0.2):
    super().__init__()
    self.input_size = input_size
    self.backbone = EfficientNet(width, depth, drop_connect_rate)
    self.regressor = Regressor(self.backbone.out_channels)

  def forward(self, composite, mask):
    size = (self.input_size, self.input_size)
    if composite.shape[2:] != size:
      composite = F.interpolate(composite, size, mode="bilinear", align_corners=False)
      mask = F.interpolate(mask, size, mode="bilinear", align_corners=False)
    return self.regressor(self.backbone(composite, mask)).clamp(-1, 1)


# --- Filters (harmonax/filters.py) ------------------------------------------

def _pow(base, p):
  return torch.exp(p * torch.log(base.clamp_min(POW_EPS)))


def temperature(image, x):
  means = image.mean((2, 3), keepdim=True)
  base = 1 - means.mean(1, keepdim=True) / (means + EPS)
  ax = x.abs()
  shift = torch.cat([ax * (x < 0), 0.5 * ax * (x != 0), ax * (x > 0)], 1)
  shifted = means + shift
  return ((shifted.mean(1, keepdim=True) / (shifted + EPS) + base) * image).clamp(0, 1)


def brightness(image, x):
  return (image * torch.where(x >= 0, 1 / ((1 - x) + EPS), x + 1)).clamp(0, 1)


def contrast(image, x):
  threshold = image.mean((1, 2, 3), keepdim=True)
  factor = torch.where(x > 0, 255 / (256 - torch.floor(x * 255)) - 1, x)
  return (image + (image - threshold) * factor).clamp(0, 1)


def saturation(image, x):
  cmin, cmax = image.amin(1, keepdim=True), image.amax(1, keepdim=True)
  var, ran = cmax - cmin, cmax + cmin
  mean = ran / 2
  s = var / torch.where(mean < 0.5, ran + EPS, 2 - ran + EPS)
  factor = torch.where(x >= 0, 1 / (torch.where(x + s > 1, s, 1 - x) + EPS), 1 + x)
  return (mean + (image - mean) * factor).clamp(0, 1)


def highlight(image, x):
  return (1 - _pow(1 - image, x + 1).clamp(0, 1)).clamp(0, 1)


def shadow(image, x):
  return _pow(image, 1 - x).clamp(0, 1)


FILTERS = (temperature, brightness, contrast, saturation, highlight, shadow)


def apply_filters(image, mask, args):
  """(final, [each filter's output blended with the input]), as harmonax's."""
  current, outputs = image, []
  for i, fn in enumerate(FILTERS):
    current = fn(current, args[:, i:i + 1, None, None])
    outputs.append(current * mask + image * (1 - mask))
  return outputs[-1], outputs


def synthesize(real, mask, args):
  current, adjusted = real, []
  for i in reversed(range(len(FILTERS))):
    current = FILTERS[i](current, args[:, i:i + 1, None, None])
    adjusted.append(current * mask + real * (1 - mask))
  return adjusted[-1], adjusted[-2::-1] + [real]


def _rgb_to_hsv(x):
  r, g, b = x.unbind(1)
  cmax, cmin = x.amax(1), x.amin(1)
  delta = cmax - cmin
  safe = torch.where(delta > 0, delta, torch.ones_like(delta))
  h = torch.where(cmax == r, ((g - b) / safe) % 6,
                  torch.where(cmax == g, (b - r) / safe + 2, (r - g) / safe + 4)) / 6
  h = torch.where(delta > 0, h, torch.zeros_like(h))
  s = torch.where(cmax > 0, delta / torch.where(cmax > 0, cmax, torch.ones_like(cmax)), 0 * cmax)
  return torch.stack([h % 1.0, s, cmax], 1)


def _hsv_to_rgb(x):
  h, s, v = x.unbind(1)
  k = lambda n: (n + h * 6) % 6
  f = lambda n: v - v * s * (torch.minimum(k(n), 4 - k(n)).clamp(0, 1))
  return torch.stack([f(5), f(3), f(1)], 1)


def color_jitter(image, gen, jitter):
  b = image.shape[0]
  factor = lambda s: 1 - s + 2 * s * torch.rand(b, 1, 1, 1, generator=gen)
  gray = lambda x: (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, True)
  x = (image * factor(jitter["brightness"])).clamp(0, 1)
  f = factor(jitter["contrast"])
  x = (f * x + (1 - f) * gray(x).mean((1, 2, 3), keepdim=True)).clamp(0, 1)
  f = factor(jitter["saturation"])
  x = (f * x + (1 - f) * gray(x)).clamp(0, 1)
  hsv = _rgb_to_hsv(x)
  shift = (torch.rand(b, 1, 1, generator=gen) * 2 - 1) * jitter["hue"]
  hsv = torch.stack([(hsv[:, 0] + shift) % 1.0, hsv[:, 1], hsv[:, 2]], 1)
  return _hsv_to_rgb(hsv).clamp(0, 1)


def random_rot90(images, gen):
  b = images[0].shape[0]
  k = torch.where(torch.rand(b, generator=gen) < 0.5,
                  torch.randint(1, 4, (b,), generator=gen), torch.zeros(b, dtype=torch.long))
  out = []
  for x in images:
    rotated = torch.stack([torch.rot90(x, r, (2, 3)) for r in range(4)])
    out.append(rotated[k, torch.arange(b)])
  return out


def filter_loss(pred, target, mask):
  d2 = (pred - target) ** 2
  per_pixel = torch.sqrt(d2 + 1e-6) + 10 * d2
  return (per_pixel * mask).sum((1, 2, 3)) / (mask.sum((1, 2, 3)) + 1e-6)


def dynamic_weighted(stage):
  fixed = stage.detach()
  total = fixed[0] + F.relu(fixed[1:] - fixed[:-1]).sum(0) + 1e-9
  return torch.cat([stage[:1] / total, F.relu((stage[1:] - fixed[:-1]) / total)], 0)


# --- The module contract -----------------------------------------------------

def build(config) -> nn.Module:
  m = config.model
  model = Harmonizer(m.input_size, m.width, m.depth, m.drop_connect_rate)
  model.loss = config.loss.to_dict()
  return model


def train_loss(model, batch, gen):
  """harmonax.models.harmonizer.compute_losses, in PyTorch (weights from config.loss)."""
  cl = model.loss
  composite, mask, real = random_rot90([batch["composite"], batch["mask"], batch["real"]], gen)
  b = composite.shape[0]
  num_real = int(round(b * cl["real_fraction"]))
  synthetic = torch.arange(b) < b - num_real
  row = synthetic[:, None, None, None]
  jittered = torch.where(row, color_jitter(real, gen, cl["color_jitter"]), real)
  args = torch.rand(b, len(FILTERS), generator=gen) * 2 - 1
  made, targets = synthesize(jittered, mask, args * torch.tensor(cl["argument_ranges"]))
  inputs = torch.where(row, made, composite)
  targets = [torch.where(row, t, real) for t in targets[:-1]] + [jittered]
  _, outputs = apply_filters(inputs, mask, model(inputs, mask))
  stage = torch.stack([filter_loss(o, t, mask) for o, t in zip(outputs, targets)])
  syn = synthetic.float()
  terms = (dynamic_weighted(stage) * syn).sum(1) / syn.sum().clamp_min(1)
  real_loss = (stage[-1] * (1 - syn)).sum() / max(num_real, 1)
  return terms.sum() + cl["real_weight"] * real_loss


def predict(model, composite, mask):
  final, _ = apply_filters(composite, mask, model(composite, mask))
  return torch.where(mask > 0, mask * final + (1 - mask) * composite, composite)
