"""How a composite example is stored: the recolored foreground's box, rebuilt on reading.

A composite differs from its real photo only inside the object mask, so the
record keeps `real` and `mask` whole and, for the composite, only
`composite_crop` (the mask's bounding box, recolored pixels inside the mask and
zeros outside) and `composite_box` (top, left, height, width). Encoding one
full-size PNG less per example is what makes generation fast.

Readers see the same `composite` as before: `CompositeFeatures`, the
dataset's top-level feature (recorded in features.json, so
`tfds.builder_from_directory` uses it too), rebuilds it on decoding as
`where(mask > 127, crop at box, real)`, so the background is the decoded
`real` exactly, whatever decoder read it. Readers that skip image decoding
(harmonax's input pipeline) call `rebuild_composite` themselves.
"""

from typing import Any

import numpy as np
import tensorflow_datasets as tfds

CROP = "composite_crop"
BOX = "composite_box"


def mask_box(mask: np.ndarray) -> tuple[int, int, int, int]:
  """(top, left, height, width) of the bounding box of a non-empty bool mask [H, W]."""
  rows = np.flatnonzero(mask.any(axis=1))
  cols = np.flatnonzero(mask.any(axis=0))
  top, left = int(rows[0]), int(cols[0])
  return top, left, int(rows[-1]) + 1 - top, int(cols[-1]) + 1 - left


def rebuild_composite(real: np.ndarray, crop: np.ndarray, box: Any, mask: np.ndarray
                      ) -> np.ndarray:
  """The full composite: `real` with `crop` at `box` wherever `mask` is foreground.

  Args:
    real: uint8 [H, W, 3].
    crop: uint8 [h, w, 3], the composite inside the box.
    box: (top, left, h, w).
    mask: uint8 [H, W] or [H, W, 1], foreground > 127 (or bool).

  Raises:
    ValueError: a box outside the image or a crop of another size.
  """
  top, left, h, w = (int(v) for v in np.asarray(box).reshape(4))
  height, width = real.shape[:2]
  if (top < 0 or left < 0 or top + h > height or left + w > width
      or crop.shape[:2] != (h, w)):
    raise ValueError(f"composite crop {crop.shape[1]}x{crop.shape[0]} at box (top, left, "
                     f"height, width) {(top, left, h, w)} does not fit the "
                     f"{width}x{height} real image")
  mask = mask.reshape(mask.shape[:2])
  inside = mask[top:top + h, left:left + w]
  inside = inside if inside.dtype == bool else inside > 127
  composite = real.copy()
  np.copyto(composite[top:top + h, left:left + w], crop, where=inside[..., None])
  return composite


class CompositeFeatures(tfds.features.FeaturesDict):
  """A FeaturesDict that decodes `composite_crop` + `composite_box` into `composite`.

  Examples decode to the features that every harmonax dataset shares
  (`composite`, `real`, `mask`, ...): the crop and box are replaced by the
  rebuilt composite. When a decoder skips decoding of the crop, real or mask,
  the stored fields are returned as they are.
  """

  def get_tensor_info(self):
    info = dict(super().get_tensor_info())
    if CROP in info:
      info["composite"] = info.pop(CROP)
      info.pop(BOX, None)
    return info

  def decode_example_np(self, serialized_example, *, decoders=None):
    example = super().decode_example_np(serialized_example, decoders=decoders)
    images = [example.get(k) for k in (CROP, "real", "mask")]
    if all(isinstance(v, np.ndarray) and v.dtype == np.uint8 for v in images):
      example["composite"] = rebuild_composite(example["real"], example.pop(CROP),
                                               example.pop(BOX), example["mask"])
    return example

  def decode_example(self, serialized_example, *, decoders=None):
    example = super().decode_example(serialized_example, decoders=decoders)
    from tensorflow_datasets.core.utils.lazy_imports_utils import tensorflow as tf  # pylint: disable=g-import-not-at-top
    images = [example.get(k) for k in (CROP, "real", "mask")]
    if all(getattr(v, "dtype", None) == tf.uint8 for v in images):
      crop, box, real = example.pop(CROP), tf.cast(example.pop(BOX), tf.int32), example["real"]
      shape = tf.shape(real)
      placed = tf.pad(crop, [[box[0], shape[0] - box[0] - box[2]],
                             [box[1], shape[1] - box[1] - box[3]], [0, 0]])
      example["composite"] = tf.where(example["mask"] > 127, placed, real)
    return example
