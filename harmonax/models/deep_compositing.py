"""Deep Image Compositing (Zhang et al., WACV 2021): segmentation, mask refinement
and multi-stream fusion, plus the classical blends as parameter-free variants.

No code or weights were published. What the paper's abstract, figure caption
and patent claims state is followed: a foreground segmentation network, a mask
refinement network, and a multi-stream fusion network with a foreground encoder
on (foreground + mask), a background encoder on (background + mask), and one
decoder that fuses both streams' multi-scale features level by level with dense
connections, inspired by Laplacian pyramid blending. Everything else (widths,
depth, how the pyramid idea is realised, losses and weights) is an assumption
behind a `config.model.assumption_*` / `config.loss` field, listed in the README.

Assumed realisation of the Laplacian-pyramid idea: the decoder emits one RGB
band per scale, collapsed coarse-to-fine (up(x) + band) as a Laplacian pyramid
is, on top of the alpha blend of the inputs with the mask; the bands' heads start
at zero, so an untrained fusion network is alpha blending.

`config.model.variant`: 'network' (the three networks) or one of
`harmonax.blending.BLENDS` ('alpha', 'feathered', 'laplacian'), which have no
networks and are scored through the same `predict` by `harmonax.evaluate`.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import optax

from harmonax import blending
from harmonax import checkpoint
from harmonax import losses
from harmonax import optimizers
from harmonax.models import layers
from harmonax.models import vgg

INPUTS = ("foreground", "background", "mask")
PRESERVES_BACKGROUND = False  # The composite's pixels all come from the model.
VARIANTS = ("network", *blending.BLENDS)
NETWORKS = ("segmentation", "refinement", "fusion")
PERCEPTUAL_TAPS = ("relu1_2", "relu2_2", "relu3_3")


def _conv_relu(cin: int, cout: int, rngs: nnx.Rngs, stride: int = 1) -> nnx.Conv:
  return layers.conv(cin, cout, 3, stride=stride, padding=1, rngs=rngs)


def _run(convs: nnx.List, x: jax.Array) -> jax.Array:
  for c in convs:
    x = nnx.relu(c(x))
  return x


class Encoder(nnx.Module):
  """Level 0 at full size, then each level halves (stride-2 conv, ceil(n / 2)):
  two 3x3 conv + ReLU per level. Returns features finest first."""

  def __init__(self, in_ch: int, channels: tuple[int, ...], rngs: nnx.Rngs):
    levels, prev = [], in_ch
    for i, c in enumerate(channels):
      levels.append(nnx.List([_conv_relu(prev, c, rngs, stride=1 if i == 0 else 2),
                              _conv_relu(c, c, rngs)]))
      prev = c
    self.levels = nnx.List(levels)

  def __call__(self, x: jax.Array) -> list[jax.Array]:
    features = []
    for level in self.levels:
      x = _run(level, x)
      features.append(x)
    return features


class MaskUNet(nnx.Module):
  """Encoder-decoder with skips predicting one mask logit per pixel (any H, W).

  Serves as the segmentation network (input: the foreground photo) and the
  refinement network (input: photo + coarse mask): an assumed architecture.
  """

  def __init__(self, in_ch: int, channels: tuple[int, ...], rngs: nnx.Rngs):
    self.encoder = Encoder(in_ch, channels, rngs)
    self.up = nnx.List([nnx.List([_conv_relu(channels[i + 1] + channels[i], channels[i], rngs),
                                  _conv_relu(channels[i], channels[i], rngs)])
                        for i in range(len(channels) - 1)])
    self.head = layers.conv(channels[0], 1, 3, padding=1, rngs=rngs)

  def __call__(self, x: jax.Array) -> jax.Array:
    features = self.encoder(x)
    d = features[-1]
    for i in reversed(range(len(features) - 1)):
      d = layers.resize_bilinear(d, features[i].shape[1:3])
      d = _run(self.up[i], jnp.concatenate([features[i], d], axis=-1))
    return self.head(d)


class FusionNet(nnx.Module):
  """The multi-stream fusion network.

  A foreground encoder on (foreground, mask) and a background encoder on
  (background, mask); one decoder that, coarse to fine, fuses both streams'
  features of the level with the upsampled outputs of every coarser decoder
  level (dense connections; only the next coarser one when dense=False) and
  emits an RGB band per level. The output is the alpha blend plus the bands
  collapsed as a Laplacian pyramid. With alpha_head, the finest level also
  predicts a correction of the mask (zero-initialised): the blend then uses
  alpha = clip(mask + correction, 0, 1), a soft matte from a binary mask.
  """

  def __init__(self, channels: tuple[int, ...], dense: bool, rngs: nnx.Rngs,
               zero_heads: bool = False, alpha_head: bool = False):
    self.fg_encoder = Encoder(4, channels, rngs)
    self.bg_encoder = Encoder(4, channels, rngs)
    self.dense = dense
    decoder, heads = [], []
    for i, c in enumerate(channels):
      coarser = channels[i + 1:] if dense else channels[i + 1:i + 2]
      decoder.append(nnx.List([_conv_relu(2 * c + sum(coarser), c, rngs),
                               _conv_relu(c, c, rngs)]))
      # zero_heads: the untrained network is exactly alpha blending, but then
      # the decoder gets no gradient until the heads move (slow to start).
      init = nnx.initializers.zeros_init() if zero_heads else nnx.initializers.lecun_normal()
      heads.append(layers.conv(c, 3, 3, padding=1, rngs=rngs, kernel_init=init))
    self.decoder = nnx.List(decoder)
    self.heads = nnx.List(heads)
    # Why: a soft edge is (alpha - mask) * (fg - bg), a product that the RGB
    # bands must learn to form, while d out / d alpha is fg - bg directly (the
    # bands alone stayed alpha blending in a 400-step run). The head also sees
    # the mask itself: a 3x3 filter of it is a feather, linear in the head's
    # weights (on the decoder's features alone it barely moved in 400 steps).
    # Zero init: the untrained correction is none; its kernel still gets
    # gradient at step 1.
    self.alpha_head = (layers.conv(channels[0] + 1, 1, 3, padding=1, rngs=rngs,
                                   kernel_init=nnx.initializers.zeros_init())
                       if alpha_head else None)

  def __call__(self, foreground: jax.Array, background: jax.Array,
               mask: jax.Array) -> jax.Array:
    fg = self.fg_encoder(jnp.concatenate([foreground, mask], axis=-1))
    bg = self.bg_encoder(jnp.concatenate([background, mask], axis=-1))
    outputs: list[jax.Array] = []  # Decoder outputs, coarsest first.
    bands = []
    for i in reversed(range(len(fg))):
      size = fg[i].shape[1:3]
      previous = outputs if self.dense else outputs[-1:]
      x = jnp.concatenate([fg[i], bg[i]] + [layers.resize_bilinear(o, size)
                                             for o in previous], axis=-1)
      outputs.append(_run(self.decoder[i], x))
      bands.append(self.heads[i](outputs[-1]))
    residual = bands[0]
    for band in bands[1:]:  # Pyramid collapse, coarse to fine.
      residual = band + layers.resize_bilinear(residual, band.shape[1:3])
    return blending.alpha_blend(foreground, background, self.alpha(mask, outputs[-1])) + residual

  def alpha(self, mask: jax.Array, finest: jax.Array) -> jax.Array:
    """The blend's alpha: the mask, or clip(mask + correction) with alpha_head."""
    if self.alpha_head is None:
      return mask
    correction = self.alpha_head(jnp.concatenate([finest, mask.astype(finest.dtype)], axis=-1))
    return jnp.clip(mask + correction, 0.0, 1.0)


