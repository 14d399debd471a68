"""DoveNet and BargainNet in PyTorch: the attention U-Net, DoveNet's spectrally
normalized partial-convolution discriminator, BargainNet's domain encoder and
both training steps, mirroring harmonax/models/{attention_unet,dovenet,
bargainnet,partial_conv}.py. The DoveNet step is the official update order
(discriminator step on the detached output, then generator step)."""

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from harmonax.models import dovenet as jax_dovenet

def _norm(kind: str, ch: int) -> nn.Module:
  return nn.InstanceNorm2d(ch) if kind == "instance" else nn.BatchNorm2d(ch)


class UnetBlock(nn.Module):

  def __init__(self, outer, inner, inp=None, sub=None, kind="middle", norm="instance",
               attention=False, dropout=False):
    super().__init__()
    inp = inp or outer
    bias = norm == "instance"
    self.kind = kind
    down = nn.Conv2d(inp, inner, 4, 2, 1, bias=bias)
    if kind == "outer":
      layers = [down, sub, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1), nn.Tanh()]
    elif kind == "inner":
      layers = [nn.LeakyReLU(0.2), down, nn.ReLU(),
                nn.ConvTranspose2d(inner, outer, 4, 2, 1, bias=bias), _norm(norm, outer)]
    else:
      layers = [nn.LeakyReLU(0.2), down, _norm(norm, inner), sub, nn.ReLU(),
                nn.ConvTranspose2d(inner * 2, outer, 4, 2, 1, bias=bias), _norm(norm, outer)]
      layers += [nn.Dropout(0.5)] if dropout else []
    self.model = nn.Sequential(*layers)
    self.attention = (nn.Sequential(nn.Conv2d(outer + inp, outer + inp, 1), nn.Sigmoid())
                      if attention else None)

  def forward(self, x):
    if self.kind == "outer":
      return self.model(x)
    # The official in-place LeakyReLU: the skip carries the activated input.
    x = self.model[0](x)
    y = torch.cat([x, self.model[1:](x)], 1)
    return self.attention(y) * y if self.attention is not None else y


class AttentionUNet(nn.Module):

  def __init__(self, in_features, num_downs, ngf, norm, use_dropout, code_features=0):
    super().__init__()
    block = UnetBlock(ngf * 8, ngf * 8, kind="inner", norm=norm)
    for _ in range(num_downs - 5):
      block = UnetBlock(ngf * 8, ngf * 8, sub=block, norm=norm, dropout=use_dropout)
    for mult in (4, 2, 1):
      block = UnetBlock(ngf * mult, ngf * mult * 2, sub=block, norm=norm, attention=True)
    self.model = UnetBlock(3, ngf, in_features, block, kind="outer", norm=norm)
    self.code_features = code_features
    self.weight = nn.Parameter(torch.tensor([0.1])) if code_features else None

  def forward(self, x):
    if self.code_features:
      scale = self.weight.clamp_min(0.001)
      x = torch.cat([x[:, :-self.code_features], x[:, -self.code_features:] * scale], 1)
    return self.model(x)


class PartialConv2d(nn.Conv2d):
  """Returns (output, updated mask); a plain convolution without a mask."""

  def forward(self, x, mask=None):
    if mask is None:
      return super().forward(x), None
    k = self.kernel_size[0]
    with torch.no_grad():
      window = F.conv2d(mask, torch.ones(1, 1, k, k), None, self.stride, self.padding)
      updated = window.clamp(0, 1)
      ratio = k * k / (window + 1e-8) * updated
    raw = F.conv2d(x * mask, self.weight, None, self.stride, self.padding) * ratio
    if self.bias is None:
      return raw, updated
    return (raw + self.bias.view(1, -1, 1, 1)) * updated, updated


def _sn_conv(i, o, k, stride, bias):
  return nn.utils.spectral_norm(PartialConv2d(i, o, k, stride, 0, bias=bias))


class StreamEncoder(nn.Module):

  def __init__(self, ndf, num_strided, norm):
    super().__init__()
    self.num_convs, prev = num_strided + 1, 3
    for i in range(1, self.num_convs + 1):
      out = ndf * min(2 ** (i - 1), 8)
      bias = True if i == 1 else norm == "instance"
      for suffix in ("", "f"):
        self.add_module(f"conv{i}{suffix}",
                        _sn_conv(prev, out, 3, 2 if i <= num_strided else 1, bias))
        if 1 < i < self.num_convs:
          self.add_module(f"norm{i}{suffix}", _norm(norm, out))
      prev = out
    self.out_features = prev

  def stream(self, x, mask, suffix):
    for i in range(1, self.num_convs + 1):
      x, mask = getattr(self, f"conv{i}{suffix}")(x, mask)
      if i < self.num_convs:
        if i > 1:
          x = getattr(self, f"norm{i}{suffix}")(x)
        x = F.leaky_relu(x, 0.2)
    return x


class Discriminator(nn.Module):

  def __init__(self, ndf, num_strided, norm):
    super().__init__()
    self.D = StreamEncoder(ndf, num_strided, norm)
    c = self.D.out_features
    self.convl1, self.convl2 = _sn_conv(c, c, 1, 1, True), _sn_conv(c, c, 1, 1, True)
    self.convl3, self.convg3 = nn.Conv2d(c, 1, 1), nn.Conv2d(c, 1, 1)

  def forward(self, image, mask):
    x = self.D.stream(image, None, "")
    xf, xb = self.D.stream(image, mask, "f"), self.D.stream(image, 1 - mask, "f")
    sim = F.leaky_relu(self.convl1(xf * xb)[0], 0.2)
    sim = F.leaky_relu(self.convl2(sim)[0], 0.2)
    return self.convg3(x), self.convl3(sim)


