"""BargainNet (Cong et al., ICME 2021): background-guided domain translation.

Networks: 'encoder', the domain code extractor E (partial convolutions over a
masked region -> a 16-d code), and 'generator', DoveNet's attention U-Net with
20 input channels: composite, mask and E(background) tiled over the image and
scaled by a learned scalar (init 0.1). Both use batch norm, as the official code.

Loss (one, trained into both networks, as the official single backward pass):
  L1(G(...), real) + 0.01 * [triplet(z_real_fg, z_harm_fg, z_comp_fg)
                            + triplet(z_harm_fg, z_bg, z_comp_fg)],  margin 0.1,
with z_bg = E(real, 1 - mask) during training (the official code encodes the
background of the real image; it equals the composite's background).

The harmony score of libcom / the official `predict_harmony_score.py` is
exp(-0.04212 * ||E(image, fg) - E(image, bg)||) at 256x256.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from harmonax import variables
from harmonax.models import attention_unet
from harmonax.models import dovenet
from harmonax.models import layers
from harmonax.models import partial_conv

INPUTS = ("composite", "mask")
PRESERVES_BACKGROUND = True
TORCH_NAMES = {"generator": "G", "encoder": "E"}
HARMONY_SCALE = 0.04212  # predict_harmony_score.py: exp(-0.04212 * distance).
HARMONY_SIZE = 256


class DomainEncoder(nnx.Module):
  """The official `StyleEncoder`: 5 partial convs 3x3 stride 2 (no padding),
  batch norm after conv2f..conv4f, ReLU after conv1f..conv4f, global average
  pooling, 1x1 conv to `code_dim`."""

  def __init__(self, ndf: int = 64, code_dim: int = 16, *, rngs: nnx.Rngs):
    widths = [ndf, ndf * 2, ndf * 4, ndf * 8, ndf * 8]
    prev = 3
    for i, width in enumerate(widths, start=1):
      setattr(self, f"conv{i}f", partial_conv.PartialConv2d(
          prev, width, 3, stride=2, padding=0, use_bias=i == 1, rngs=rngs))
      if 2 <= i <= 4:
        setattr(self, f"norm{i}f", attention_unet.make_norm("batch", width, rngs))
      prev = width
    self.convs = nnx.Conv(prev, code_dim, (1, 1), kernel_init=attention_unet.KERNEL_INIT,
                          rngs=rngs)

  def __call__(self, image: jax.Array, mask: jax.Array) -> jax.Array:
    """image [B, H, W, 3] in [-1, 1] (H, W >= 63), region mask [B, H, W, 1] -> [B, code_dim]."""
    x = image
    for i in range(1, 6):
      x, mask = getattr(self, f"conv{i}f")(x, mask)
      if i < 5:
        if i >= 2:
          x = getattr(self, f"norm{i}f")(x)
        x = jax.nn.relu(x)
    # squeeze, not [:, 0, 0]: jax2onnx fails on that gather with a symbolic batch.
    return jnp.squeeze(self.convs(jnp.mean(x, axis=(1, 2), keepdims=True)), (1, 2))


def triplet_margin_loss(anchor: jax.Array, positive: jax.Array, negative: jax.Array,
                        margin: float = 0.1, eps: float = 1e-6) -> jax.Array:
  """torch.nn.TripletMarginLoss(margin, p=2): mean(relu(d(a, p) - d(a, n) + margin)),
  d(x, y) = ||x - y + eps||_2 over the LAST axis, mean over the others."""
  d_pos = jnp.linalg.norm(anchor - positive + eps, axis=-1)
  d_neg = jnp.linalg.norm(anchor - negative + eps, axis=-1)
  return jnp.mean(jax.nn.relu(d_pos - d_neg + margin))


def code_triplet_loss(anchor, positive, negative, margin: float = 0.1) -> jax.Array:
  """The triplet loss on [B, D] codes as the official code computes it.

  The official codes are [B, D, 1, 1] tensors and PyTorch's distance runs over
  the last axis (size 1), so each code dimension is its own triplet:
  mean_{b,d} relu(|a - p + eps| - |a - n + eps| + margin). Kept for fidelity.
  """
  return triplet_margin_loss(anchor[..., None], positive[..., None], negative[..., None],
                             margin)


def create_networks(config: ml_collections.ConfigDict, rngs: nnx.Rngs
                    ) -> dict[str, nnx.Module]:
  """{'generator': AttentionUNet (4 + code_dim inputs), 'encoder': DomainEncoder}."""
  m = config.model
  return {
      "generator": attention_unet.AttentionUNet(
          4 + m.code_dim, 3, num_downs=m.num_downs, ngf=m.ngf, norm=m.norm,
          use_dropout=m.use_dropout, code_features=m.code_dim,
          identity_init=m.get("identity_init", False), rngs=rngs),
      "encoder": DomainEncoder(m.ndf, m.code_dim, rngs=rngs),
  }


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam(1e-4, 0.9, 0.999) for G and E (two Adams = one Adam over both).

  The official recipe uses lr_policy 'step' with lr_decay_iters 6574200, a
  step length in epochs that 200 epochs never reach: the rate is constant.
  """
  o = config.optim
  steps_per_epoch = max(int(steps_per_epoch), 1)
  # StepLR: x0.1 every decay_epochs, written out only for the decays that fall
  # inside num_epochs (an int32 step count cannot hold 6574200 epochs' worth).
  decays = {int(round(k * o.decay_epochs * steps_per_epoch)): 0.1
            for k in range(1, int(config.num_epochs // o.decay_epochs) + 1)}
  schedule = optax.piecewise_constant_schedule(o.lr, decays)
  adam = optax.inject_hyperparams(optax.adam)  # the trainer logs the current rate
  return {name: adam(learning_rate=schedule, b1=o.b1, b2=o.b2)
          for name in ("generator", "encoder")}


def _generator_input(comp: jax.Array, mask: jax.Array, code: jax.Array) -> jax.Array:
  code_map = jnp.broadcast_to(code[:, None, None, :], comp.shape[:3] + code.shape[-1:])
  return jnp.concatenate([comp, mask, code_map], -1)


def compute_losses(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                   batch: dict[str, jax.Array], rng: jax.Array):
  """(losses {'generator', 'encoder'}: the same total, metrics, outputs).

  Weights in config.loss: triplet (0.01) and margin (0.1).
  """
  batch = layers.floats(batch)
  gen, enc = networks["generator"], networks["encoder"]
  comp, real = batch["composite"] * 2.0 - 1.0, batch["real"] * 2.0 - 1.0
  mask = batch["mask"]
  # Same call order as the official forward(), so batch-norm statistics match.
  z_bg = enc(real, 1.0 - mask)
  z_real = enc(real, mask)
  harm = gen(_generator_input(comp, mask, z_bg), variables.rngs(dropout=rng))
  z_harm = enc(harm, mask)
  z_comp = enc(comp, mask)
  l1 = jnp.mean(jnp.abs(harm - real))
  margin = config.loss.margin
  tri_fg = code_triplet_loss(z_real, z_harm, z_comp, margin)
  tri_bg = code_triplet_loss(z_harm, z_bg, z_comp, margin)
  loss = l1 + config.loss.triplet * (tri_fg + tri_bg)
  metrics = {"l1": l1, "triplet_fg": tri_fg, "triplet_bg": tri_bg,
             "code_weight": jnp.maximum(gen.weight[...][0], 0.001)}
  return {"generator": loss, "encoder": loss}, metrics, {"harmonized": dovenet.to_unit(harm),
                                                          "output": harm}


def predict(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
            inputs: dict[str, jax.Array]) -> jax.Array:
  """The generator's image [B, H, W, 3] in [0, 1] for any H, W (not background-
  pasted: the official test script scores this image).

  The generator input is reflect-padded to a multiple of 2**num_downs and
  cropped back; the background code is taken from the padded composite with
  the padding excluded from the region (so it also works below 63 pixels).
  """
  del config
  gen, enc = networks["generator"], networks["encoder"]
  composite, mask = layers.to_float(inputs["composite"]), layers.to_float(inputs["mask"])
  h, w = composite.shape[1:3]
  multiple = 2 ** gen.num_downs
  comp, crop = layers.pad_to_multiple(composite * 2.0 - 1.0, multiple, mode="reflect")
  padded_mask, _ = layers.pad_to_multiple(mask, multiple, mode="reflect")
  inside = _window(padded_mask.shape[1:3], crop, padded_mask.dtype)
  z_bg = enc(comp, (1.0 - padded_mask) * inside)
  out = layers.crop_to(gen(_generator_input(comp, padded_mask, z_bg)), crop)
  return dovenet.to_unit(out)


def _window(size, crop: tuple[slice, slice], dtype) -> jax.Array:
  """[1, H, W, 1]: 1 inside `crop`, 0 in the padding (comparisons of iotas, not a
  scatter: the ONNX graph jax2onnx writes for a scatter fails to load)."""
  rows, cols = (jax.lax.broadcasted_iota(jnp.int32, size, axis) for axis in (0, 1))
  inside = ((rows >= crop[0].start) & (rows < crop[0].stop)
            & (cols >= crop[1].start) & (cols < crop[1].stop))
  return inside.astype(dtype)[None, :, :, None]


def harmony_score(encoder: nnx.Module, image: jax.Array, mask: jax.Array,
                  size: int | None = HARMONY_SIZE) -> jax.Array:
  """Harmony score in (0, 1] per image: exp(-0.04212 * ||z_fg - z_bg||_2).

  image [B, H, W, 3] in [0, 1], mask [B, H, W, 1]; both are resized
  bilinearly to size x size first (None: as given), as libcom does.
  """
  if size is not None and image.shape[1:3] != (size, size):
    image = jax.image.resize(image, image.shape[:1] + (size, size, 3), "bilinear")
    mask = jax.image.resize(mask, mask.shape[:1] + (size, size, 1), "bilinear")
  x = image * 2.0 - 1.0
  dist = jnp.linalg.norm(encoder(x, mask) - encoder(x, 1.0 - mask), axis=-1)
  return jnp.exp(-HARMONY_SCALE * dist)


def convert_torch(state_dicts: dict[str, dict[str, np.ndarray]],
                  config: ml_collections.ConfigDict) -> dict[str, nnx.State]:
  """Official BargainNet state dicts ('G', 'E' or 'generator', 'encoder') -> states.

  `latest_net_E.pth` alone (the harmony-score release) is not enough: the
  generator is required, as for every family.

  Raises:
    torch_import.StateDictMismatchError: on missing, unexpected or mis-shaped keys.
    ValueError: if no generator state dict is given.
  """
  return dovenet.convert_networks(config, create_networks, state_dicts, TORCH_NAMES)


to_torch = dovenet.to_torch
