"""CDTNet and CDTNet(sim) (Cong et al., CVPR 2022), NHWC, in Flax NNX.

Collaborative dual transformations for high-resolution harmonization:
- pixel-to-pixel ('base'): iS2AM (`harmonax.models.dih`) on a bilinear
  downsample (no antialias) of the normalized composite and mask to
  base_size x base_size;
- RGB-to-RGB ('lut'): n 3D LUTs (the first identity, the rest zero) mixed
  per image by weights predicted from the base's deepest encoder feature, applied
  at full resolution to the [0, 1] composite (`harmonax.models.lut`), then
  pasted into the composite's background with the mask;
- refinement ('refine'): two 3x3 conv + BN + ELU (64) on [upsampled base
  output, LUT output, mask, upsampled 32-channel decoder features] (39
  channels, normalized space), then iS2AM's learned blending head.
CDTNet(sim) (config.model.sim) is the LUT branch alone: no 'refine' network.

Module names mirror the official code (bcmi/CDTNet-High-Resolution-Image-
Harmonization: iharm/model/base/cdt_net_model.py, modeling/lut.py, refine.py):
the official keys `encoder.*`/`decoder.*`, `lut.*` and `refine.*` are the
networks 'base', 'lut' and 'refine' (`convert_torch`).

The base is frozen and in eval mode unless config.model.finetune_base: it is
then simply left out of `make_optimizers` (the trainer keeps untrained networks
in eval mode). `load_pretrained` initialises it from an iS2AM checkpoint.
"""

import os

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from harmonax import checkpoint
from harmonax import losses
from harmonax import optimizers
from harmonax import torch_import
from harmonax import variables
from harmonax.models import dih
from harmonax.models import layers
from harmonax.models import lut as lut_ops

INPUTS = ("composite", "mask")
PRESERVES_BACKGROUND = True


class LUT3D(nnx.Module):
  """Generator3DLUT_identity / _zero: one [3, dim, dim, dim] table named LUT."""

  def __init__(self, dim: int, identity: bool):
    table = lut_ops.identity_lut(dim) if identity else np.zeros((3, dim, dim, dim), np.float32)
    self.LUT = nnx.Param(jnp.asarray(table))  # pylint: disable=invalid-name


class WeightPredictor(nnx.Module):
  """Weight_predictor_issam (fb=True): LUT weights from the deepest encoder feature.

  conv 1x1 -> foreground and background average pools of the feature times
  the (bilinearly resized) mask and its complement, each divided by the whole
  map area as nn.AdaptiveAvgPool2d does (not by the mask area) -> concat ->
  1x1 conv to n weights, no softmax.
  """

  def __init__(self, in_ch: int, hidden: int, n_luts: int, rngs: nnx.Rngs):
    # weights_init_normal_classifier: xavier_normal_ kernels; the fc bias is 1
    # (model's init). The conv bias keeps PyTorch's default uniform init there;
    # zeros here.
    init = dih._init(1.0)  # pylint: disable=protected-access
    self.conv = layers.conv(in_ch, hidden, 1, kernel_init=init, rngs=rngs)
    self.fc = layers.conv(2 * hidden, n_luts, 1, kernel_init=init, rngs=rngs)
    self.fc.bias.value = jnp.ones((n_luts,))

  def __call__(self, deepest: jax.Array, mask: jax.Array) -> jax.Array:
    """deepest [B, h, w, C], full-resolution mask [B, H, W, 1] -> weights [B, n]."""
    x = self.conv(deepest)
    m = layers.resize_bilinear(mask, x.shape[1:3])
    pooled = jnp.concatenate([jnp.mean(x * m, axis=(1, 2)),
                              jnp.mean(x * (1.0 - m), axis=(1, 2))], axis=-1)
    return self.fc(pooled[:, None, None, :])[:, 0, 0, :]


class LUTBranch(nnx.Module):
  """The official `LUT` module: tables LUT0..LUT{n-1} and the weight `classifier`."""

  def __init__(self, in_ch: int, hidden: int, n_luts: int, dim: int, rngs: nnx.Rngs):
    for i in range(n_luts):
      setattr(self, f"LUT{i}", LUT3D(dim, identity=i == 0))
    self.classifier = WeightPredictor(in_ch, hidden, n_luts, rngs)
    self.n_luts = n_luts

  def __call__(self, deepest: jax.Array, image: jax.Array, mask: jax.Array,
               chunk: int = lut_ops.DEFAULT_CHUNK) -> jax.Array:
    """sum_i w_i LUT_i(image), pasted into image's background: [B, H, W, 3].

    Interpolation is linear in the table, so the weighted sum of the n
    outputs equals one interpolation through the weighted sum of the tables:
    one pass over the pixels instead of n.
    """
    weights = self.classifier(deepest, mask)
    tables = jnp.stack([getattr(self, f"LUT{i}").LUT[...] for i in range(self.n_luts)])
    per_image = jnp.einsum("bn,ncxyz->bcxyz", weights, tables)
    out = lut_ops.apply_lut(per_image, image, chunk)
    return out * mask + image * (1.0 - mask)


