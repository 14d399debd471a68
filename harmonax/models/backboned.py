"""iharm models with a pretrained backbone (SamsungLabs/image_harmonization,
iharm/model/backboned/): `IHModelWithBackbone(model, backbone)` in Flax NNX.

HRNetIHModel: an HRNetV2 (+ OCR) backbone reads the ImageNet-normalized image,
with a 3x3 convolution of the mask (scaled by a learned |s|, s = 0.1 at init)
added after its first convolution; its stride-4 features enter the iDIH or
iS2AM encoder through `FeaturesConnector`s at level `backbone_from` (2: the
encoder's stride-4 input). The base network is built by the caller (the `dih`
family) from (backbone_from, backbone_channels, backbone_mode), so this module
does not depend on it. Names mirror the official modules: `backbone.hrnet.*`,
`model.*`, `mask_conv.*`.

Training: the official trainer multiplies the learning rate of HRNet's weights
by lr_mult (0.1) except the OCR head's (`backbone_lr_mask` selects them) and
initialises HRNet from HRNet-Image-Classification's ImageNet weights
(`load_imagenet`).
"""

from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from harmonax import torch_import
from harmonax.models import hrnet
from harmonax.models import layers

CONNECTOR_MODES = ("cat", "catc", "sum", "")


class FeaturesConnector(nnx.Module):
  """Joins backbone features to an encoder input: 'cat' concatenates, 'catc'
  concatenates then projects back with a 1x1 conv, 'sum' adds a 1x1 projection
  of the features; '' (or no feature channels) ignores them."""

  def __init__(self, mode: str, in_ch: int, feature_ch: int, out_ch: int, *,
               init: Callable, rngs: nnx.Rngs):
    if mode not in CONNECTOR_MODES:
      raise ValueError(f"backbone mode {mode!r}; valid: {CONNECTOR_MODES}")
    self.mode = mode if feature_ch else ""
    reduce_in = {"catc": in_ch + feature_ch, "sum": feature_ch}.get(self.mode)
    self.reduce_conv = nnx.data(None if reduce_in is None else layers.conv(
        reduce_in, out_ch, 1, kernel_init=init, rngs=rngs))
    self.output_channels = in_ch + feature_ch if self.mode == "cat" else out_ch

  def __call__(self, x: jax.Array, features: jax.Array) -> jax.Array:
    if self.mode == "cat":
      return jnp.concatenate([x, features], axis=-1)
    if self.mode == "catc":
      return self.reduce_conv(jnp.concatenate([x, features], axis=-1))
    if self.mode == "sum":
      return self.reduce_conv(features) + x
    return x


def encoder_args(backbone_from: int = -1, backbone_channels=(), backbone_mode: str = "") -> dict:
  """An encoder's backbone settings (official names): the first level that
  takes features, the channels of each feature map, the connector mode."""
  return {"from": backbone_from, "channels": list(backbone_channels or ()),
          "mode": backbone_mode}


class ConnectedEncoder(nnx.Module):
  """Base of the iharm encoders: levels >= backbone_from take the backbone's
  features, one map a level (first map first), through FeaturesConnectors
  named connector<level> in `self.connectors` (which subclasses create)."""

  def _connector(self, level: int, in_ch: int, backbone: dict, init: Callable,
                 rngs: nnx.Rngs) -> int:
    """Adds the level's connector if it has one; returns the block's input channels."""
    if not (0 <= backbone["from"] <= level and backbone["channels"]):
      return in_ch
    connector = FeaturesConnector(backbone["mode"], in_ch, backbone["channels"].pop(0), in_ch,
                                  init=init, rngs=rngs)
    self.connectors[f"connector{level}"] = connector
    return connector.output_channels

  def _connect(self, level: int, x: jax.Array, features: list[jax.Array]) -> jax.Array:
    name = f"connector{level}"
    return self.connectors[name](x, features.pop(0)) if name in self.connectors else x

  def _check(self, backbone_features: list[jax.Array] | None) -> list[jax.Array]:
    if backbone_features is not None and not len(self.connectors):
      raise ValueError("This network has no backbone connectors; build a backboned "
                       "variant (config.model.backbone) to pass backbone_features")
    return list(backbone_features or [])


class ScaleLayer(nnx.Module):
  """x * |scale| with a learned scalar (lr_mult 1, as the official mask_conv)."""

  def __init__(self, init_value: float = 1.0):
    self.scale = nnx.Param(jnp.full((1,), init_value, jnp.float32))

  def __call__(self, x: jax.Array) -> jax.Array:
    return x * jnp.abs(self.scale[...])


class HRNetBB(nnx.Module):
  """HRNetBB with cat_outputs and no pyramid: one feature map, the OCR output
  (2 * ocr channels) or, with ocr 0, the concatenated branches."""

  def __init__(self, *, width: int, blocks: int, modules: tuple[int, int, int], ocr: int,
               stem: int, init: Callable, rngs: nnx.Rngs):
    self.hrnet = hrnet.HighResolutionNet(width, ocr_width=ocr, blocks=blocks, modules=modules,
                                         stem=stem, init=init, rngs=rngs)
    self.output_channels = (self.hrnet.output_channels,)

  def __call__(self, image: jax.Array, mask: jax.Array, mask_features: jax.Array | None,
               rngs: nnx.Rngs | None = None) -> list[jax.Array]:
    return [self.hrnet(image, mask, mask_features, rngs)]


