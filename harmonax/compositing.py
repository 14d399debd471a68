"""Compositing a foreground photo onto a background, as a library (Deep Image Compositing).

```python
from harmonax import checkpoint, compositing
config, networks = checkpoint.load_networks("/tmp/dic_local")
out = compositing.compose(networks, foreground, background, mask=None, config=config)
```

`compose` takes uint8 (or [0, 1] float) images of any size; the foreground photo
and its mask are resized to the background's size (as the training triplets
are). Without a mask, the segmentation and refinement networks predict it.
The classical blends need no checkpoint: `baseline_config('laplacian')` gives a
config for `compose(..., networks={})`, and `save_baseline(dir, config)` a
directory that `harmonax.evaluate --checkpoint=dir` scores.
"""

import importlib.util
import os

from flax import nnx
import ml_collections
import numpy as np

from harmonax import checkpoint
from harmonax import image_io
from harmonax import inference
from harmonax import variables
from harmonax.models import deep_compositing
from harmonax.models import layers


def baseline_config(variant: str, **model_fields) -> ml_collections.ConfigDict:
  """A deep_compositing config of a parameter-free blend (configs/deep_compositing.py
  defaults for everything else), e.g. baseline_config('laplacian', pyramid_levels=4)."""
  # Library code reads the recipe by path (never imports the configs package).
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "deep_compositing.py")
  spec = importlib.util.spec_from_file_location("_deep_compositing_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("runlocal")
  config.model.variant = variant
  config.model.update(model_fields)
  deep_compositing.create_networks(config, variables.rngs(0))  # Validates the variant.
  return config


def save_baseline(directory: str, config: ml_collections.ConfigDict) -> None:
  """Writes config.json (and an empty networks checkpoint) for a blend variant,
  so `harmonax.evaluate --checkpoint=directory` scores it like a model."""
  if config.model.variant == "network":
    raise ValueError("save_baseline is for the parameter-free variants "
                     f"{deep_compositing.VARIANTS[1:]}; train the 'network' variant")
  checkpoint.save_networks(directory, config, {})


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  x = layers.to_float(np.asarray(image)[None]).astype(np.float32)
  return np.asarray(layers.resize_bilinear(x, size))[0]


def compose(networks: dict[str, nnx.Module], foreground: np.ndarray, background: np.ndarray,
            mask: np.ndarray | None = None, *, config: ml_collections.ConfigDict
            ) -> np.ndarray:
  """The composite [H,W,3] at the background's size.

  Args:
    networks: deep_compositing networks in eval mode ({} for the blends).
    foreground: [h,w,3] photo holding the object (uint8 or [0, 1] float).
    background: [H,W,3] photo (uint8 or [0, 1] float).
    mask: optional [h,w] or [h,w,1] foreground mask/matte of the foreground photo
      (uint8 0..255, bool or [0, 1] float; soft values are kept as alpha). None:
      predicted by the segmentation networks.
    config: the model's config.

  Returns:
    uint8 (rounded) if the background is uint8, else float32 in [0, 1].
  """
  background = np.asarray(background)
  for name, image in (("foreground", foreground), ("background", background)):
    if np.ndim(image) != 3 or np.shape(image)[-1] != 3:
      raise ValueError(f"{name}: expected [H,W,3], got {np.shape(image)}")
  size = background.shape[:2]
  inputs = {"foreground": _resize(foreground, size)[None],
            "background": np.asarray(layers.to_float(background[None])).astype(np.float32)}
  if mask is not None:
    mask = np.asarray(mask)
    if mask.ndim == 2:
      mask = mask[..., None]
    if mask.shape[:2] != np.shape(foreground)[:2]:
      raise ValueError(f"mask size {mask.shape[:2]} does not match the foreground's "
                       f"{np.shape(foreground)[:2]}")
    if mask.dtype == bool:
      mask = mask.astype(np.float32)
    inputs["mask"] = np.clip(_resize(mask, size), 0.0, 1.0)[None]
  out = np.asarray(inference.jitted_predict(ml_collections.FrozenConfigDict(config))(
      networks, inputs))[0]
  if background.dtype == np.uint8:
    return np.round(out * 255.0).astype(np.uint8)
  return out.astype(np.float32)


def compose_file(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                 foreground_path: str, background_path: str, mask_path: str | None,
                 output_path: str, max_pixels: int | None = None) -> None:
  """Reads the photos (and the mask or matte, soft values kept), composes, writes.

  Raises:
    image_io.ImageError: unreadable, corrupt or too large file.
    ValueError: the mask's size is not the foreground's (both files named), or
      no mask for a variant without segmentation networks.
  """
  foreground = image_io.read_image(foreground_path, max_pixels=max_pixels)
  background = image_io.read_image(background_path, max_pixels=max_pixels)
  mask = None
  if mask_path:
    mask = image_io.read_matte(mask_path, max_pixels=max_pixels)
    if mask.shape[:2] != foreground.shape[:2]:
      raise ValueError(
          f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but foreground "
          f"{foreground_path} is {foreground.shape[1]}x{foreground.shape[0]} (WxH)")
  elif "refinement" not in networks:
    raise ValueError(f"variant {config.model.variant!r} has no segmentation network: "
                     "give --mask")
  image_io.write_image(output_path, compose(networks, foreground, background, mask,
                                            config=config))