class Refine(dih._Fusion):  # pylint: disable=protected-access
  """The official Refine: block = [conv3x3, BN, ELU, conv3x3, BN, ELU], then
  sigmoid(3 * conv_attention) blending of the normalized composite with to_rgb."""

  def __init__(self, in_ch: int, ch: int, init: float, rngs: nnx.Rngs):
    kw = dict(padding=1, kernel_init=dih._init(init), rngs=rngs)  # pylint: disable=protected-access
    self.block = nnx.List([
        layers.conv(in_ch, ch, 3, **kw), layers.batch_norm(ch, rngs=rngs), dih.Activation("elu"),
        layers.conv(ch, ch, 3, **kw), layers.batch_norm(ch, rngs=rngs), dih.Activation("elu")])
    self._init_head(ch, True, init, rngs)

  def __call__(self, x: jax.Array, image: jax.Array) -> jax.Array:
    """x: the 39-channel input [B, H, W, C]; image: the normalized composite."""
    for step in self.block:
      x = step(x)
    return self._head(x, image)

  def strips(self, low: jax.Array, full: jax.Array, rows: int) -> jax.Array:
    """The same output computed `rows` image rows at a time (eval-mode BN).

    low [B, h, w, 3 + F]: the base output and decoder features at low
    resolution; full [B, H, W, 7]: normalized composite, normalized LUT output,
    mask. Each strip upsamples only its own rows (+ 2 halo rows for the two 3x3
    convs), so no [H, W, 64] activation of the whole image ever exists.
    """
    b, h_full, w_full, _ = full.shape
    # Horizontal upsampling once (h rows only); vertical per strip below.
    low = layers.resize_bilinear(low, (low.shape[1], w_full))
    i0, i1, frac = layers.bilinear_taps(low.shape[1], h_full)
    if not isinstance(h_full, int):  # A symbolic size (a dynamic export): a loop.
      last = jnp.asarray(h_full, jnp.int32) - 1

      def rows_at(idx):
        # The strip's rows and 2 more on each side (the last strip's idx is
        # clamped; its rows past the end are cropped away).
        r = idx[0] - 2 + jax.lax.broadcasted_iota(jnp.int32, (idx.shape[0] + 4,), 0)
        ok = ((r >= 0) & (r <= last)).astype(jnp.float32)
        r = jnp.clip(r, 0, last)
        return self._strip(low, jnp.stack([jnp.take(i0, r), jnp.take(i1, r)]),
                           jnp.stack([jnp.take(frac, r), ok]),
                           lambda: jnp.take(full, r, axis=1),
                           lambda: jnp.take(full, idx, axis=1)[..., :3])

      return layers.row_chunks(rows_at, (b, h_full, w_full, 3), full.dtype,
                               layers.ceil_div(layers.REFERENCE_ROWS, rows))
    n = -(-h_full // rows)
    pad_rows = ((2, n * rows - h_full + 2),)
    i0, i1, frac = (np.pad(a, pad_rows, mode="edge") for a in (i0, i1, frac))
    valid = np.pad(np.ones(h_full, np.float32), pad_rows)
    full = jnp.pad(full, ((0, 0),) + pad_rows + ((0, 0), (0, 0)))
    taps = jnp.asarray(np.stack([i0, i1]).astype(np.int32))
    weights = jnp.asarray(np.stack([frac, valid]).astype(np.float32))

    def strip(start):
      t = jax.lax.dynamic_slice_in_dim(taps, start, rows + 4, axis=1)
      wv = jax.lax.dynamic_slice_in_dim(weights, start, rows + 4, axis=1)
      return self._strip(
          low, t, wv, lambda: jax.lax.dynamic_slice_in_dim(full, start, rows + 4, axis=1),
          lambda: jax.lax.dynamic_slice_in_dim(full, start + 2, rows, axis=1)[..., :3])

    out = layers.map(strip, jnp.arange(n) * rows)  # [n, B, rows, W, 3]
    return out.transpose(1, 0, 2, 3, 4).reshape(b, n * rows, w_full, 3)[:, :h_full]

  def _strip(self, low, taps, weights, strip_rows, image):
    """One strip's output [B, rows, W, 3] from its rows + 4 halo rows: taps
    [2, rows + 4] (i0, i1) and weights (frac; ok, 0 for a row outside the image)
    of `low`'s upsampling, strip_rows() -> those rows of `full`, image() -> the
    strip's rows of the normalized composite. The slices are taken where they
    are used: an unrolled ONNX file runs its nodes in the order they were traced,
    and at 4K CDTNet's fixed-size file peaked at 5.9 GB instead of 4.4 with them
    taken first."""
    f, ok = weights[0][None, :, None, None], weights[1][None, :, None, None]
    up = jnp.take(low, taps[0], axis=1) * (1 - f) + jnp.take(low, taps[1], axis=1) * f
    full = strip_rows()
    x = jnp.concatenate([up[..., :3], full[..., 3:7], up[..., 3:]], axis=-1) * ok
    x = self.block[2](self.block[1](self.block[0](x)))
    # Rows outside the image are the second conv's zero padding.
    x = self.block[5](self.block[4](self.block[3](x * ok)))
    rows = full.shape[1] - 4
    if isinstance(rows, int):
      x = x[:, 2:rows + 2]
    else:  # A symbolic length: a gather (jax2onnx takes no slice of symbolic bounds).
      x = jnp.take(x, jax.lax.broadcasted_iota(jnp.int32, (rows,), 0) + 2, axis=1)
    return self._head(x, image())


def create_networks(config: ml_collections.ConfigDict, rngs: nnx.Rngs
                    ) -> dict[str, nnx.Module]:
  """{'base': iS2AM, 'lut': LUTBranch, 'refine': Refine (not in sim)} from config.model.

  identity_init (optional, not in the paper): the refinement's blending map
  starts at the composite (`dih.start_near_input`).
  """
  m = config.model
  base_config = ml_collections.ConfigDict({"model": dict(m.base.to_dict(), variant="issam")})
  base = dih.create_networks(base_config, rngs)["generator"]
  nets = {"base": base,
          "lut": LUTBranch(base.encoder.channels[-1], m.lut_hidden, m.n_luts, m.lut_dim, rngs)}
  if not m.sim:
    nets["refine"] = Refine(7 + m.base.ch, m.refine_channels, m.refine_init_magnitude, rngs)
    if m.get("identity_init", False):  # Not in the paper: the dih family's option.
      dih.start_near_input(nets["refine"])
  return nets


def trained_networks(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The networks the optimizer updates: the base only when fine-tuning it."""
  names = ("lut",) if config.model.sim else ("lut", "refine")
  return (("base",) if config.model.finetune_base else ()) + names


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam, lr x optim.decay_factor at each of optim.decay_epochs, per trained network
  (the official single Adam over the same parameters: Adam is per parameter)."""
  return {name: optimizers.step_decay_adam(config.optim, steps_per_epoch)
          for name in trained_networks(config)}


def forward(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
            composite: jax.Array, mask: jax.Array, refine_rows: int = 0
            ) -> dict[str, jax.Array]:
  """The official forward: {'images' (full res), 'lut_images' (full res),
  'base_images' (base_size)}, all in [0, 1] space, unclipped.

  The refinement runs at the input's own resolution (the official code resizes
  to its configured hr x hr, which is the input's size in its evaluation).
  refine_rows > 0 computes it in strips of that many rows (same numbers, less memory).
  """
  m = config.model
  normed = layers.imagenet_normalize(composite)
  size = (m.base_size, m.base_size)
  low = layers.resize_bilinear(jnp.concatenate([normed, mask], axis=-1), size)
  base = networks["base"].features(low[..., :3], low[..., 3:])
  lut_images = networks["lut"](base["encoder"][0], composite, mask,
                               m.get("lut_chunk", lut_ops.DEFAULT_CHUNK))
  outputs = {"lut_images": lut_images,
             "base_images": layers.imagenet_denormalize(base["images"])}
  if m.sim:
    outputs["images"] = lut_images
    return outputs
  refine = networks["refine"]
  hw = composite.shape[1:3]
  full = jnp.concatenate([normed, layers.imagenet_normalize(lut_images), mask], axis=-1)
  if 0 < refine_rows and (not isinstance(hw[0], int) or refine_rows < hw[0]):
    out = refine.strips(jnp.concatenate([base["images"], base["decoder"]], axis=-1),
                        full, refine_rows)
  else:
    up = layers.resize_bilinear(jnp.concatenate([base["images"], base["decoder"]], axis=-1), hw)
    x = jnp.concatenate([up[..., :3], full[..., 3:], up[..., 3:]], axis=-1)
    out = refine(x, normed)
  outputs["images"] = layers.imagenet_denormalize(out)
  return outputs


def compute_losses(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                   batch: dict[str, jax.Array], rng: jax.Array
                   ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
  """The official sum of FN-MSEs in [0, 1] space: final and LUT outputs against
  the target at full resolution, the base output against the bilinearly
  downsampled target and mask, with config.loss weights and min_area. In sim
  the final output is the LUT output (counted twice, as officially)."""
  del rng  # Deterministic networks.
  batch = layers.floats(batch)
  composite, mask, real = batch["composite"], batch["mask"], batch["real"]
  out = forward(config, networks, composite, mask)
  c = config.loss
  size = (config.model.base_size,) * 2
  terms = {
      "fn_mse": losses.fn_mse(out["images"], real, mask, c.min_area),
      "fn_mse_lut": losses.fn_mse(out["lut_images"], real, mask, c.min_area),
      "fn_mse_base": losses.fn_mse(out["base_images"], layers.resize_bilinear(real, size),
                                   layers.resize_bilinear(mask, size), c.min_area),
  }
  total = (c.pixel_weight * terms["fn_mse"] + c.lut_weight * terms["fn_mse_lut"]
           + c.base_weight * terms["fn_mse_base"])
  # Every trained network minimises the same sum (one official optimizer).
  loss_dict = {name: total for name in trained_networks(config)}
  return loss_dict, {**terms, "total": total}, {"harmonized": jnp.clip(out["images"], 0.0, 1.0)}


def predict(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
            inputs: dict[str, jax.Array]) -> jax.Array:
  """The final image [B, H, W, 3] clipped to [0, 1] (the official predictor's
  clamp), for any H, W: the base sees a square base_size resize as officially."""
  composite, mask = layers.to_float(inputs["composite"]), layers.to_float(inputs["mask"])
  out = forward(config, networks, composite, mask, config.model.get("refine_rows", 0))
  return jnp.clip(out["images"], 0.0, 1.0)


# --- Official weights ----------------------------------------------------------

_PREFIXES = {"encoder.": "base", "decoder.": "base", "lut.": "lut", "refine.": "refine"}


def split_state_dict(state_dict: dict[str, np.ndarray], networks: tuple[str, ...]
                     ) -> dict[str, dict[str, np.ndarray]]:
  """Official CDTNet keys -> {network: keys of that network}; the refinement of a
  sim file (it carries an unused, trained one) is dropped when 'refine' is absent."""
  parts = {name: {} for name in networks}
  for key, value in state_dict.items():
    prefix = next((p for p in _PREFIXES if key.startswith(p)), None)
    if prefix is None:
      raise ValueError(f"Unexpected key {key!r} in a CDTNet state dict")
    name = _PREFIXES[prefix]
    if name == "base":
      parts[name][key] = value
    elif name in parts:
      parts[name][key[len(prefix):]] = value
  return parts


def convert_torch(state_dicts: dict[str, dict[str, np.ndarray]],
                  config: ml_collections.ConfigDict) -> dict[str, nnx.State]:
  """iHarmony4_256.pth, HAdobe5k_2048.pth or CDTNet_sim_base256.pth (role
  'default') -> {'base', 'lut'[, 'refine']} states."""
  if len(state_dicts) != 1:
    raise ValueError(f"cdtnet takes one checkpoint; got roles {sorted(state_dicts)}")
  (state_dict,) = state_dicts.values()
  nets = nnx.eval_shape(lambda: create_networks(config, variables.rngs(0)))
  parts = split_state_dict(state_dict, tuple(nets))
  for name, net in nets.items():
    torch_import.load_into(net, parts[name], context=f"cdtnet {name}")
  return {name: nnx.state(net) for name, net in nets.items()}


def load_pretrained(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                    paths: dict[str, str]) -> None:
  """config.init = {'base': path}: an official iS2AM file (issam256.pth, .npz)
  or a harmonax iS2AM checkpoint (training workdir or save_networks directory)."""
  del config
  for name, path in paths.items():
    if name != "base":
      raise ValueError(f"cdtnet: config.init names {name!r}; only 'base' (iS2AM) is loadable")
    if os.path.isdir(path):
      loaded_config, loaded = checkpoint.load_networks(path)
      if loaded_config.model.name != "dih" or loaded_config.model.variant != "issam":
        raise ValueError(f"{path} is a {loaded_config.model.name} checkpoint, not iS2AM")
      nnx.update(networks["base"], nnx.state(loaded["generator"]))
    else:
      torch_import.load_into(networks["base"], torch_import.load_state_dict(path),
                             context=path)
