r"""Harmonizes user images at any resolution with a trained or imported model.

One image:
  python -m harmonax.harmonize --workdir=/tmp/issam \
      --composite=photo.jpg --mask=photo_mask.png --output=out.png
A folder (masks matched by file stem; the output is <stem>.png):
  python -m harmonax.harmonize --checkpoint=/tmp/converted/issam \
      --composite=comps/ --mask=masks/ --output=out/
Video (Harmonizer): --video / --frames are handed to harmonax.video.

Masks are binarized (rules in harmonax.image_io); the model sees the binary
mask and the output keeps every background pixel's bytes (where mask == 0 the
output equals the composite exactly). Write PNG to keep them: JPEG is lossy.
"""

from collections.abc import Callable
import functools
import os
import sys

from absl import app
from absl import flags
from absl import logging
from flax import nnx
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmonax import cli
from harmonax import image_io
from harmonax import metric_writers
from harmonax import models


def define_flags() -> None:
  """Defines this tool's flags, reusing any of the same name already defined.

  Flags are not defined at import time: the trainer and other tools import
  this module for `harmonize()` and define their own --workdir/--checkpoint.
  """
  defs = [
      (flags.DEFINE_string, "workdir", None, "Training workdir to load the newest checkpoint of."),
      (flags.DEFINE_string, "checkpoint", None, "A checkpoint.save_networks directory."),
      (flags.DEFINE_string, "composite", None, "Composite image file, or a folder of them."),
      (flags.DEFINE_string, "mask", None, "Mask file, or a folder of masks with matching stems."),
      (flags.DEFINE_string, "output", None, "Output file, or folder for folder runs."),
      (flags.DEFINE_integer, "max_pixels", image_io.DEFAULT_MAX_PIXELS,
       "Refuse larger images (decompression bombs)."),
      (flags.DEFINE_string, "video", None, "Video file to harmonize (harmonax.video)."),
      (flags.DEFINE_string, "frames", None, "Folder of video frames (harmonax.video)."),
  ]
  for define, name, default, help_text in defs:
    if name not in flags.FLAGS:
      # allow_override: a module imported later (e.g. harmonax.train) may
      # define the same flag at import time and then takes it over.
      define(name, default, help_text, allow_override=True)


@functools.cache
def _jitted_predict(family_name: str) -> Callable:
  # One jitted function per family; nnx.jit caches compilations per image shape.
  family = models.get_family(family_name)
  return nnx.jit(family.predict)


def _binary_mask(mask: np.ndarray) -> np.ndarray:
  """bool [..., H, W, 1] from a bool, integer or float mask (rules in `harmonize`)."""
  mask = np.asarray(mask)
  if mask.dtype == bool:
    return mask
  top = mask.max(initial=0)
  if np.issubdtype(mask.dtype, np.integer):
    return mask >= (1 if top <= 1 else 128 if top <= 255 else 32768)
  return mask >= (0.5 if top <= 1 else 128)


def harmonize(networks: dict[str, nnx.Module], composite: np.ndarray, mask: np.ndarray,
              *, config: ml_collections.ConfigDict) -> np.ndarray:
  """Harmonizes one image [H,W,3] or a batch [B,H,W,3] of any size.

  Args:
    networks: the family's networks in eval mode (checkpoint.load_networks).
    composite: uint8 in 0..255, or float in [0, 1].
    mask: [H,W], [H,W,1] (or with a batch axis) marking the foreground. bool;
      integer: foreground >= 1 if its maximum is <= 1 (a 0/1 mask), else
      >= 128 if its maximum is <= 255, else >= 32768 (16-bit); float:
      foreground >= 0.5 (>= 128 if its maximum exceeds 1, i.e. 0..255).
    config: the model's config (config.model.name picks the family's predict).

  Returns:
    The harmonized image in the composite's layout: uint8 for uint8 input,
    float32 in [0, 1] otherwise. Where the mask is background, the output
    equals the composite exactly.

  Raises:
    ValueError: on bad shapes or composite/mask size mismatch.
  """
  composite = np.asarray(composite)
  mask = np.asarray(mask)
  single = composite.ndim == 3
  if composite.ndim not in (3, 4) or composite.shape[-1] != 3:
    raise ValueError(f"composite: expected [H,W,3] or [B,H,W,3], got {composite.shape}")
  if mask.ndim == composite.ndim - 1:
    mask = mask[..., None]
  if mask.shape != composite.shape[:-1] + (1,):
    raise ValueError(
        f"mask size {mask.shape[:-1]} does not match composite size "
        f"{composite.shape[:-1]} (composite {composite.shape}, mask {mask.shape})")
  fg = _binary_mask(mask)
  if single:
    composite, fg = composite[None], fg[None]
  is_uint8 = composite.dtype == np.uint8
  comp01 = composite.astype(np.float32) / 255.0 if is_uint8 else composite.astype(np.float32)
  pred = _jitted_predict(config.model.name)(
      networks, jnp.asarray(comp01), jnp.asarray(fg, jnp.float32))
  pred = np.clip(np.asarray(pred, np.float32), 0.0, 1.0)
  if is_uint8:
    out = np.where(fg, np.round(pred * 255.0).astype(np.uint8), composite)
  else:
    out = np.where(fg, pred, comp01)
  return out[0] if single else out


