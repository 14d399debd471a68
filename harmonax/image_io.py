"""Safe reading and writing of user images and masks (Pillow, no TensorFlow).

`read_image` and `read_mask` refuse unreadable files and decompression bombs
with an `ImageError` that names the file, check the pixel count from the header
*before* decoding, apply the EXIF orientation (so a phone photo and its mask,
drawn on the displayed image, line up) and convert every mode to one layout:

- images: uint8 [H,W,3] RGB. Grey, palette and CMYK images are converted to RGB;
  an alpha channel is dropped (not composited); 16-bit greys keep their top 8 bits.
- masks: float32 [H,W,1] with values 0.0 / 1.0. Foreground is a value at or
  above half the mode's range: >= 128 for 8-bit masks, >= 32768 for 16-bit
  ('I;16' or 'I'), any non-zero pixel for 1-bit. Colour masks use their
  brightest channel (a pure red mask marks the foreground). A mask with a
  non-constant alpha channel (RGBA/LA/PA, e.g. a cut-out PNG) uses the alpha.
"""

import os
import tempfile
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

# Pillow's own guard (about 89.5 megapixels). Checked here from the header so
# that huge images fail before any memory is spent. Pillow itself still refuses
# images over twice its limit at open time, whatever max_pixels says (raise
# PIL.Image.MAX_IMAGE_PIXELS too for such images).
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
  """An image or mask file that cannot be used, with the reason and the file."""


def _open(path: str | os.PathLike, max_pixels: int | None) -> Image.Image:
  """Opens, checks the size from the header, decodes and orients one file."""
  path = os.fspath(path)
  limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
  try:
    with warnings.catch_warnings():
      # Our own limit below replaces Pillow's warning with an error.
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      img = Image.open(path)
  except FileNotFoundError:
    raise ImageError(f"{path}: no such file") from None
  except Image.DecompressionBombError as e:
    raise ImageError(f"{path}: refused as a decompression bomb ({e})") from None
  except (UnidentifiedImageError, OSError) as e:
    raise ImageError(f"{path}: not a readable image ({e})") from None
  width, height = img.size
  if width * height > limit:
    img.close()
    raise ImageError(
        f"{path}: {width}x{height} = {width * height:,} pixels exceeds the limit "
        f"of {limit:,} pixels (decompression bomb guard); raise max_pixels / "
        "--max_pixels if the image is genuine")
  try:
    img.load()
    return ImageOps.exif_transpose(img)
  except (OSError, ValueError, SyntaxError) as e:  # Truncated/corrupt data.
    raise ImageError(f"{path}: corrupt or truncated image data ({e})") from None


def image_to_rgb(img: Image.Image) -> np.ndarray:
  """A Pillow image of any mode as uint8 [H,W,3] RGB."""
  if img.mode in ("I;16", "I;16B", "I;16L", "I"):
    # Pillow's 'L' conversion clips 16-bit values instead of scaling them.
    arr = np.asarray(img, dtype=np.uint32)
    shift = 8 if img.mode.startswith("I;16") or arr.max() > 255 else 0
    grey = (arr >> shift).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  if img.mode == "F":
    grey = np.clip(np.asarray(img), 0, 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)
  return np.asarray(img.convert("RGB"), dtype=np.uint8)


def mask_to_binary(img: Image.Image) -> np.ndarray:
  """A Pillow mask image of any mode as float32 [H,W,1] in {0, 1} (see module doc)."""
  if img.mode == "P":
    img = img.convert("RGBA" if "transparency" in img.info else "RGB")
  if img.mode in ("RGBA", "LA", "PA", "La", "RGBa"):
    alpha = np.asarray(img.getchannel("A"))
    if alpha.min() != alpha.max():
      return (alpha >= 128).astype(np.float32)[..., None]
    img = img.convert("RGB" if img.mode.startswith("RGB") else "L")
  if img.mode == "1":
    fg = np.asarray(img, dtype=bool)
  elif img.mode in ("I;16", "I;16B", "I;16L", "I"):
    fg = np.asarray(img, dtype=np.int64) >= 32768
  elif img.mode == "F":
    arr = np.asarray(img)
    fg = arr >= (0.5 if arr.max() <= 1.0 else 128)
  elif img.mode == "L":
    fg = np.asarray(img) >= 128
  else:
    fg = np.asarray(img.convert("RGB")).max(axis=-1) >= 128
  return fg.astype(np.float32)[..., None]


def read_image(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
  """Reads an image file as uint8 [H,W,3] RGB, EXIF orientation applied.

  Args:
    path: the file.
    max_pixels: refuse images with more pixels (default DEFAULT_MAX_PIXELS).

  Raises:
    ImageError: missing, unreadable, corrupt or too large file.
  """
  with _open(path, max_pixels) as img:
    return image_to_rgb(img)


def read_mask(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
  """Reads a mask file as float32 [H,W,1] in {0, 1}, EXIF orientation applied.

  Raises:
    ImageError: missing, unreadable, corrupt or too large file.
  """
  with _open(path, max_pixels) as img:
    return mask_to_binary(img)


def _umask() -> int:
  """The process umask, read without changing it (os.umask can only set it)."""
  try:
    with open("/proc/self/status", encoding="ascii") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError):
    pass
  mask = os.umask(0o022)  # Elsewhere: set and restore (not thread-safe, but brief).
  os.umask(mask)
  return mask


def write_image(path: str | os.PathLike, image: np.ndarray) -> None:
  """Writes uint8 [H,W,3] (or float in [0, 1]) to `path`; format from the suffix.

  Writes to a temporary file and renames it, so a reader never sees half an
  image; the file's permissions follow the umask, as any new file's. PNG is
  lossless; JPEG (quality 95) does not keep background bytes.

  Raises:
    ValueError: on a bad shape or an unknown suffix.
  """
  path = os.fspath(path)
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"{path}: expected an [H,W,3] image, got shape {image.shape}")
  if image.dtype != np.uint8:
    image = np.round(np.clip(image.astype(np.float64), 0.0, 1.0) * 255).astype(np.uint8)
  suffix = os.path.splitext(path)[1].lower()
  if suffix not in IMAGE_SUFFIXES:
    raise ValueError(f"{path}: unknown image suffix {suffix!r}; use one of {IMAGE_SUFFIXES}")
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=suffix, dir=directory)
  os.close(fd)
  try:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files.
    options = {"quality": 95} if suffix in (".jpg", ".jpeg", ".webp") else {}
    Image.fromarray(image, "RGB").save(tmp, **options)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
