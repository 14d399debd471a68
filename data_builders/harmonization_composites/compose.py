"""One composite example from one job: photo + object mask + reference object.

`make_example` is a pure function of the job and the config (its randomness is
seeded from the job's key), so a build gives the same bytes in any order, in
one process or across Beam workers.
"""

import collections
import dataclasses
import functools
import hashlib
import io
import json
import threading
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as coco_mask

from data_builders.harmonization_composites import color_transfer
from data_builders.harmonization_composites import photos
from data_builders.harmonization_composites import record
from data_builders.harmonization_composites.sources import Obj
from data_builders.harmonization_composites.summary import Summary

# Reference pixels kept for the statistics: enough for stable CDFs, fast IDT.
_MAX_REFERENCE_PIXELS = 20_000
# PNG zlib level: 1 is ~4x faster than Pillow's default 6, ~15% larger files; with
# zlib's run-length strategy (Z_RLE) on Pillow's filtered rows, ~1.5x faster again and
# a little smaller on photos.
_PNG_LEVEL = 1
_PNG_STRATEGY = 3  # zlib.Z_RLE


@dataclasses.dataclass(frozen=True)
class Job:
  """One example to make: object `obj` recolored with `reference`'s statistics."""
  key: str
  obj: Obj
  reference: Obj | None
  seed_key: str  # Config name, version and key: the root of every random draw.


def job_to_dict(job: Job) -> dict[str, Any]:
  """A JSON-able form of a job (for Beam workers reading jobs from a file)."""
  return dataclasses.asdict(job)


def job_from_dict(data: dict[str, Any]) -> Job:
  """Inverse of `job_to_dict`."""
  reference = data["reference"]
  return Job(key=data["key"], obj=Obj(**data["obj"]),
             reference=Obj(**reference) if reference else None, seed_key=data["seed_key"])


def rng_for(*parts: Any) -> np.random.Generator:
  """A generator seeded from the parts' text (stable across runs and machines)."""
  digest = hashlib.sha256("/".join(map(str, parts)).encode()).digest()
  return np.random.default_rng(int.from_bytes(digest[:16], "big"))


def encode_png(array: np.ndarray) -> bytes:
  """PNG bytes of a uint8 [H, W, C] array (C = 1 or 3), deterministic."""
  image = Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array)
  out = io.BytesIO()
  image.save(out, format="PNG", compress_level=_PNG_LEVEL, compress_type=_PNG_STRATEGY)
  return out.getvalue()


def object_mask(obj: Obj, summary: Summary, shape: tuple[int, int]) -> np.ndarray | None:
  """The object's bool mask; None (recorded) unless it is non-empty and of `shape`
  (the photo's size as decoded, before any downscaling)."""
  if obj.mask_path is not None:
    mask = photos.read_mask(obj.mask_path, summary)
    if mask is None:
      return None
  else:
    segmentation = obj.segmentation
    if isinstance(segmentation, list):  # Polygons.
      rle = coco_mask.merge(coco_mask.frPyObjects(segmentation, obj.height, obj.width))
    elif isinstance(segmentation.get("counts"), list):  # Uncompressed RLE.
      rle = coco_mask.frPyObjects(segmentation, obj.height, obj.width)
    else:
      rle = segmentation
    mask = coco_mask.decode(rle).astype(bool)
  if mask.shape != tuple(shape):
    summary.add("size_mismatch", obj.mask_path or obj.photo)
    return None
  if not mask.any():
    summary.add("empty_mask", obj.mask_path or f"{obj.photo}#{obj.name}")
    return None
  return mask


@functools.lru_cache(maxsize=16)
def _photo_and_mask(obj: Obj, max_size: int | None) -> tuple[Any, Any, Summary, bytes | None]:
  """Decoded photo, mask, the problems found and the photo file's bytes where they
  decode to the photo exactly (cached: variants share them)."""
  summary = Summary()
  photo, original, encoded = photos.read_photo(obj.photo, summary, max_size)
  if photo is None:
    return None, None, summary, None
  mask = object_mask(obj, summary, original)
  if mask is not None and mask.shape != photo.shape[:2]:
    mask = photos.resize_mask(mask, *photo.shape[:2])
  return photo, mask, summary, encoded


# PNG bytes of recent real photos that must be re-encoded, by (path, max_size):
# the objects and variants of one photo share them. A small LRU: jobs come
# grouped by photo.
_REAL_PNG: collections.OrderedDict = collections.OrderedDict()
_REAL_PNG_SIZE = 4


