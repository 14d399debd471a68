"""HRNetV2 + OCR + iDIH/iS2AM (the iharm IHModelWithBackbone) in PyTorch,
mirroring harmonax/models/{hrnet,backboned}.py with the official parameter
names (`backbone.hrnet.*`, `model.*`, `mask_conv.*`). Written from harmonax's
modules and the official definitions; no official code is copied.

Loss as the `dih` family: FN-MSE in normalised space (training-mode BN and the
OCR head's Dropout2d). Adam in two parameter groups: HRNet's pretrained weights
(all but the OCR head) at lr x backbone.lr_mult, the rest at lr.
"""

import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_models import dih

_OCR_HEAD = ("conv3x3_ocr", "ocr_distri_head")


def conv_bn(cin: int, cout: int, k: int, stride: int, relu: bool) -> nn.Sequential:
  steps = [nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout)]
  return nn.Sequential(*steps, nn.ReLU()) if relu else nn.Sequential(*steps)


def _up(x, size):
  return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


class BasicBlock(nn.Module):
  expansion = 1

  def __init__(self, cin: int, planes: int, downsample: bool):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, planes, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = conv_bn(cin, planes, 1, 1, False) if downsample else None

  def forward(self, x):
    out = self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x)))))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


class Bottleneck(nn.Module):
  expansion = 4

  def __init__(self, cin: int, planes: int, downsample: bool):
    super().__init__()
    out = planes * self.expansion
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, out, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(out)
    self.downsample = conv_bn(cin, out, 1, 1, False) if downsample else None

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn3(self.conv3(F.relu(self.bn2(self.conv2(out)))))
    return F.relu(out + (x if self.downsample is None else self.downsample(x)))


def make_layer(block, cin: int, planes: int, n: int) -> nn.Sequential:
  out = planes * block.expansion
  return nn.Sequential(*[block(cin if i == 0 else out, planes, i == 0 and cin != out)
                         for i in range(n)])


class HighResolutionModule(nn.Module):

  def __init__(self, channels: list[int], blocks: int):
    super().__init__()
    n = len(channels)
    self.branches = nn.ModuleList([make_layer(BasicBlock, c, c, blocks) for c in channels])
    fuse = []
    for i in range(n):
      row = []
      for j in range(n):
        if j > i:
          row.append(conv_bn(channels[j], channels[i], 1, 1, False))
        elif j == i:
          row.append(None)
        else:
          row.append(nn.Sequential(*[
              conv_bn(channels[j], channels[i] if k == i - j - 1 else channels[j], 3, 2,
                      k < i - j - 1) for k in range(i - j)]))
      fuse.append(nn.ModuleList(row))
    self.fuse_layers = nn.ModuleList(fuse)

  def forward(self, xs):
    xs = [branch(x) for branch, x in zip(self.branches, xs)]
    fused = []
    for i, row in enumerate(self.fuse_layers):
      y = xs[0] if i == 0 else row[0](xs[0])
      for j in range(1, len(xs)):
        if j == i:
          y = y + xs[j]
        elif j > i:
          y = y + _up(row[j](xs[j]), xs[i].shape[2:])
        else:
          y = y + row[j](xs[j])
      fused.append(F.relu(y))
    return fused


def make_transition(pre: list[int], cur: list[int]) -> nn.ModuleList:
  steps = []
  for i, c in enumerate(cur):
    if i < len(pre):
      steps.append(conv_bn(pre[i], c, 3, 1, True) if c != pre[i] else None)
    else:
      n = i + 1 - len(pre)
      steps.append(nn.Sequential(*[conv_bn(pre[-1], c if k == n - 1 else pre[-1], 3, 2, True)
                                   for k in range(n)]))
  return nn.ModuleList(steps)


def _cbr(cin: int, cout: int) -> list[nn.Module]:  # [Conv1x1, [BN, ReLU]]
  return [nn.Conv2d(cin, cout, 1, bias=False), nn.Sequential(nn.BatchNorm2d(cout), nn.ReLU())]


class ObjectAttentionBlock(nn.Module):

  def __init__(self, ch: int, key_ch: int):
    super().__init__()
    self.f_pixel = nn.Sequential(*_cbr(ch, key_ch), *_cbr(key_ch, key_ch))
    self.f_object = nn.Sequential(*_cbr(ch, key_ch), *_cbr(key_ch, key_ch))
    self.f_down = nn.Sequential(*_cbr(ch, key_ch))
    self.f_up = nn.Sequential(*_cbr(key_ch, ch))
    self.key_channels = key_ch

  def forward(self, x, proxy):
    b, _, h, w = x.shape
    query = self.f_pixel(x).flatten(2).transpose(1, 2)  # [B, HW, K]
    key = self.f_object(proxy).flatten(2)  # [B, K, regions]
    value = self.f_down(proxy).flatten(2).transpose(1, 2)
    sim = F.softmax(query @ key * self.key_channels ** -0.5, dim=-1)
    context = (sim @ value).transpose(1, 2).reshape(b, self.key_channels, h, w)
    return self.f_up(context)


