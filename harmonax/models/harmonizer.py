"""Harmonizer (Ke et al., ECCV 2022): white-box filters from a cascade regressor.

One network, 'harmonizer': an EfficientNet-B0 with a two-stem input (see
`efficientnet.py`) sees the composite and mask resized to `input_size` (256)
and a cascade regressor predicts one argument per filter of
`filters.FILTER_NAMES`; the filters then run on the full-resolution composite,
so a 4K image costs the backbone at 256 plus six pointwise passes.

Training (`compute_losses`), as the official trainer: the first rows of a
batch become synthetic pairs made in the step from their `real` image and
mask (random arguments, forward filters applied in reverse order, every
intermediate kept as the target of one filter stage; the models.md summary
says "inverse filters", the official code applies the forward filters with
arguments scaled by config.loss.argument_ranges, which we follow); they get the per-filter
loss with dynamic weighting. The last `config.loss.real_fraction` of the rows
are the dataset's composites and get `real_weight` (10) x the final-output loss.
Batch 16 + 8 in the paper: batch_size 24 with real_fraction 1/3.

Not in the paper (off in its recipe, on in the quick start's demo):
`model.color_statistics` appends 13 color statistics of the foreground and
background (`color_statistics`) to the regressor's pooled features,
`config.loss.transfer_fraction` / `identity_fraction` make training composites
in the step (`training_rows`, harmonax.recolor), and
`config.loss.contrast_straight_through` gives positive contrast arguments a
gradient (`filters.contrast`; the official filter's floor() leaves them none,
so a positive contrast drifted unchecked and the later filters learned to make
up for it).
"""

import math

from flax import nnx
import dm_pix as pix
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from harmonax import filters
from harmonax import optimizers
from harmonax import recolor
from harmonax import torch_import
from harmonax import variables
from harmonax.models import efficientnet
from harmonax.models import layers

NUM_FILTERS = len(filters.FILTER_NAMES)

INPUTS = ("composite", "mask")
PRESERVES_BACKGROUND = True