class HRNetIHModel(nnx.Module):
  """IHModelWithBackbone(model, HRNetBB) with mask_fusion 'sum'.

  `make_model(backbone_from, backbone_channels, backbone_mode)` builds the base
  network (iDIH / iS2AM with connectors). downsize_input: the backbone sees the
  half-size image and the features enter one level deeper (the 512 models).
  Called as net(image, mask, rngs=None): rngs carries 'dropout' in training.
  """

  def __init__(self, make_model: Callable[..., nnx.Module], *, width: int = 18,
               blocks: int = 4, modules: tuple[int, int, int] = (1, 4, 3), ocr: int = 64,
               mode: str = "cat", downsize_input: bool = False, stem: int = 64,
               init: Callable, rngs: nnx.Rngs):
    self.backbone = HRNetBB(width=width, blocks=blocks, modules=modules, ocr=ocr, stem=stem,
                            init=init, rngs=rngs)
    self.model = make_model(3 if downsize_input else 2, self.backbone.output_channels, mode)
    self.mask_conv = nnx.List([
        layers.conv(1, stem, 3, stride=2, padding=1, kernel_init=init, rngs=rngs),
        ScaleLayer(0.1)])
    self.downsize_input = downsize_input
    self.depth = self.model.depth
    self.size_multiple = self.model.size_multiple
    self.min_size = self.model.min_size

  def backbone_features(self, image: jax.Array, mask: jax.Array,
                        rngs: nnx.Rngs | None = None) -> list[jax.Array]:
    """The backbone's outputs for the base network's connectors."""
    backbone_mask = jnp.concatenate([mask, 1.0 - mask], axis=-1)
    if self.downsize_input:
      # F.interpolate(scale_factor=0.5, align_corners=True): floor(H / 2).
      size = (image.shape[1] // 2, image.shape[2] // 2)
      image = layers.resize_bilinear_align_corners(image, size)
      backbone_mask = layers.resize_bilinear_align_corners(backbone_mask, size)
    mask_features = hrnet.run(self.mask_conv, jnp.split(backbone_mask, [1], axis=-1)[0])
    return self.backbone(image, backbone_mask, mask_features, rngs)

  def features(self, image: jax.Array, mask: jax.Array, rngs: nnx.Rngs | None = None) -> dict:
    """The base network's features (see its `features`), backbone included."""
    return self.model.features(image, mask, self.backbone_features(image, mask, rngs))

  def __call__(self, image: jax.Array, mask: jax.Array,
               rngs: nnx.Rngs | None = None) -> jax.Array:
    """Normalized image [B,H,W,3] and mask [B,H,W,1] -> normalized output [B,H,W,3]."""
    return self.model(image, mask, self.backbone_features(image, mask, rngs))


# The OCR head is new (lr_mult 1); the rest of HRNet is ImageNet-pretrained.
_OCR_HEAD = ("conv3x3_ocr", "ocr_distri_head")


def _names(path: tuple) -> list[str]:
  return [str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path]


def backbone_lr_mask(params: Any) -> Any:
  """True for the parameters the official optimizer trains with lr * lr_mult:
  backbone.hrnet.* except the OCR head (the same structure as params)."""
  def pretrained(path, _):
    names = _names(path)
    return names[:2] == ["backbone", "hrnet"] and names[2] not in _OCR_HEAD
  return jax.tree_util.tree_map_with_path(pretrained, params)


def hrnet_settings(state_dict: Mapping[str, np.ndarray]) -> dict | None:
  """config.model.backbone fields an official HRNetIHModel checkpoint decides
  (width, blocks, modules, ocr, stem), read from its keys; None if it has no
  HRNet backbone."""
  p = "backbone.hrnet."
  if f"{p}transition1.0.0.weight" not in state_dict:
    return None
  count = lambda prefix: len({k[len(prefix):].split(".")[0] for k in state_dict
                              if k.startswith(prefix)})
  ocr = state_dict.get(f"{p}conv3x3_ocr.0.weight")
  return {"width": int(np.shape(state_dict[f"{p}transition1.0.0.weight"])[0]),
          "blocks": count(f"{p}layer1."),
          "modules": [count(f"{p}stage{s}.") for s in (2, 3, 4)],
          "ocr": 0 if ocr is None else int(np.shape(ocr)[0]) // 2,
          "stem": int(np.shape(state_dict[f"{p}conv1.weight"])[0])}


def load_imagenet(net: hrnet.HighResolutionNet, state_dict: Mapping[str, np.ndarray]) -> None:
  """An HRNet-Image-Classification state dict (hrnetv2_w18_imagenet_pretrained.pth,
  hrnet_w18_small_model_v2.pth, ...) into `net`, as the official
  load_pretrained_weights: matching names are copied (the classifier's
  incre_modules, downsamp_modules, final_layer and classifier are dropped); the
  OCR head keeps its initialisation. Unlike the official loader, a file that
  lacks one of the backbone's weights is an error, not a silent partial load.
  """
  state_dict = {k.replace("last_layer", "aux_head").replace("model.", ""): v
                for k, v in state_dict.items()}
  current = torch_import.to_state_dict(net)
  missing = sorted(k for k in current if k not in state_dict
                   and k.split(".", 1)[0] not in _OCR_HEAD)
  if missing:
    raise ValueError(f"Not an HRNet ImageNet state dict for this width: {len(missing)} "
                     f"backbone weights missing, e.g. {missing[:5]}")
  current.update({k: v for k, v in state_dict.items() if k in current})
  torch_import.load_into(net, current, context="HRNet ImageNet weights")
