"""The three-line Python API: `harmonax.load(DIR)` and `model(composite, mask)`.

    import harmonax
    model = harmonax.load("/tmp/issam_official")   # a convert/save_networks dir or a workdir
    out = model(composite, mask)                   # numpy arrays or PIL images

Weights are read from disk only (never downloaded). Calls run through
`inference.harmonize` (jitted; one compilation per image size and batch,
cached), so outputs equal `python -m harmonax.harmonize`'s.
"""

import dataclasses
import os
from typing import Any

from data_builders import image_modes
from harmonax import checkpoint
from harmonax import inference
from harmonax import model_card
from harmonax import models


@dataclasses.dataclass
class Model:
  """A loaded harmonization model; call it on (composite, mask)."""
  config: Any
  networks: dict
  info: dict[str, Any]

  def __call__(self, composite: Any, mask: Any) -> Any:
    """Harmonizes one image or a batch, of any size.

    Args:
      composite: [H,W,3] or [B,H,W,3] uint8 (0..255) or float ([0, 1]) array,
        a PIL image, or a list of either (each harmonized at its own size).
      mask: the foreground, as `inference.harmonize` reads it (bool, 0/1,
        0..255 or float), an array or a PIL image (any mode, read as
        `harmonize` reads mask files), or a list.

    Returns:
      The composite's kind: a PIL image for a PIL image, else an array of the
      composite's layout (uint8 for uint8, float32 in [0, 1] otherwise); a list
      for a list.
    """
    if isinstance(composite, (list, tuple)):
      if not isinstance(mask, (list, tuple)) or len(mask) != len(composite):
        raise ValueError("a list of composites needs a list of masks of the same length")
      return [self(c, m) for c, m in zip(composite, mask)]
    is_pil = _is_pil(composite)
    if is_pil != _is_pil(mask):
      # An array has no orientation: which way it lines up with a rotated
      # photo cannot be known.
      rotated = composite if is_pil else mask
      if _orientation(rotated) != 1:
        raise ValueError(
            f"the {'composite' if is_pil else 'mask'} is a PIL image with EXIF orientation "
            f"{_orientation(rotated)} and the other an array: pass both as PIL images "
            "(each is turned upright), or apply PIL.ImageOps.exif_transpose first")
    # PIL images as `harmonize` reads files: EXIF orientation applied, any
    # mode (16-bit grey, palette, CMYK; masks by colour or alpha, 0/1 labels).
    image = image_modes.image_to_rgb(image_modes.upright(composite)) if is_pil else composite
    mask_array = image_modes.mask_to_binary(image_modes.upright(mask)) if _is_pil(mask) else mask
    out = inference.harmonize(self.networks, image, mask_array, config=self.config)
    if is_pil:
      from PIL import Image  # pylint: disable=g-import-not-at-top
      return Image.fromarray(out)
    return out


def _orientation(image: Any) -> int:
  return int(image.getexif().get(0x0112, 1) or 1)


def _is_pil(image: Any) -> bool:
  """A PIL image, recognised without importing PIL."""
  return hasattr(image, "convert") and hasattr(image, "mode")


def load(directory: str | os.PathLike, dtype: str = "float32") -> Model:
  """Loads a `harmonax.convert` / `checkpoint.save_networks` directory or a
  training workdir (its newest restorable step), with its model card as
  `model.info`: model, variant, parameters, source, license.

  `dtype` 'bfloat16' runs the layers in bfloat16 (weights stay float32;
  outputs are float32 or uint8 as with float32).

  Raises:
    FileNotFoundError: no config.json or no weights in `directory`.
  """
  config, networks = checkpoint.load_networks(directory)
  models.set_compute_dtype(networks, dtype)
  card = model_card.read(directory)
  if card is None:  # A directory written before model cards existed.
    card = {"model": model_card.model_name(config), "family": config.model.name,
            "variant": config.model.get("variant"),
            "parameters": sum(model_card.parameter_counts(config).values()),
            "source": {"kind": "unknown (no model card)"}, "license": "unknown"}
  info = dict(card, path=os.fspath(directory))
  return Model(config=config, networks=networks, info=info)
