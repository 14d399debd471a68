"""PCT-Net (Guerreiro et al., CVPR 2023): per-pixel colour transforms at full
resolution, as the `pctnet` family (config.model.variant 'cnn' or 'vit').

The network sees a low-resolution view (config.model.low_res, 256) of the
composite and mask and predicts a 12-channel parameter map (pct_ops); the map
is upsampled bicubically (PyTorch's a = -0.75) to the input's resolution and
applied there, then blended:
- 'cnn' (PCTNet_CNN): the iS2AM U-Net of `dih` + a 1x1 `get_params` conv on
  its last decoder features. The transform maps the ImageNet-normalised input
  to [0, 1] RGB, is clamped to [0, 1], and blends with the upsampled attention
  map sigmoid(3 conv_attention(f)) (official use_attn=True), not the mask.
- 'vit' (PCTNet_ViT, pctnet_vit): inputs in [0, 1] (mean 0 / std 1), the clamped
  transform blends with the soft full-resolution mask.
The full-resolution output is the official `images_fullres`; at 256 input it
equals the low-resolution branch (`images`).
Losses: FN-MSE at full resolution, Sobel smoothness of the map, and (with
config.init.vgg, a torchvision VGG16 state dict) the official contrastive term
on the low-resolution branch (`pct_contrastive`).
"""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from harmonax import losses
from harmonax import optimizers
from harmonax import torch_import
from harmonax.models import dih
from harmonax.models import layers
from harmonax.models import pct_contrastive
from harmonax.models import pct_ops
from harmonax.models import pctnet_vit
from harmonax.models import vgg

INPUTS = ("composite", "mask")
PRESERVES_BACKGROUND = True
VARIANTS = ("cnn", "vit")


