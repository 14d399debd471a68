"""Harmonization of user images at any resolution, as a library.

`harmonize` takes arrays, `harmonize_file` / `harmonize_folder` files; the
command line is `harmonax.harmonize`. Masks are binarized (rules in
`harmonize`); the model sees the binary mask, and for families whose task
keeps the background (`PRESERVES_BACKGROUND`) every background pixel of the
output equals the composite's bytes.
"""

from collections.abc import Callable
import functools
import os

from absl import logging
from flax import nnx
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmonax import image_io
from harmonax import models


@functools.lru_cache(maxsize=16)
def jitted_predict(config: ml_collections.FrozenConfigDict) -> Callable:
  """nnx.jit((networks, inputs) -> prediction) of config's family; compiled
  shapes are cached by jit (one compilation per image size and batch)."""
  family = models.get_family(config.model.name)
  return nnx.jit(functools.partial(family.predict, config))


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
    The harmonized image in the composite's layout: uint8 for uint8 input
    (rounded to the nearest level; the official DoveNet, BargainNet and
    Harmonizer scripts truncate, at most one level lower), float32 in [0, 1]
    otherwise. Where the mask is background, the output equals the composite
    exactly (families whose task keeps the background).

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
  pred = jitted_predict(ml_collections.FrozenConfigDict(config))(
      networks, {"composite": jnp.asarray(comp01), "mask": jnp.asarray(fg, jnp.float32)})
  pred = np.clip(np.asarray(pred, np.float32), 0.0, 1.0)
  if not models.get_family(config.model.name).PRESERVES_BACKGROUND:
    out = np.round(pred * 255.0).astype(np.uint8) if is_uint8 else pred
    return out[0] if single else out
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


