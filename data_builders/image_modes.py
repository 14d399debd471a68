"""Pillow images of any mode as RGB photos and binary masks: one rule for every reader.

The builders read photos and masks with these conversions, and harmonax's
`image_io` reads users' images and masks with the same ones:

- images: uint8 [H,W,3] RGB. Grey, palette and CMYK images are converted to RGB;
  an alpha channel is dropped (not composited); 16-bit greys keep their top 8 bits.
- masks: float32 [H,W,1] with values 0.0 / 1.0. Foreground is a value at or
  above half the mode's range: >= 128 for 8-bit masks, >= 32768 for 16-bit
  ('I;16' or 'I'), any non-zero pixel for 1-bit. Colour masks use their
  brightest channel (a pure red mask marks the foreground). A mask with a
  non-constant alpha channel (RGBA/LA/PA, e.g. a cut-out PNG) uses the alpha.
  A single-channel 8- or 16-bit mask stored losslessly (not JPEG or WebP, whose
  noise can put 1s into a black mask) whose largest value is 1 is a label mask
  (0/1, as segmentation tools write them): 1 is the foreground.
"""

import numpy as np
from PIL import Image, ImageOps


def image_to_rgb(img: Image.Image) -> np.ndarray:
  """A Pillow image of any mode as uint8 [H,W,3] RGB."""
  if img.mode in ("I;16", "I;16B", "I;16L", "I"):
    # Pillow's 'L' conversion clips 16-bit values instead of scaling them.
    arr = np.asarray(img, dtype=np.uint32)
    shift = 8 if img.mode.startswith("I;16") or arr.max() > 255 else 0
    grey = (arr >> shift).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if img.mode == "F":  # Float images: [0, 1] (scaled, as masks read) or 0..255.
    arr = np.asarray(img, dtype=np.float64)
    arr = arr * 255.0 if arr.max(initial=0.0) <= 1.0 else arr
    grey = np.round(np.clip(arr, 0, 255)).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  return np.asarray(img.convert("RGB"), dtype=np.uint8)


def upright(img: Image.Image) -> Image.Image:
  """The image with its EXIF orientation applied, keeping `img.format` (the
  label-mask rule reads it; ImageOps.exif_transpose returns a copy without)."""
  out = ImageOps.exif_transpose(img)
  out.format = img.format
  return out


# Formats whose codec noise can put 1s into a black mask: never label masks.
_LOSSY_FORMATS = ("JPEG", "MPO", "WEBP")


def _is_label_mask(fmt: str | None, single_channel: np.ndarray) -> bool:
  """Whether a single-channel integer mask, stored losslessly (`fmt`: the
  file's format, None for an image made in memory), holds 0/1 labels."""
  return fmt not in _LOSSY_FORMATS and single_channel.max() == 1


def mask_to_binary(img: Image.Image) -> np.ndarray:
  """A Pillow mask image of any mode as float32 [H,W,1] in {0, 1} (see module doc)."""
  fmt = img.format
  if img.mode == "P":
    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
  if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
    alpha = np.asarray(img.getchannel("A"))
    if alpha.min() != alpha.max():
      return (alpha >= 128).astype(np.float32)[..., None]
    img = img.convert("RGB" if img.mode.startswith("RGB") else "L")
  if img.mode == "1":
    return np.asarray(img, dtype=np.float32)[..., None]
  if img.mode == "F":
    arr = np.asarray(img)
    return (arr >= (0.5 if arr.max() <= 1.0 else 128)).astype(np.float32)[..., None]
  if img.mode in ("I;16", "I;16B", "I;16L", "I", "L"):
    arr = np.asarray(img, dtype=np.int64)
    if _is_label_mask(fmt, arr):  # It would otherwise read as empty.
      return (arr >= 1).astype(np.float32)[..., None]
    half = 128 if img.mode == "L" else 32768
  else:
    arr, half = np.asarray(img.convert("RGB")).max(axis=-1), 128
  return (arr >= half).astype(np.float32)[..., None]


def mask_to_alpha(img: Image.Image) -> np.ndarray:
  """A Pillow mask or matte of any mode as float32 [H,W,1] in [0, 1], soft values kept.

  The modes are read as in mask_to_binary, without the threshold: 8-bit values
  / 255, 16-bit / 65535, float images clipped (or / 255 above 1), a varying
  alpha channel is the matte, RGB takes the largest channel, and a 0/1 label
  mask (as in mask_to_binary) is its own matte.
  """
  fmt = img.format
  if img.mode == "P":
    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
  if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
    alpha = np.asarray(img.getchannel("A"))
    if alpha.min() != alpha.max():
      return (alpha.astype(np.float32) / 255.0)[..., None]
    img = img.convert("RGB" if img.mode.startswith("RGB") else "L")
  if img.mode == "1":
    return np.asarray(img, dtype=np.float32)[..., None]
  if img.mode == "F":
    arr = np.asarray(img, dtype=np.float64)
    a = np.clip(arr if arr.max() <= 1.0 else arr / 255.0, 0.0, 1.0)
    return a.astype(np.float32)[..., None]
  if img.mode in ("I;16", "I;16B", "I;16L", "I", "L"):
    arr = np.clip(np.asarray(img, dtype=np.float64), 0, 65535)
    full = 1.0 if _is_label_mask(fmt, arr) else 255.0 if img.mode == "L" else 65535.0
  else:
    arr, full = np.asarray(img.convert("RGB")).max(axis=-1).astype(np.float64), 255.0
  return (arr / full).astype(np.float32)[..., None]