class PCTNetCNN(dih.SSAMImageHarmonization):
  """PCTNet(backbone_type='ssam'): the iS2AM U-Net (its to_rgb head is built and
  imported but unused, as in the official model) + get_params."""

  def __init__(self, *, init: float, rngs: nnx.Rngs, **kw):
    super().__init__(init=init, rngs=rngs, **kw)
    # XavierGluon(gaussian, magnitude) as the rest of the network.
    self.get_params = layers.conv(
        self.encoder.channels[0], pct_ops.NUM_PARAMS, 1,
        kernel_init=nnx.initializers.variance_scaling(init, "fan_avg", "normal"), rngs=rngs)

  def __call__(self, image: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """ImageNet-normalised image [B,h,w,3], mask [B,h,w,1] -> (parameter map
    [B,h,w,12], attention map [B,h,w,1])."""
    decoded = self.features(image, mask)["decoder"]
    attention = jax.nn.sigmoid(3.0 * self.decoder.conv_attention(decoded))
    return self.get_params(decoded), attention


def contrastive_on(config: ml_collections.ConfigDict) -> bool:
  """The contrastive term needs loss.contrastive > 0 and VGG16 weights (config.init.vgg)."""
  return vgg.term_on(config, "contrastive")


def create_networks(config: ml_collections.ConfigDict, rngs: nnx.Rngs
                    ) -> dict[str, nnx.Module]:
  """{'generator': PCTNetCNN or PCTNetViT} from config.model, + a frozen 'vgg'
  (VGG16 to relu4_3) when the contrastive term is on (`contrastive_on`)."""
  m = config.model
  if m.variant == "cnn":
    nets = {"generator": PCTNetCNN(
        depth=m.depth, ch=m.ch, max_channels=m.max_channels, batchnorm_from=m.batchnorm_from,
        attend_from=m.attend_from, attention_mid_k=m.attention_mid_k, image_fusion=True,
        init=m.init_magnitude, rngs=rngs)}
  elif m.variant == "vit":
    nets = {"generator": pctnet_vit.PCTNetViT(
        patch=m.patch, dim=m.dim, heads=m.heads, num_layers=m.num_layers, ffn=m.ffn,
        dropout=m.dropout, rngs=rngs)}
  else:
    raise ValueError(f"config.model.variant={m.variant!r}; valid: {VARIANTS}")
  if m.get("identity_init", False):
    # Not in the paper: the untrained network's map is the identity transform
    # (get_params: zero kernel, bias = identity_params), so its output is the composite.
    layers.restart(nets["generator"].get_params, 0.0,
                   pct_ops.identity_params(*_norm(m.variant)))
    if m.variant == "cnn":
      # The CNN's attention map weights the transformed image: it starts at
      # 1 - 0.9975 (dih.start_near_input's map, for the other side), so the
      # background stays the composite while the transform learns.
      layers.restart(nets["generator"].decoder.conv_attention, 0.01,
                     -dih.IDENTITY_ATTENTION_BIAS)
  if contrastive_on(config):
    # The official feeds VGG the model's normalised tensors as they are.
    nets["vgg"] = vgg.VGG16Features(("relu4_3",), rngs, normalize=False)
  return nets


def load_pretrained(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                    paths: dict[str, str]) -> None:
  """config.init.vgg: a torchvision VGG16 state dict (`features.*` up to
  relu4_3 are used) for the contrastive term."""
  del config
  vgg.load_pretrained("pctnet", "contrastive", networks, paths)


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam(optim.lr x batch_size / 16). 'step' schedule: x decay_factor at each
  of decay_epochs (CNN); 'constant_then_linear': constant for constant_epochs,
  then per-epoch linear decay to 0 over linear_epochs (ViT's SequentialLR of
  ConstantLR and LinearLR, stepped once an epoch)."""
  o = config.optim
  vgg.log_term_state("pctnet", config, "contrastive")
  lr = o.lr * config.batch_size / 16
  if o.schedule == "step":
    scaled = ml_collections.ConfigDict(o.to_dict())
    scaled.lr = lr
    return {"generator": optimizers.step_decay_adam(scaled, steps_per_epoch)}
  if o.schedule != "constant_then_linear":
    raise ValueError(f"optim.schedule={o.schedule!r}; valid: 'step', 'constant_then_linear'")

  def schedule(step):
    epoch = jnp.floor(step / steps_per_epoch)
    return lr * jnp.clip(1.0 - (epoch - o.constant_epochs) / o.linear_epochs, 0.0, 1.0)

  return {"generator": optax.inject_hyperparams(optax.adam)(
      learning_rate=schedule, b1=o.b1, b2=o.b2, eps=o.eps)}


def _norm(variant: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """The input normalisation of the variant (the transform acts on it)."""
  if variant == "cnn":
    return layers.IMAGENET_MEAN, layers.IMAGENET_STD
  return (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)


def low_res_view(config: ml_collections.ConfigDict, *images: jax.Array
                 ) -> list[jax.Array]:
  """Each image at config.model.low_res: a half-pixel bilinear resize (the
  official cv2 INTER_LINEAR Resize)."""
  size = (config.model.low_res, config.model.low_res)
  return [layers.resize_bilinear(layers.to_float(x), size) for x in images]


def parameter_maps(config: ml_collections.ConfigDict, net: nnx.Module, composite: jax.Array,
                   mask: jax.Array, rng: jax.Array | None = None
                   ) -> tuple[jax.Array, jax.Array | None]:
  """(parameter map, CNN attention map or None) at config.model.low_res from
  full-resolution [0, 1] (or uint8) inputs: the low-resolution view is a
  half-pixel bilinear resize (the official cv2 INTER_LINEAR Resize)."""
  image, mask = low_res_view(config, composite, mask)
  if config.model.variant == "cnn":
    return net(layers.imagenet_normalize(image), mask)
  return net(image, mask, rng), None


def full_resolution(config: ml_collections.ConfigDict, params: jax.Array,
                    attention: jax.Array | None, composite: jax.Array, mask: jax.Array
                    ) -> jax.Array:
  """The official images_fullres in [0, 1] (unclamped blend): the map (and
  attention) upsampled to the composite's size, applied and blended, fused in
  row chunks of config.model.chunk_pixels pixels."""
  mean, std = (jnp.asarray(v) for v in _norm(config.model.variant))
  lowres = params if attention is None else jnp.concatenate([params, attention], -1)

  def apply(up: jax.Array, rows: dict[str, jax.Array]) -> jax.Array:
    x = layers.to_float(rows["composite"])
    y = jnp.clip(pct_ops.affine_transform(up[..., :pct_ops.NUM_PARAMS], (x - mean) / std),
                 0.0, 1.0)
    a = up[..., pct_ops.NUM_PARAMS:] if attention is not None else layers.to_float(rows["mask"])
    # The official blend is in normalised space; normalisation is affine and the
    # weights sum to 1, so blending in [0, 1] is the same.
    return a * y + (1.0 - a) * x

  return pct_ops.apply_upsampled(lowres, {"composite": composite, "mask": mask}, apply,
                                 config.model.chunk_pixels)


def compute_losses(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                   batch: dict[str, jax.Array], rng: jax.Array
                   ) -> tuple[dict[str, jax.Array], dict[str, jax.Array], dict[str, jax.Array]]:
  """FN-MSE of the full-resolution output (in the variant's normalised space, as
  the official MaskWeightedMSE on images_fullres) + loss.smoothness x the mean
  Sobel magnitude of the low-resolution parameter map + loss.contrastive x the
  official SCS_CR_loss on the low-resolution output (`pct_contrastive`), when
  a 'vgg' network is present."""
  batch = layers.floats(batch)
  composite, mask = batch["composite"], batch["mask"]
  params, attention = parameter_maps(config, networks["generator"], composite, mask, rng)
  out = full_resolution(config, params, attention, composite, mask)
  mean, std = (jnp.asarray(v) for v in _norm(config.model.variant))
  pixel = losses.fn_mse((out - mean) / std, (batch["real"] - mean) / std, mask,
                        config.loss.min_area)
  smooth = jnp.mean(pct_ops.sobel_magnitude(params))
  loss = config.loss.pixel * pixel + config.loss.smoothness * smooth
  metrics = {"fn_mse": pixel, "smoothness": smooth}
  if "vgg" in networks:
    # The official applies it to the low-resolution branch (`images`), which
    # is the same transform and blend at the map's own size.
    image, small_mask, real = low_res_view(config, composite, mask, batch["real"])
    low = full_resolution(config, params, attention, image, small_mask)
    c = pct_contrastive.loss(networks["vgg"], (low - mean) / std, (real - mean) / std,
                             small_mask, (image - mean) / std, jax.random.fold_in(rng, 1),
                             config.loss.contrastive_negatives)
    loss = loss + config.loss.contrastive * c
    metrics["contrastive"] = c
  return {"generator": loss}, metrics, {"harmonized": jnp.clip(out, 0.0, 1.0)}


def predict(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
            inputs: dict[str, jax.Array]) -> jax.Array:
  """The official images_fullres [B,H,W,3], clipped to [0, 1], for any H, W
  (the network always sees the low_res view)."""
  composite, mask = inputs["composite"], inputs["mask"]
  params, attention = parameter_maps(config, networks["generator"], composite, mask)
  return jnp.clip(full_resolution(config, params, attention, composite, mask), 0.0, 1.0)


def convert_torch(state_dicts: dict[str, dict[str, np.ndarray]],
                  config: ml_collections.ConfigDict) -> dict[str, nnx.State]:
  """PCTNet_CNN.pth / PCTNet_ViT.pth (role 'default' or 'generator') ->
  {'generator': state}; config.model.variant must match the file."""
  return torch_import.convert_single(state_dicts, config, create_networks, "generator")