def _torch_linear(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Linear:
  """nnx.Linear initialized as PyTorch's nn.Linear (U(+-1/sqrt(fan_in)))."""
  bound = 1 / math.sqrt(cin)
  return nnx.Linear(
      cin, cout, rngs=rngs,
      kernel_init=jax.nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform"),
      bias_init=lambda key, shape, dtype: jax.random.uniform(
          key, shape, dtype, -bound, bound))


class CascadeArgumentRegressor(nnx.Module):
  """Pooled features -> one argument per filter; head i sees head i-1's state.

  f = Linear(C, 160)(x), g = Linear(C, 160)(x); for each head:
  g = Linear(320, 160)([f, g]), argument = Linear(160, 1)(g). No activations.
  """

  def __init__(self, in_ch: int, base_ch: int = 160, num_heads: int = NUM_FILTERS,
               *, small_arguments: bool = False, rngs: nnx.Rngs):
    self.f = _torch_linear(in_ch, 160, rngs)
    self.g = _torch_linear(in_ch, base_ch, rngs)
    self.headers = nnx.List([
        nnx.List([_torch_linear(160 + base_ch, base_ch, rngs),
                  _torch_linear(base_ch, 1, rngs)])
        for _ in range(num_heads)])
    if small_arguments:
      # Every head's last layer at 1/100 of its random init, zero bias: the
      # arguments start within about 1e-3 of 0. Not exactly 0: the temperature
      # filter's gradient is 0 at argument 0 (its |x| terms are masked by x < 0
      # and x > 0), so a zero head would never learn it.
      for _, out in self.headers:
        layers.restart(out, 0.01, 0.0)

  def __call__(self, features: jax.Array, extra: jax.Array | None = None) -> jax.Array:
    """[B, h, w, C] (and optionally [B, E] more inputs, appended to the pooled
    features) -> raw (unclamped) arguments [B, num_heads]."""
    x = jnp.mean(features, axis=(1, 2))
    if extra is not None:
      x = jnp.concatenate([x, extra], axis=-1)
    f, g = self.f(x), self.g(x)
    args = []
    for hidden, out in self.headers:
      g = hidden(jnp.concatenate([f, g], axis=-1))
      args.append(out(g))
    return jnp.concatenate(args, axis=-1)


# Length of `color_statistics`' vector.
NUM_STATISTICS = 13
# Added to both sides of `color_statistics`' ratios: a gray foreground (chroma 0)
# against a colorful scene stays finite.
_RATIO_EPS = 0.02


def color_statistics(image: jax.Array, mask: jax.Array) -> jax.Array:
  """[B, 13]: for the foreground (weights `mask`) and then the background, the
  mean RGB, the mean chroma (max - min over channels) and the std of the
  luminance (channel mean) of `image` [B, H, W, 3]; then log((bg + 0.02) /
  (fg + 0.02)) of the chroma, the mean luminance and the luminance std.

  Not in the paper; the demo's regressor gets them next to its pooled features
  (`model.color_statistics`). Why: a foreground of 1-3% of the frame barely
  moves a global average of the backbone's features, and the demo's network,
  trained minutes from scratch, gave a coin the same arguments whether its
  foreground was gray, recolored or tinted red (configs/harmonizer.py). The
  ratios put the cue that the sample's photos share, a foreground about as
  colorful as its scene (a gray photo's objects are gray), on one input.
  """
  chroma = jnp.max(image, -1, keepdims=True) - jnp.min(image, -1, keepdims=True)
  luma = jnp.mean(image, -1, keepdims=True)
  out = []
  for weights in (mask, 1 - mask):
    area = jnp.sum(weights, axis=(1, 2)) + 1e-6
    mean_rgb, mean_chroma, mean_luma, mean_luma2 = (
        jnp.sum(x * weights, axis=(1, 2)) / area
        for x in (image, chroma, luma, jnp.square(luma)))
    luma_std = jnp.sqrt(jnp.maximum(mean_luma2 - jnp.square(mean_luma), 0) + 1e-8)
    out += [mean_rgb, mean_chroma, luma_std]
  (fg_rgb, fg_chroma, fg_std), (bg_rgb, bg_chroma, bg_std) = out[:3], out[3:]
  ratio = lambda bg, fg: jnp.log((bg + _RATIO_EPS) / (fg + _RATIO_EPS))
  out.append(jnp.concatenate([
      ratio(bg_chroma, fg_chroma),
      ratio(jnp.mean(bg_rgb, -1, keepdims=True), jnp.mean(fg_rgb, -1, keepdims=True)),
      ratio(bg_std, fg_std)], axis=-1))
  return jnp.concatenate(out, axis=-1)


class Harmonizer(nnx.Module):
  """Backbone + cascade regressor: composite and mask -> filter arguments."""

  def __init__(self, *, input_size: int = 256, width: float = 1.0,
               depth: float = 1.0, drop_connect_rate: float = 0.2,
               color_statistics: bool = False, identity_init: bool = False,
               rngs: nnx.Rngs):
    self.input_size = input_size
    self.color_statistics = color_statistics
    self.backbone = efficientnet.EfficientNet(
        width=width, depth=depth, stem="fg_bg",
        drop_connect_rate=drop_connect_rate, rngs=rngs)
    self.regressor = CascadeArgumentRegressor(
        self.backbone.out_channels + (NUM_STATISTICS if color_statistics else 0),
        small_arguments=identity_init, rngs=rngs)

  def raw_arguments(self, composite: jax.Array, mask: jax.Array,
                    rngs: nnx.Rngs | None = None) -> jax.Array:
    """Unclamped arguments [B, 6] from the composite and mask at input_size."""
    size = (self.input_size, self.input_size)
    composite, mask = layers.resize_bilinear(composite, size), layers.resize_bilinear(mask, size)
    features = self.backbone(composite, mask, rngs=rngs)
    extra = color_statistics(composite, mask) if self.color_statistics else None
    return self.regressor(features, extra)

  def __call__(self, composite: jax.Array, mask: jax.Array,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Filter arguments [B, 6] in [-1, 1], in `filters.FILTER_NAMES` order."""
    return jnp.clip(self.raw_arguments(composite, mask, rngs), -1.0, 1.0)


# --- Family contract ---------------------------------------------------------

def create_networks(config: ml_collections.ConfigDict, rngs: nnx.Rngs
                    ) -> dict[str, nnx.Module]:
  """{'harmonizer': Harmonizer} from config.model (random init; no file I/O)."""
  m = config.model
  return {"harmonizer": Harmonizer(input_size=m.input_size, width=m.width, depth=m.depth,
                                   drop_connect_rate=m.drop_connect_rate,
                                   color_statistics=m.get("color_statistics", False),
                                   identity_init=m.get("identity_init", False), rngs=rngs)}


def load_pretrained(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                    paths: dict[str, str]) -> None:
  """config.init = {'harmonizer': path}: an ImageNet EfficientNet-B0 state dict
  (lukemelas, torchvision or timm keys) into the backbone, as the paper starts."""
  del config
  for name, path in paths.items():
    if name != "harmonizer":
      raise ValueError(f"harmonizer: config.init names network {name!r}; only "
                       "'harmonizer' (an ImageNet EfficientNet-B0 state dict) can be initialised")
    efficientnet.load_imagenet(networks[name].backbone, torch_import.load_state_dict(path))


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam, lr x optim.decay_factor at each of optim.decay_epochs."""
  return {"harmonizer": optimizers.step_decay_adam(config.optim, steps_per_epoch)}


def predict(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
            inputs: dict[str, jax.Array]) -> jax.Array:
  """Harmonized [B,H,W,3] for any H, W: arguments at input_size, filters at full
  size, each filter blended by the mask (the official output: its background is
  the composite's)."""
  del config
  composite, mask = layers.to_float(inputs["composite"]), layers.to_float(inputs["mask"])
  args = networks["harmonizer"](composite, mask)
  final, _ = filters.apply_filters(composite, mask, args)
  return layers.blend_background(final, composite, mask)


def filter_loss(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
  """Per-image official loss [B]: masked sum of sqrt(d^2 + 1e-6) + 10 d^2,
  over channels too, divided by the mask area (not times 3, as the code)."""
  d2 = jnp.square(pred - target)
  per_pixel = jnp.sqrt(d2 + 1e-6) + 10.0 * d2
  area = jnp.sum(mask, axis=(1, 2, 3)) + 1e-6
  return jnp.sum(per_pixel * mask, axis=(1, 2, 3)) / area


def dynamic_weighted(stage_losses: jax.Array) -> jax.Array:
  """Official dynamic loss weighting; stage_losses [S, B] -> per-stage terms [S, B].

  With L_0..L_{S-1} the losses after each filter: S_b = L_0 + sum relu(L_i -
  L_{i-1}) (detached); term_0 = L_0 / S_b, term_i = relu(L_i - sg(L_{i-1})) / S_b.
  """
  fixed = jax.lax.stop_gradient(stage_losses)
  increases = jax.nn.relu(fixed[1:] - fixed[:-1])
  total = fixed[0] + jnp.sum(increases, axis=0) + 1e-9
  rest = jax.nn.relu((stage_losses[1:] - fixed[:-1]) / total)
  return jnp.concatenate([stage_losses[:1] / total, rest], axis=0)


def synthesize(real: jax.Array, mask: jax.Array, args: jax.Array
               ) -> tuple[jax.Array, list[jax.Array]]:
  """Synthetic composite and per-stage targets from a real image.

  As the official `adjust_image`: filters in reverse order (shadow first) with
  args [B, 6] (in FILTER_NAMES order, already scaled), each acting on the
  previous unblended output. Returns (composite, targets) where targets[i] is
  what the i-th filter of the forward cascade should produce; the last is `real`.
  """
  current, adjusted = real, []
  for i in reversed(range(NUM_FILTERS)):
    current = filters.FILTERS[filters.FILTER_NAMES[i]](current, args[:, None, None, i:i + 1])
    adjusted.append(filters.blend(current, mask, real))
  return adjusted[-1], adjusted[-2::-1] + [real]


def color_jitter(image: jax.Array, key: jax.Array, strength: dict[str, float]) -> jax.Array:
  """torchvision ColorJitter(brightness, contrast, saturation, hue) per image, in a
  fixed order (torchvision shuffles the order). Official: 0.1, 0.1, 0.1, 0.03."""
  b = image.shape[0]
  kb, kc, ks, kh = jax.random.split(key, 4)
  factor = lambda k, s: jax.random.uniform(k, (b, 1, 1, 1), minval=1 - s, maxval=1 + s)
  gray = lambda x: jnp.sum(x * jnp.asarray([0.299, 0.587, 0.114]), -1, keepdims=True)
  x = jnp.clip(image * factor(kb, strength["brightness"]), 0, 1)
  f = factor(kc, strength["contrast"])
  x = jnp.clip(f * x + (1 - f) * jnp.mean(gray(x), axis=(1, 2, 3), keepdims=True), 0, 1)
  f = factor(ks, strength["saturation"])
  x = jnp.clip(f * x + (1 - f) * gray(x), 0, 1)
  shift = jax.random.uniform(kh, (b, 1, 1), minval=-strength["hue"],
                             maxval=strength["hue"])
  hsv = pix.rgb_to_hsv(x)
  hsv = hsv.at[..., 0].set(jnp.mod(hsv[..., 0] + shift, 1.0))
  return jnp.clip(pix.hsv_to_rgb(hsv), 0, 1)


def training_rows(cl: ml_collections.ConfigDict, composite: jax.Array, mask: jax.Array,
                  real: jax.Array, keys: tuple[jax.Array, jax.Array], rng: jax.Array
                  ) -> tuple[jax.Array, list[jax.Array], jax.Array]:
  """A batch's network inputs, per-stage targets and synthetic-row flags [B].

  The first rows are synthetic pairs: `real`, color-jittered, with random
  filter arguments on its foreground (keys: jitter, arguments); the targets
  are the cascade's stages. The last `real_fraction` rows are the dataset's
  composites (target: `real`); with `transfer_fraction` > 0, that share of them
  is recolored in the step instead (`recolor.transfer_composites`). With
  `identity_fraction` > 0, that share of all rows keeps its real foreground
  (input = every target): a foreground that fits needs no correction.
  """
  k_jitter, k_args = keys
  b = composite.shape[0]
  num_real = int(round(b * cl.real_fraction))
  synthetic = (jnp.arange(b) < b - num_real)  # [B]: rows made from `real`.
  row = synthetic[:, None, None, None]

  jittered = jnp.where(row, color_jitter(real, k_jitter, dict(cl.color_jitter)), real)
  args = jax.random.uniform(k_args, (b, NUM_FILTERS), minval=-1.0, maxval=1.0)
  made, targets = synthesize(jittered, mask, args * jnp.asarray(tuple(cl.argument_ranges)))
  composite, same = recolor.training_composites(cl, composite, real, mask, rng)
  if same is not None:
    made = jnp.where(same, jittered, made)
    targets = [jnp.where(same, jittered, t) for t in targets]
  inputs = jnp.where(row, made, composite)
  targets = [jnp.where(row, t, real) for t in targets[:-1]] + [jittered]
  return inputs, targets, synthetic


def random_rot90(images: list[jax.Array], key: jax.Array) -> list[jax.Array]:
  """Official rotation: with p 0.5 rotate by k*90 degrees, k uniform in 1..3,
  the same k for every array of one example. Square images only (else as is)."""
  b, h, w = images[0].shape[:3]
  if h != w:
    return images
  kr, kk = jax.random.split(key)
  k = jnp.where(jax.random.bernoulli(kr, 0.5, (b,)),
                jax.random.randint(kk, (b,), 1, 4), 0)
  out = []
  for x in images:
    rotated = jnp.stack([jnp.rot90(x, r, axes=(1, 2)) for r in range(4)])
    out.append(jnp.take_along_axis(rotated, k[None, :, None, None, None], axis=0)[0])
  return out


def compute_losses(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                   batch: dict[str, jax.Array], rng: jax.Array
                   ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
  """Harmonizer's training loss (see the module docstring), config.loss:
  real_fraction (last rows: dataset composites), real_weight (10), argument_ranges,
  color_jitter, and optionally transfer_fraction, identity_fraction (training_rows)
  and contrast_straight_through (a gradient for positive contrast arguments,
  which the official filter's floor() leaves without one; values unchanged)."""
  cl = config.loss
  net = networks["harmonizer"]
  batch = layers.floats(batch)
  k_rot, k_jitter, k_args, k_drop = jax.random.split(rng, 4)
  composite, mask, real = random_rot90(
      [batch["composite"], batch["mask"], batch["real"]], k_rot)
  inputs, targets, synthetic = training_rows(cl, composite, mask, real,
                                             (k_jitter, k_args), rng)
  num_real = int(round(composite.shape[0] * cl.real_fraction))

  pred_args = net(inputs, mask, rngs=variables.rngs(dropout=k_drop))
  _, outputs = filters.apply_filters(
      inputs, mask, pred_args,
      contrast_straight_through=cl.get("contrast_straight_through", False))
  stage = jnp.stack([filter_loss(o, t, mask) for o, t in zip(outputs, targets)])

  n_syn = jnp.maximum(jnp.sum(synthetic), 1)
  terms = jnp.sum(dynamic_weighted(stage) * synthetic, axis=1) / n_syn  # [S]
  real_loss = jnp.sum(stage[-1] * ~synthetic) / max(num_real, 1)
  loss = jnp.sum(terms) + cl.real_weight * real_loss
  metrics = {f"filter_{i}_{name}": terms[i] for i, name in enumerate(filters.FILTER_NAMES)}
  metrics.update(real_loss=real_loss, loss=loss,
                 mean_abs_argument=jnp.mean(jnp.abs(pred_args)))
  return {"harmonizer": loss}, metrics, {"harmonized": outputs[-1]}


def convert_torch(state_dicts: dict[str, dict[str, np.ndarray]],
                  config: ml_collections.ConfigDict) -> dict[str, nnx.State]:
  """The official harmonizer.pth ({'default' or 'harmonizer': state dict})
  -> {'harmonizer': state}."""
  return torch_import.convert_single(state_dicts, config, create_networks, "harmonizer")