_REAL_PNG_LOCK = threading.Lock()  # Builds without Beam run jobs in threads.


def _real_bytes(obj: Obj, max_size: int | None, photo: np.ndarray, encoded: bytes | None
                ) -> bytes:
  """The `real` image's bytes: the photo file itself where it decodes to `photo`
  exactly (an 8-bit RGB JPEG or PNG, not rotated, resized or converted: no
  encoding, no generation loss), else a PNG of `photo`."""
  if encoded is not None:
    return encoded
  key = (obj.photo, max_size)
  with _REAL_PNG_LOCK:
    if key in _REAL_PNG:
      _REAL_PNG.move_to_end(key)
      return _REAL_PNG[key]
  data = encode_png(photo)
  with _REAL_PNG_LOCK:
    _REAL_PNG[key] = data
    if len(_REAL_PNG) > _REAL_PNG_SIZE:
      _REAL_PNG.popitem(last=False)
  return data


@functools.lru_cache(maxsize=16)
def _mask_png(obj: Obj, max_size: int | None) -> bytes:
  _, mask, _, _ = _photo_and_mask(obj, max_size)
  return encode_png((mask * np.uint8(255))[..., None])


def _choose_method(methods: tuple[tuple[str, float], ...], rng: np.random.Generator) -> str:
  names = [m for m, _ in methods]
  weights = np.array([w for _, w in methods], np.float64)
  return names[int(rng.choice(len(names), p=weights / weights.sum()))]


def make_example(job: Job, config, summary: Summary
                 ) -> tuple[str, dict[str, Any]] | None:
  """(key, features) of one composite, or None (problems recorded in `summary`).

  The composite is stored as its foreground's bounding box (see record.py):
  `composite_crop`, zero outside the mask, and `composite_box`.
  """
  photo, mask, found, encoded = _photo_and_mask(job.obj, config.max_size)
  summary.merge(found)
  if photo is None or mask is None:
    return None
  reference_pixels = None  # uint8 [M, 3]
  if job.reference is not None:
    ref_photo, ref_mask, ref_found, _ = _photo_and_mask(job.reference, config.max_size)
    summary.merge(ref_found)
    if ref_photo is not None and ref_mask is not None:
      reference_pixels = color_transfer.foreground(ref_photo, ref_mask)
  top, left, height, width = box = record.mask_box(mask)
  inside = np.flatnonzero(mask[top:top + height, left:left + width])
  real_pixels = color_transfer.foreground(photo, mask).astype(np.float64)
  for attempt in range(config.max_attempts):
    rng = rng_for(job.seed_key, attempt)
    methods = config.methods
    if reference_pixels is None or len(reference_pixels) < 16:
      methods = tuple(m for m in methods if m[0] in ("exposure", "filters")) or (
          ("exposure", 1.0),)
    method = _choose_method(methods, rng)
    strength = float(rng.uniform(*config.strength_range))
    ref = reference_pixels
    if ref is not None and len(ref) > _MAX_REFERENCE_PIXELS:
      ref = ref[np.sort(rng.choice(len(ref), _MAX_REFERENCE_PIXELS, replace=False))]
    if ref is not None:
      ref = ref.astype(np.float64) / 255
    pixels, params = color_transfer.recolor_pixels(photo, mask, ref, method, rng, strength)
    recolored = np.round(pixels * 255).astype(np.uint8)
    # fMSE on 0..255 pixels, over the foreground only (the background is unchanged).
    fmse = float(np.mean((recolored - real_pixels) ** 2))
    if fmse < config.min_fmse:
      summary.add("rejected_small_change", job.key)
    elif fmse > config.max_fmse:
      summary.add("rejected_large_change", job.key)
    else:
      if method not in ("exposure", "filters") and job.reference is not None:
        params["reference"] = job.reference.name
      params.update(fmse=round(fmse, 2), attempt=attempt)
      # Only the foreground's box is stored: the background is the real photo's.
      crop = np.zeros((height, width, 3), np.uint8)
      crop.reshape(-1, 3)[inside] = recolored
      return job.key, {
          record.CROP: encode_png(crop),
          record.BOX: np.array(box, np.int32),
          "real": _real_bytes(job.obj, config.max_size, photo, encoded),
          "mask": _mask_png(job.obj, config.max_size),
          "name": job.key,
          "transfer": json.dumps(params, sort_keys=True),
          "category": job.obj.category,
      }
  summary.add("dropped_object_variant", job.key)
  return None