def create_networks(config: ml_collections.ConfigDict, rngs: nnx.Rngs
                    ) -> dict[str, nnx.Module]:
  """'network': {'segmentation', 'refinement', 'fusion'} (+ a frozen 'vgg' when
  config.loss.perceptual > 0 and config.init.vgg names VGG16 weights); the
  blend variants: {} (no parameters)."""
  m = config.model
  if m.variant not in VARIANTS:
    raise ValueError(f"config.model.variant={m.variant!r}; valid: {VARIANTS}")
  if m.variant != "network":
    return {}
  nets = {
      "segmentation": MaskUNet(3, tuple(m.assumption_segmentation_channels), rngs),
      "refinement": MaskUNet(4, tuple(m.assumption_refinement_channels), rngs),
      "fusion": FusionNet(tuple(m.assumption_fusion_channels), m.assumption_dense, rngs,
                          zero_heads=m.get("assumption_zero_band_heads", False),
                          alpha_head=m.get("assumption_alpha_head", False)),
  }
  if vgg.term_on(config, "perceptual"):
    nets["vgg"] = vgg.VGG16Features(PERCEPTUAL_TAPS, rngs)
  return nets


def load_pretrained(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                    paths: dict[str, str]) -> None:
  """config.init.vgg: a torchvision VGG16 state dict (its `features.*` keys up
  to relu3_3 are used) for the perceptual loss; config.init.<network> for
  NETWORKS: a deep_compositing workdir or save_networks directory (the
  self-taught rounds start from the previous round's networks).

  Raises:
    ValueError: a checkpoint of another family or with other widths.
  """
  del config
  paths = {k: v for k, v in paths.items() if v}  # Empty: not initialised.
  ours = {k: v for k, v in paths.items() if k in NETWORKS}
  shapes = lambda net: jax.tree.map(jnp.shape, nnx.state(net).to_pure_dict())
  for path in sorted(set(ours.values())):
    loaded_config, loaded = checkpoint.load_networks(path)
    if loaded_config.model.name != "deep_compositing" or not loaded:
      raise ValueError(f"config.init: {path} holds a {loaded_config.model.name} "
                       f"{loaded_config.model.get('variant', '')!r} model, not a "
                       "deep_compositing network")
    for name in (k for k, v in ours.items() if v == path):
      if shapes(loaded[name]) != shapes(networks[name]):
        raise ValueError(f"config.init.{name}: {path}'s {name} network has other layers "
                         "or widths than this config's")
      nnx.update(networks[name], nnx.state(loaded[name]))
  vgg.load_pretrained("deep_compositing", "perceptual", networks,
                      {k: v for k, v in paths.items() if k not in NETWORKS})


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam per network of config.model.trained (the others are frozen).

  Raises:
    ValueError: for the parameter-free blend variants (nothing to train).
  """
  if config.model.variant != "network":
    raise ValueError(
        f"deep_compositing variant {config.model.variant!r} has no networks to train; "
        "score it with harmonax.compositing.save_baseline(dir, config) and "
        "python -m harmonax.evaluate --checkpoint=dir")
  vgg.log_term_state("deep_compositing", config, "perceptual")
  trained = tuple(config.model.trained)
  if unknown := set(trained) - set(NETWORKS):
    raise ValueError(f"config.model.trained names {sorted(unknown)}; valid: {NETWORKS}")
  return {k: optimizers.step_decay_adam(config.optim, steps_per_epoch) for k in trained}


def mask_logits(networks: dict[str, nnx.Module], foreground: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """(segmentation logits, refined logits) [B,H,W,1] from the foreground photo."""
  coarse = networks["segmentation"](foreground)
  refined = coarse + networks["refinement"](
      jnp.concatenate([foreground, jax.nn.sigmoid(coarse)], axis=-1))
  return coarse, refined


def compose_with_mask(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                      foreground: jax.Array, background: jax.Array,
                      mask: jax.Array) -> jax.Array:
  """The variant's composite [B,H,W,3] in [0, 1] for a given mask in [0, 1]."""
  m = config.model
  if m.variant == "network":
    out = networks["fusion"](foreground, background, mask)
  else:
    out = blending.blend(m.variant, foreground, background, mask,
                         feather_sigma=m.feather_sigma, levels=m.pyramid_levels)
  return jnp.clip(out, 0.0, 1.0)