class DomainEncoder(nn.Module):

  def __init__(self, ndf, code_dim):
    super().__init__()
    prev = 3
    for i, width in enumerate([ndf, ndf * 2, ndf * 4, ndf * 8, ndf * 8], start=1):
      self.add_module(f"conv{i}f", PartialConv2d(prev, width, 3, 2, 0, bias=i == 1))
      if 2 <= i <= 4:
        self.add_module(f"norm{i}f", nn.BatchNorm2d(width))
      prev = width
    self.convs = nn.Conv2d(prev, code_dim, 1)

  def forward(self, image, mask):
    x = image
    for i in range(1, 6):
      x, mask = getattr(self, f"conv{i}f")(x, mask)
      if i < 5:
        x = F.relu(getattr(self, f"norm{i}f")(x) if i >= 2 else x)
    return self.convs(x.mean((2, 3), keepdim=True))[:, :, 0, 0]


def build(config) -> nn.Module:
  """{'generator', 'discriminator'} (DoveNet) or {'generator', 'encoder'}; the
  loss weights (config.loss) ride along as `model.loss`."""
  m = config.model
  if m.name == "dovenet":
    model = nn.ModuleDict({
        "generator": AttentionUNet(4, m.num_downs, m.ngf, m.norm, m.use_dropout),
        "discriminator": Discriminator(m.ndf, m.d_num_strided, m.norm)})
  else:
    model = nn.ModuleDict({
        "generator": AttentionUNet(4 + m.code_dim, m.num_downs, m.ngf, m.norm, m.use_dropout,
                                   m.code_dim),
        "encoder": DomainEncoder(m.ndf, m.code_dim)})
  model.loss = config.loss.to_dict()
  return model


def load(model: nn.Module, nets: dict) -> None:
  """harmonax networks -> the twins (official names, spectral-norm keys included)."""
  for name, net in nets.items():
    state = {k: torch.from_numpy(np.array(v)) for k, v in jax_dovenet.to_torch(net).items()}
    missing, unexpected = model[name].load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
      raise ValueError(f"{name} twin: missing {missing[:5]}, unexpected {unexpected[:5]}")


def make_optimizers(model: nn.Module, config) -> list:
  o = config.optim
  adam = lambda params: torch.optim.Adam(params, lr=o.lr, betas=(o.b1, o.b2))
  if "discriminator" in model:
    return [adam(model["generator"].parameters()), adam(model["discriminator"].parameters())]
  return [adam(model.parameters())]  # BargainNet: one loss over G and E.


def _hinge(real, fake):
  return F.relu(1 - real).mean() + F.relu(1 + fake).mean()


def _dovenet_step(model, optimizers, batch, gen):
  g, d = model["generator"], model["discriminator"]
  opt_g, opt_d = optimizers
  comp, mask, real = batch["composite"] * 2 - 1, batch["mask"], batch["real"] * 2 - 1
  output = g(torch.cat([comp, mask], 1))
  d.requires_grad_(True)
  opt_d.zero_grad(set_to_none=True)
  fake = output.detach()
  fake_g, fake_v = d(fake, mask)
  real_g, real_v = d(real, mask)
  alpha = torch.rand(real.shape[0], 1, 1, 1, generator=gen)
  interp = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
  score = sum(d(interp, mask)) * 0.5
  grads = torch.autograd.grad(score.sum(), interp, create_graph=True)[0]
  norms = (grads + 1e-16).flatten(1).norm(dim=1)
  d_loss = (_hinge(real_g, fake_g) + _hinge(real_v, fake_v)
            + model.loss["gp"] * ((norms - 1) ** 2).mean())
  d_loss.backward()
  opt_d.step()
  d.requires_grad_(False)
  opt_g.zero_grad(set_to_none=True)
  fake_g, fake_v = d(output, mask)
  g_loss = -fake_g.mean() - fake_v.mean() + model.loss["l1"] * (output - real).abs().mean()
  g_loss.backward()
  opt_g.step()


def _code_map(comp, mask, code):
  return torch.cat([comp, mask, code[:, :, None, None].expand(-1, -1, *comp.shape[2:])], 1)


def _triplet(a, p, n, margin):
  return F.triplet_margin_loss(a[..., None], p[..., None], n[..., None], margin=margin)


def _bargainnet_step(model, optimizers, batch, gen):
  del gen
  g, e = model["generator"], model["encoder"]
  (opt,) = optimizers
  comp, mask, real = batch["composite"] * 2 - 1, batch["mask"], batch["real"] * 2 - 1
  opt.zero_grad(set_to_none=True)
  z_bg, z_real = e(real, 1 - mask), e(real, mask)
  harm = g(_code_map(comp, mask, z_bg))
  z_harm, z_comp = e(harm, mask), e(comp, mask)
  margin = model.loss["margin"]
  loss = ((harm - real).abs().mean() + model.loss["triplet"] * (
      _triplet(z_real, z_harm, z_comp, margin) + _triplet(z_harm, z_bg, z_comp, margin)))
  loss.backward()
  opt.step()


def train_step(twin, model, optimizers, batch, gen) -> None:
  """One official training iteration of the model's networks."""
  del twin
  step = _dovenet_step if "discriminator" in model else _bargainnet_step
  step(model, optimizers, batch, gen)


def predict(model, composite, mask):
  """The generator's image in [0, 1] (sizes that are multiples of 2**num_downs)."""
  comp = composite * 2 - 1
  if "encoder" in model:
    x = _code_map(comp, mask, model["encoder"](comp, 1 - mask))
  else:
    x = torch.cat([comp, mask], 1)
  return ((model["generator"](x) + 1) * 0.5).clamp(0, 1)