def harmonize_file(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                   composite_path: str, mask_path: str, output_path: str,
                   max_pixels: int | None = None) -> None:
  """Reads a composite and its mask, harmonizes, writes `output_path`.

  Raises:
    image_io.ImageError: unreadable, corrupt or too large file.
    ValueError: composite and mask sizes differ (both files named).
  """
  composite = image_io.read_image(composite_path, max_pixels=max_pixels)
  mask = image_io.read_mask(mask_path, max_pixels=max_pixels)
  if not mask.any() or mask.all():
    # Legal, but most likely the wrong file or an inverted/unthresholded mask.
    logging.warning("%s: the mask is all %s: %s", mask_path,
                    *(("background", "the output equals the composite")
                      if not mask.any() else
                      ("foreground", "there is no background to harmonize to")))
  if mask.shape[:2] != composite.shape[:2]:
    raise ValueError(
        f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but composite "
        f"{composite_path} is {composite.shape[1]}x{composite.shape[0]} (WxH)")
  image_io.write_image(output_path, harmonize(networks, composite, mask, config=config))


def _image_files(directory: str) -> list[str]:
  return sorted(f for f in os.listdir(directory)
                if os.path.splitext(f)[1].lower() in image_io.IMAGE_SUFFIXES
                and not f.startswith("."))


def find_mask(stem: str, masks_by_stem: dict[str, list[str]]) -> str:
  """The mask file name for a composite stem.

  The same stem, else the stem without its last '_' field (iHarmony4 names
  composites <real>_<mask>_<k> and masks <real>_<mask>).

  Raises:
    LookupError: no mask, or several masks with that stem.
  """
  for key in (stem, stem.rpartition("_")[0]):
    found = masks_by_stem.get(key, [])
    if len(found) > 1:
      raise LookupError(f"several masks for {stem!r}: {found}")
    if found:
      return found[0]
  raise LookupError(f"no mask named {stem}.* (or {stem.rpartition('_')[0]}.*)")


def harmonize_folder(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                     composite_dir: str, mask_dir: str, output_dir: str,
                     max_pixels: int | None = None
                     ) -> tuple[list[str], list[tuple[str, str]]]:
  """Harmonizes every image of `composite_dir` into `output_dir/<stem>.png`.

  A bad file (unreadable, too large, no mask, size mismatch) is skipped and
  reported, never fatal.

  Returns:
    (written output paths, [(composite path, reason), ...] for skipped files).
  """
  masks_by_stem: dict[str, list[str]] = {}
  for name in _image_files(mask_dir):
    masks_by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
  written, skipped = [], []
  for name in _image_files(composite_dir):
    stem = os.path.splitext(name)[0]
    composite_path = os.path.join(composite_dir, name)
    output_path = os.path.join(output_dir, stem + ".png")
    try:
      mask_path = os.path.join(mask_dir, find_mask(stem, masks_by_stem))
      harmonize_file(config, networks, composite_path, mask_path, output_path, max_pixels)
    except (image_io.ImageError, LookupError, ValueError) as e:
      logging.warning("Skipping %s: %s", composite_path, e)
      skipped.append((composite_path, str(e)))
      continue
    written.append(output_path)
  return written, skipped


def main(argv: list[str]) -> int:
  """The command line (flags from `define_flags`); returns the exit status."""
  f = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metric_writers.quiet_library_logs()
  if bool(f.workdir) == bool(f.checkpoint):
    raise app.UsageError("Give exactly one of --workdir or --checkpoint")
  from harmonax import checkpoint  # pylint: disable=g-import-not-at-top
  config, networks = checkpoint.load_networks(f.workdir or f.checkpoint)

  if f.video or f.frames:
    from harmonax import video  # pylint: disable=g-import-not-at-top
    return video.harmonize_video(config, networks, video=f.video,
                                 frames=f.frames, mask=f.mask,
                                 output=f.output)

  if not (f.composite and f.mask and f.output):
    raise app.UsageError("--composite, --mask and --output are required")
  if os.path.isdir(f.composite):
    if not os.path.isdir(f.mask):
      raise app.UsageError(f"--composite is a folder, so --mask must be one: {f.mask}")
    written, skipped = harmonize_folder(config, networks, f.composite, f.mask,
                                        f.output, f.max_pixels)
    print(f"Harmonized {len(written)} images into {f.output}; skipped {len(skipped)}.")
    for path, reason in skipped:
      print(f"  skipped {path}: {reason}")
    return 1 if skipped else 0
  try:
    harmonize_file(config, networks, f.composite, f.mask, f.output,
                   f.max_pixels)
  except (image_io.ImageError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"Wrote {f.output}")
  return 0


if __name__ == "__main__":
  define_flags()
  # A missing workdir/checkpoint or bad input as one line; --verbose for the traceback.
  cli.run(main, user_errors=(FileNotFoundError, ValueError))
