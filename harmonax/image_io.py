"""Safe reading and writing of user images and masks (Pillow, no TensorFlow).

`read_image` and `read_mask` refuse unreadable files and decompression bombs
with an `ImageError` that names the file, check the pixel count from the header
*before* decoding, apply the EXIF orientation (so a phone photo and its mask,
drawn on the displayed image, line up) and convert every mode to one layout:
images uint8 [H,W,3] RGB, masks float32 [H,W,1] in {0, 1}, by the rules of
`data_builders.image_modes` (the same rules the dataset builders read photos and
masks with).
"""

import os
import tempfile
import warnings

import numpy as np
from PIL import Image, UnidentifiedImageError

from data_builders import image_modes
from data_builders.image_modes import image_to_rgb
from data_builders.image_modes import mask_to_alpha
from data_builders.image_modes import mask_to_binary
from harmonax import cli

# Pillow's own guard (about 89.5 megapixels). Checked here from the header so
# that huge images fail before any memory is spent. Pillow itself still refuses
# images over twice its limit at open time, whatever max_pixels says (raise
# PIL.Image.MAX_IMAGE_PIXELS too for such images).
DEFAULT_MAX_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class ImageError(ValueError):
  """An image or mask file that cannot be used, with the reason and the file."""


class OutputPathError(cli.UserError, ValueError):
  """An output path that cannot be written (a file where a folder must be)."""


def make_output_dir(directory: str | os.PathLike) -> None:
  """os.makedirs(directory, exist_ok=True), failing with the folder named.

  Raises:
    OutputPathError: the folder cannot be created (a file of that name, or in
      its path, or no permission).
  """
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:
    raise OutputPathError(
        f"cannot create the output folder {directory}: {e.strerror or e}"
        f"{f' ({e.filename})' if e.filename and e.filename != directory else ''}") from None


def check_not_an_input(output: str | os.PathLike,
                       inputs: dict[str, str | os.PathLike | None]) -> None:
  """Raises OutputPathError if `output` (a file or a folder) is one of `inputs`
  (what each holds -> its path): writing there would destroy that input."""
  if not os.path.exists(output):
    return
  for what, path in inputs.items():
    if path and os.path.exists(path) and os.path.samefile(path, output):
      if os.path.isdir(output):
        raise OutputPathError(f"the output folder {output} is the {what} folder: its files "
                              "would be overwritten; give another output folder")
      raise OutputPathError(f"the output {output} is the {what} file: it would be "
                            "overwritten; give another output")


def check_output_path(path: str | os.PathLike, *, folder: bool = False) -> None:
  """Raises OutputPathError now when `path` (a file, or with `folder` a folder)
  could not be written later: a file stands where a folder must be, or the
  folder it would go in is not writable. Nothing is created.
  """
  path = os.path.abspath(os.fspath(path))
  if folder and os.path.exists(path) and not os.path.isdir(path):
    raise OutputPathError(f"cannot write into {path}: {path} is a file, not a folder")
  if not folder and os.path.isdir(path):
    raise OutputPathError(f"cannot write {path}: it is a folder")
  existing = path if folder and os.path.isdir(path) else os.path.dirname(path)
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  if not os.path.isdir(existing):
    raise OutputPathError(f"cannot write {path}: {existing} is a file, not a folder")
  if not os.access(existing, os.W_OK | os.X_OK):
    raise OutputPathError(f"cannot write {path}: {existing} is not writable")


def check_pixels(path: str | os.PathLike, width: int, height: int,
                 max_pixels: int | None = None) -> None:
  """Raises ImageError if an image (or a video's frames) of width x height at
  `path` has more than max_pixels pixels (default DEFAULT_MAX_PIXELS)."""
  limit = DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels
  if width * height > limit:
    raise ImageError(
        f"{path}: {width}x{height} = {width * height:,} pixels exceeds the limit "
        f"of {limit:,} pixels (decompression bomb guard); raise max_pixels / "
        "--max_pixels if the image is genuine")


def _open(path: str | os.PathLike, max_pixels: int | None) -> Image.Image:
  """Opens, checks the size from the header, decodes and orients one file."""
  path = os.fspath(path)
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
  try:
    check_pixels(path, *img.size, max_pixels)
  except ImageError:
    img.close()
    raise
  try:
    img.load()
    return image_modes.upright(img)
  except (OSError, ValueError, SyntaxError) as e:  # Truncated/corrupt data.
    raise ImageError(f"{path}: corrupt or truncated image data ({e})") from None


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


def read_matte(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
  """Reads a mask or alpha matte as float32 [H,W,1] in [0, 1], soft values kept.

  Raises:
    ImageError: missing, unreadable, corrupt or too large file.
  """
  with _open(path, max_pixels) as img:
    return mask_to_alpha(img)


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
  image; the file's permissions follow the umask, as any new file's. PNG and
  WebP (lossless) keep every byte; JPEG (quality 95) does not keep background
  bytes.

  Raises:
    ValueError: on a bad shape or an unknown suffix.
    OutputPathError: its folder cannot be created.
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
  make_output_dir(directory)
  fd, tmp = tempfile.mkstemp(suffix=suffix, dir=directory)
  os.close(fd)
  try:
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files.
    # JPEG is lossy (quality 95); WebP is written lossless, as PNG.
    options = ({"quality": 95} if suffix in (".jpg", ".jpeg")
               else {"lossless": True} if suffix == ".webp" else {})
    Image.fromarray(image, "RGB").save(tmp, **options)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
