"""Reading photos and masks that may be broken, and counting what was wrong.

Every function returns None (and records the kind and file in the Summary)
instead of raising, so one bad file never aborts a build. Conversions
(grayscale, alpha, 16-bit, palette, CMYK, EXIF rotation) are applied and counted.
"""

import io
import os
import warnings

from etils import epath
import numpy as np
from PIL import Image, UnidentifiedImageError

from data_builders import image_modes
from data_builders.harmonization_composites.summary import Summary

_EXIF_ORIENTATION = 0x0112
# Orientations that swap width and height (rotations by 90 or 270 degrees).
_TRANSPOSING = (5, 6, 7, 8)
_MODE_KINDS = {"L": "grayscale", "1": "grayscale", "LA": "alpha", "RGBA": "alpha",
               "PA": "alpha", "P": "palette", "CMYK": "cmyk", "I;16": "16bit",
               "I;16B": "16bit", "I;16L": "16bit", "I": "16bit"}


def _open(path: epath.PathLike, summary: Summary) -> tuple[Image.Image, bytes] | None:
  """Opens a file (header only): (image, the file's bytes); None and 'unreadable'
  if it is not an image."""
  try:
    data = epath.Path(path).read_bytes()
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      return Image.open(io.BytesIO(data)), data
  except (OSError, UnidentifiedImageError, Image.DecompressionBombError,
          Image.DecompressionBombWarning, ValueError) as e:
    # A file cut short inside its header fails here already.
    kind = "truncated" if "truncated" in str(e).lower() else "unreadable"
    summary.add(kind, os.fspath(path))
    return None


def _orientation(img: Image.Image) -> int:
  try:
    return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
  except Exception:  # pylint: disable=broad-except  # Malformed EXIF: ignore it.
    return 1


def oriented_size(path: epath.PathLike, summary: Summary) -> tuple[int, int] | None:
  """(width, height) as displayed (EXIF rotation applied), from the header."""
  opened = _open(path, summary)
  if opened is None:
    return None
  w, h = opened[0].size
  return (h, w) if _orientation(opened[0]) in _TRANSPOSING else (w, h)


def _stored_16bit(img: Image.Image) -> bool:
  """Whether the file holds 16-bit samples that Pillow reduces to 8 bits on decoding.

  Pillow opens a 48-bit RGB PNG (or TIFF) as mode 'RGB' and keeps each sample's
  high byte; only the undecoded tile ('RGB;16B') tells. 16-bit greys keep
  their own mode ('I;16') and are counted by it.
  """
  return any(";16" in str(tile.args) for tile in img.tile)


def _load(path: epath.PathLike, summary: Summary
          ) -> tuple[Image.Image, bytes | None] | tuple[None, None]:
  """Decodes fully and applies the EXIF orientation; (None, None) if truncated/corrupt.

  Returns the image and the file's bytes when they decode to this image as it
  is (None after an EXIF rotation or a 16-bit reduction). 16-bit RGB files
  (reduced to 8 bits by the decoding) are counted as '16bit'.
  """
  opened = _open(path, summary)
  if opened is None:
    return None, None
  img, data = opened
  deep = _stored_16bit(img)
  try:
    img.load()
  except (OSError, ValueError, SyntaxError):
    summary.add("truncated", os.fspath(path))
    return None, None
  if deep:
    summary.add("16bit", os.fspath(path))
    data = None
  if _orientation(img) != 1:
    summary.add("exif_rotated", os.fspath(path))
    img = image_modes.upright(img)
    data = None
  return img, data


def read_photo(path: epath.PathLike, summary: Summary, max_size: int | None = None
               ) -> tuple[np.ndarray, tuple[int, int], bytes | None] | tuple[None, None, None]:
  """(uint8 [H, W, 3] RGB with long side <= max_size, (height, width) before
  resizing, the file's bytes if they are an 8-bit RGB JPEG or PNG that decodes to
  exactly this array, else None), or (None, None, None) if unusable."""
  img, data = _load(path, summary)
  if img is None:
    return None, None, None
  kind = _MODE_KINDS.get(img.mode)
  if kind:
    summary.add(kind, os.fspath(path))
  if img.mode != "RGB" or img.format not in ("JPEG", "PNG"):
    data = None
  try:
    rgb = image_modes.image_to_rgb(img)
  except (OSError, ValueError) as e:
    summary.add("unreadable", f"{os.fspath(path)} ({e})")
    return None, None, None
  original = rgb.shape[:2]
  if max_size and max(rgb.shape[:2]) > max_size:
    summary.add("resized", os.fspath(path))
    h, w = rgb.shape[:2]
    scale = max_size / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.LANCZOS))
    data = None
  return rgb, original, data


def read_mask(path: epath.PathLike, summary: Summary) -> np.ndarray | None:
  """A mask file as bool [H, W] (any mode; see data_builders.image_modes), or None."""
  img, _ = _load(path, summary)
  if img is None:
    return None
  # getcolors: None when there are more than 2 values (C, no array pass).
  values = img.getcolors(2) if img.mode == "L" else None
  if values is None or any(v not in (0, 255) for _, v in values):
    summary.add("mask_converted", os.fspath(path))
  return image_modes.mask_to_binary(img)[..., 0] > 0.5


def read_matte(path: epath.PathLike, summary: Summary) -> np.ndarray | None:
  """A mask or soft matte file as uint8 [H, W] (0..255, soft values kept; any
  mode, read as data_builders.image_modes.mask_to_alpha reads it), or None."""
  img, _ = _load(path, summary)
  if img is None:
    return None
  return np.round(image_modes.mask_to_alpha(img)[..., 0] * 255).astype(np.uint8)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """A bool mask resized to (height, width): bilinear, then >= 0.5."""
  img = Image.fromarray(mask.astype(np.uint8) * 255)
  return np.asarray(img.resize((width, height), Image.BILINEAR)) >= 128
