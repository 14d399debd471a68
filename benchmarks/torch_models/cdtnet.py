"""CDTNet and CDTNet(sim) in PyTorch, mirroring harmonax/models/cdtnet.py with the
official parameter names (`encoder.*`, `decoder.*` of the iS2AM base, `lut.*`,
`refine.*`). Written from harmonax's modules and the official definitions; no
official code is copied.

As the official code: the iS2AM base (frozen, eval mode, no gradients) sees a
bilinear base_size view; each of the n LUTs is applied to each image at full
resolution (the official trilinear kernel at batch 1: cell floor(x / binsize),
fraction fmod(x, binsize) / binsize, binsize = 1.000001 / (dim - 1), here as
gathers from the flattened table) and weighted by the predicted weights; the
refinement runs on the whole full-resolution image at once. Loss: the family's
sum of FN-MSEs (final, LUT, base) in [0, 1] space. Adam over the LUT branch and
the refinement (one optimizer, as the official).
"""

import ml_collections
import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from benchmarks.torch_models import dih


class LUT3D(nn.Module):

  def __init__(self, dim: int):
    super().__init__()
    self.LUT = nn.Parameter(torch.zeros(3, dim, dim, dim))  # pylint: disable=invalid-name


def trilinear(lut: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
  """The official trilinear forward: lut [3, dim, dim, dim] ([C, B, G, R]),
  image [3, H, W] in [0, 1] -> [3, H, W]; differentiable in the table."""
  dim = lut.shape[-1]
  size = torch.tensor(1.000001 / (dim - 1), dtype=torch.float32)
  x = image.reshape(3, -1)
  cell = torch.floor(x / size).clamp(0, dim - 2).long()
  frac = torch.fmod(x, size) / size
  base = cell[0] + cell[1] * dim + cell[2] * dim * dim
  table = lut.reshape(3, -1)
  out = 0.0
  for dr in (0, 1):
    wr = frac[0] if dr else 1 - frac[0]
    for dg in (0, 1):
      wg = frac[1] if dg else 1 - frac[1]
      for db in (0, 1):
        wb = frac[2] if db else 1 - frac[2]
        out = out + wr * wg * wb * table[:, base + (dr + dg * dim + db * dim * dim)]
  return out.reshape(image.shape)


class WeightPredictor(nn.Module):
  """Weight_predictor_issam (fb=True): fg/bg average pools over the whole map."""

  def __init__(self, in_ch: int, hidden: int, n_luts: int):
    super().__init__()
    self.conv = nn.Conv2d(in_ch, hidden, 1)
    self.fc = nn.Conv2d(2 * hidden, n_luts, 1)

  def forward(self, deepest, mask):
    x = self.conv(deepest)
    m = F.interpolate(mask, size=x.shape[2:], mode="bilinear")
    pooled = torch.cat([F.adaptive_avg_pool2d(x * m, 1), F.adaptive_avg_pool2d(x * (1 - m), 1)],
                       1)
    return self.fc(pooled)[:, :, 0, 0]


class LUTBranch(nn.Module):

  def __init__(self, in_ch: int, hidden: int, n_luts: int, dim: int):
    super().__init__()
    for i in range(n_luts):
      setattr(self, f"LUT{i}", LUT3D(dim))
    self.classifier = WeightPredictor(in_ch, hidden, n_luts)
    self.n_luts = n_luts

  def forward(self, deepest, image, mask):
    weights = self.classifier(deepest, mask)
    combined = []
    for b in range(image.shape[0]):  # The official kernel is per image (batch 1).
      combined.append(sum(weights[b, i] * trilinear(getattr(self, f"LUT{i}").LUT, image[b])
                          for i in range(self.n_luts)))
    return torch.stack(combined) * mask + image * (1 - mask)


class Refine(dih._Head):  # pylint: disable=protected-access

  def __init__(self, in_ch: int, ch: int):
    super().__init__()
    kw = dict(kernel_size=3, padding=1)
    self.block = nn.Sequential(nn.Conv2d(in_ch, ch, **kw), nn.BatchNorm2d(ch), nn.ELU(),
                               nn.Conv2d(ch, ch, **kw), nn.BatchNorm2d(ch), nn.ELU())
    self._init_head(ch, True)

  def forward(self, x, image):
    return self._head(self.block(x), image)


class CDTNet(dih.SSAMImageHarmonization):
  """The iS2AM base (encoder, decoder) + `lut` (+ `refine` unless sim)."""

  def __init__(self, config):
    m = config.model
    b = m.base
    super().__init__(b.depth, b.ch, b.max_channels, b.batchnorm_from, b.attend_from,
                     b.attention_mid_k, b.image_fusion)
    self.lut = LUTBranch(self.encoder.channels[-1], m.lut_hidden, m.n_luts, m.lut_dim)
    self.refine = None if m.sim else Refine(7 + b.ch, m.refine_channels)
    self.finetune_base = m.finetune_base
    for p in [*self.encoder.parameters(), *self.decoder.parameters()]:
      p.requires_grad_(m.finetune_base)
    self.base_size, self.sim, self.loss = m.base_size, m.sim, config.loss

  def train(self, mode: bool = True):
    """The frozen base stays in eval mode, as the official trainer keeps it."""
    super().train(mode)
    if not self.finetune_base:
      self.encoder.eval()
      self.decoder.eval()
    return self

  def forward(self, composite, mask):
    """{'images', 'lut_images' (full resolution), 'base_images'}, [0, 1] space."""
    normed = dih.normalize(composite)
    low = F.interpolate(torch.cat([normed, mask], 1), size=(self.base_size,) * 2,
                        mode="bilinear")
    base = self.features(low[:, :3], low[:, 3:])
    lut_images = self.lut(base["encoder"][0], composite, mask)
    out = {"lut_images": lut_images,
           "base_images": base["images"] * dih._STD + dih._MEAN}  # pylint: disable=protected-access
    if self.sim:
      out["images"] = lut_images
      return out
    up = F.interpolate(torch.cat([base["images"], base["decoder"]], 1), size=composite.shape[2:],
                       mode="bilinear")
    x = torch.cat([up[:, :3], dih.normalize(lut_images), mask, up[:, 3:]], 1)
    out["images"] = self.refine(x, normed) * dih._STD + dih._MEAN  # pylint: disable=protected-access
    return out


def build(config) -> nn.Module:
  return CDTNet(config)


def load(model: CDTNet, nets: dict) -> None:
  """The harmonax networks 'base', 'lut', 'refine' under the official prefixes (strict)."""
  from harmonax import torch_import  # pylint: disable=g-import-not-at-top
  state = dict(torch_import.to_state_dict(nets["base"]))
  for name in ("lut", "refine"):
    if name in nets:
      state.update({f"{name}.{k}": v for k, v in torch_import.to_state_dict(nets[name]).items()})
  state = {k: torch.from_numpy(np.array(v)) for k, v in state.items()}
  missing, unexpected = model.load_state_dict(state, strict=False)
  missing = [k for k in missing if not k.endswith("num_batches_tracked")]
  if missing or unexpected:
    raise ValueError(f"twin does not match: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _fn_mse(pred, target, mask, min_area):
  error = ((pred - target) ** 2).sum((1, 2, 3))
  return (error / (pred.shape[1] * mask.sum((1, 2, 3)).clamp_min(min_area))).mean()


def train_loss(model, batch, generator):
  del generator
  composite, mask, real = batch["composite"], batch["mask"], batch["real"]
  out = model(composite, mask)
  c = model.loss
  size = (model.base_size,) * 2
  small = lambda t: F.interpolate(t, size=size, mode="bilinear")  # noqa: E731
  return (c.pixel_weight * _fn_mse(out["images"], real, mask, c.min_area)
          + c.lut_weight * _fn_mse(out["lut_images"], real, mask, c.min_area)
          + c.base_weight * _fn_mse(out["base_images"], small(real), small(mask), c.min_area))


def make_optimizers(model, config: ml_collections.ConfigDict) -> list:
  """One Adam over the trained parameters (the LUT branch and the refinement, and
  the base when config.model.finetune_base)."""
  o = config.optim
  return [torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=o.lr,
                           betas=(o.b1, o.b2), eps=o.eps)]


def predict(model, composite, mask):
  return model(composite, mask)["images"].clamp(0, 1)