def _bce(logits: jax.Array, target: jax.Array) -> jax.Array:
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, target))


def perceptual(vgg: nnx.Module, pred: jax.Array, target: jax.Array) -> jax.Array:
  """Sum over relu1_2, relu2_2, relu3_3 of the mean L1 feature distance."""
  return sum(losses.l1(a, jax.lax.stop_gradient(b)) for a, b in zip(vgg(pred), vgg(target)))


def compute_losses(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                   batch: dict[str, jax.Array], rng: jax.Array):
  """segmentation, refinement: config.loss.mask x BCE against the batch mask;
  fusion: config.loss.l1 x L1 + config.loss.perceptual x VGG perceptual loss of
  the composite against `real`. The fusion network sees the batch mask
  (model.assumption_train_mask 'given', the easy setting) or the refined
  prediction ('refined'; the composite loss then also trains the refinement).
  """
  del rng  # Deterministic networks.
  batch = layers.floats(batch)
  fg, bg, mask, real = batch["foreground"], batch["background"], batch["mask"], batch["real"]
  coarse, refined = mask_logits(networks, fg)
  target_mask = (mask >= 0.5).astype(jnp.float32)
  seg_loss, ref_loss = _bce(coarse, target_mask), _bce(refined, target_mask)
  given = target_mask if config.model.get("assumption_binarize_train_mask", False) else mask
  used = given if config.model.assumption_train_mask == "given" else jax.nn.sigmoid(refined)
  out = networks["fusion"](fg, bg, used)
  l1 = losses.l1(out, real)
  composite_loss = config.loss.l1 * l1
  metrics = {"l1": l1, "mask_bce/segmentation": seg_loss, "mask_bce/refinement": ref_loss}
  if "vgg" in networks:
    p = perceptual(networks["vgg"], out, real)
    composite_loss = composite_loss + config.loss.perceptual * p
    metrics["perceptual"] = p
  ref_total = config.loss.mask * ref_loss
  if config.model.assumption_train_mask != "given":
    ref_total = ref_total + composite_loss
  loss = {"segmentation": config.loss.mask * seg_loss, "refinement": ref_total,
          "fusion": composite_loss}
  return loss, metrics, {"harmonized": jnp.clip(out, 0.0, 1.0)}


def predict(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
            inputs: dict[str, jax.Array]) -> jax.Array:
  """The composite [B,H,W,3] in [0, 1] for any H, W.

  Uses inputs['mask'] where given; where it is absent, or an image's mask is
  all negative (float -1: 'no mask'), the refined prediction of the
  segmentation networks (variant 'network' only).
  """
  fg = layers.to_float(inputs["foreground"])
  bg = layers.to_float(inputs["background"])
  mask = inputs.get("mask")

  def predicted():
    if "refinement" not in networks:
      raise ValueError(f"variant {config.model.variant!r} has no segmentation network: "
                       "give a mask")
    return jax.nn.sigmoid(mask_logits(networks, fg)[1])

  if mask is None:
    mask = predicted()
  else:
    mask = layers.to_float(mask)
    missing = jnp.all(mask < 0, axis=(1, 2, 3), keepdims=True)
    if "refinement" in networks:
      mask = jax.lax.cond(jnp.any(missing), lambda: jnp.where(missing, predicted(), mask),
                          lambda: mask)
    else:
      mask = jnp.clip(mask, 0.0, 1.0)
  return compose_with_mask(config, networks, fg, bg, mask)