class SpatialOCR(nn.Module):

  def __init__(self, ch: int, key_ch: int):
    super().__init__()
    self.object_context_block = ObjectAttentionBlock(ch, key_ch)
    self.conv_bn_dropout = nn.Sequential(nn.Conv2d(2 * ch, ch, 1, bias=False),
                                         nn.Sequential(nn.BatchNorm2d(ch), nn.ReLU()),
                                         nn.Dropout2d(0.05))

  def forward(self, feats, proxy):
    return self.conv_bn_dropout(torch.cat([self.object_context_block(feats, proxy), feats], 1))


class HighResolutionNet(nn.Module):

  def __init__(self, bb):
    super().__init__()
    stem, width, blocks = bb.stem, bb.width, bb.blocks
    self.conv1 = nn.Conv2d(3, stem, 3, 2, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem)
    self.conv2 = nn.Conv2d(stem, stem, 3, 2, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(stem)
    self.layer1 = make_layer(Bottleneck, stem, stem, blocks)
    pre = [stem * Bottleneck.expansion]
    for stage, count in zip((2, 3, 4), bb.modules):
      cur = [width * 2 ** i for i in range(stage)]
      setattr(self, f"transition{stage - 1}", make_transition(pre, cur))
      setattr(self, f"stage{stage}",
              nn.Sequential(*[HighResolutionModule(cur, blocks) for _ in range(count)]))
      pre = cur
    self.ocr_width = bb.ocr
    if bb.ocr > 0:
      mid = 2 * bb.ocr
      self.conv3x3_ocr = nn.Sequential(nn.Conv2d(sum(pre), mid, 3, 1, 1), nn.BatchNorm2d(mid),
                                       nn.ReLU())
      self.ocr_distri_head = SpatialOCR(mid, bb.ocr)
    self.output_channels = 2 * bb.ocr if bb.ocr > 0 else sum(pre)

  def forward(self, x, regions, mask_features):
    x = F.relu(self.bn1(self.conv1(x))) + mask_features
    ys = [self.layer1(F.relu(self.bn2(self.conv2(x))))]
    for stage in (2, 3, 4):
      transition = getattr(self, f"transition{stage - 1}")
      xs = [ys[min(i, len(ys) - 1)] if t is None else t(ys[min(i, len(ys) - 1)])
            for i, t in enumerate(transition)]
      ys = getattr(self, f"stage{stage}")(xs)
    size = ys[0].shape[2:]
    feats = torch.cat([ys[0]] + [_up(y, size) for y in ys[1:]], 1)
    if self.ocr_width <= 0:
      return feats
    feats = self.conv3x3_ocr(feats)
    # SpatialGather_Module: softmax of the region maps over the pixels.
    probs = F.softmax(_up(regions, feats.shape[2:]).flatten(2), dim=2)  # [B, 2, HW]
    proxy = (probs @ feats.flatten(2).transpose(1, 2)).transpose(1, 2)[..., None]
    return self.ocr_distri_head(feats, proxy)


class ScaleLayer(nn.Module):

  def __init__(self, value: float = 0.1):
    super().__init__()
    self.scale = nn.Parameter(torch.full((1,), value))

  def forward(self, x):
    return x * self.scale.abs()


class HRNetIHModel(nn.Module):
  """IHModelWithBackbone(base, HRNetBB), mask_fusion 'sum', 'cat' connectors."""

  def __init__(self, config):
    super().__init__()
    m = config.model
    bb = m.backbone
    if bb.mode != "cat":
      raise ValueError(f"hrnet twin: backbone mode {bb.mode!r}; only 'cat' is mirrored")
    self.backbone = nn.Module()
    self.backbone.hrnet = HighResolutionNet(bb)
    self.downsize_input = bb.downsize_input
    self.model = dih.base_network(m, 3 if bb.downsize_input else 2,
                                  (self.backbone.hrnet.output_channels,))
    self.mask_conv = nn.Sequential(nn.Conv2d(1, bb.stem, 3, 2, 1), ScaleLayer(0.1))
    self.min_area = config.loss.min_area

  def forward(self, image, mask):
    regions = torch.cat([mask, 1 - mask], 1)
    bimage = image
    if self.downsize_input:
      size = (image.shape[2] // 2, image.shape[3] // 2)
      bimage, regions = _up(image, size), _up(regions, size)
    feats = self.backbone.hrnet(bimage, regions, self.mask_conv(regions[:, :1]))
    return self.model(image, mask, [feats])


def build(config) -> nn.Module:
  return HRNetIHModel(config)


train_loss = dih.train_loss
predict = dih.predict


def make_optimizers(model, config) -> list:
  """One Adam, two groups: pretrained HRNet (not the OCR head) at lr x lr_mult."""
  o = config.optim
  slow, fast = [], []
  for name, p in model.named_parameters():
    parts = name.split(".")
    pretrained = parts[:2] == ["backbone", "hrnet"] and parts[2] not in _OCR_HEAD
    (slow if pretrained else fast).append(p)
  lr = o.lr
  return [torch.optim.Adam([{"params": slow, "lr": lr * config.model.backbone.lr_mult},
                            {"params": fast}], lr=lr, betas=(o.b1, o.b2), eps=o.eps)]
