r"""Harmonizes user images at any resolution with a trained or imported model.

One image (after the quick start):
  python -m harmonax.harmonize --workdir=./workdirs/harmonizer_demo \
      --composite=photo.jpg --mask=photo_mask.png --output=out.png
A folder (masks matched by file stem, or --mask=one_mask.png for all; the
output is <stem>.png, also for one image whose --output is an existing folder):
  python -m harmonax.harmonize --checkpoint=/tmp/converted/issam \
      --composite=comps/ --mask=masks/ --output=out/
Video: --video / --frames are handed to harmonax.video (Harmonizer smooths its
arguments over time; the other models run frame by frame).
Deep Image Compositing (harmonax.compositing) takes the two photos instead of a
composite; the mask (or soft matte) of the foreground photo is optional for
the trained network, which then predicts it:
  python -m harmonax.harmonize --workdir=./workdirs/deep_compositing_runlocal \
      --foreground=object.jpg --background=scene.jpg [--mask=object_mask.png] \
      --output=out.png

Masks are binarized (rules in harmonax.inference.harmonize); the output keeps
every background pixel's bytes (where mask == 0 the output equals the
composite exactly). Write PNG (or WebP, written lossless) to keep them: JPEG is lossy. The library is
harmonax.inference.
"""

import os
import sys

from absl import app
from absl import flags

from harmonax import cli
from harmonax import image_io

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to load the newest checkpoint of.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A checkpoint.save_networks directory.")
_COMPOSITE = flags.DEFINE_string("composite", None, "Composite image file, or a folder of them.")
_MASK = flags.DEFINE_string("mask", None, "Mask file, or a folder of masks with matching stems "
                            "(a folder run also takes one mask file for every image).")
_OUTPUT = flags.DEFINE_string("output", None, "Output file, or folder for folder runs.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", image_io.DEFAULT_MAX_PIXELS,
                                   "Refuse larger images (decompression bombs).")
_FOREGROUND = flags.DEFINE_string(
    "foreground", None, "Deep Image Compositing: the photo holding the object.")
_BACKGROUND = flags.DEFINE_string(
    "background", None, "Deep Image Compositing: the photo to put it in.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Compute dtype of the layers (bfloat16: mixed precision).")
_VIDEO = flags.DEFINE_string("video", None, "Video file to harmonize (harmonax.video).")
_FRAMES = flags.DEFINE_string("frames", None, "Folder of video frames (harmonax.video).")


def main(argv: list[str]) -> int:
  """The command line; returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
    raise app.UsageError("Give exactly one of --workdir or --checkpoint")
  from harmonax import checkpoint  # pylint: disable=g-import-not-at-top
  from harmonax import inference  # pylint: disable=g-import-not-at-top
  from harmonax import models  # pylint: disable=g-import-not-at-top
  output = _OUTPUT.value
  if (output and _COMPOSITE.value and os.path.isfile(_COMPOSITE.value)
      and (os.path.isdir(output) or output.endswith(("/", os.sep)))):
    # One image into an existing folder: <folder>/<stem>.png, as folder runs name it.
    output = os.path.join(output, os.path.splitext(os.path.basename(_COMPOSITE.value))[0] + ".png")
  if output and not (_VIDEO.value or _FRAMES.value):  # (harmonize_video checks its own.)
    # Before the model loads and runs: a file where a folder must be.
    image_io.check_output_path(output, folder=os.path.isdir(_COMPOSITE.value or ""))
  config, networks = checkpoint.load_networks(_WORKDIR.value or _CHECKPOINT.value)
  models.set_compute_dtype(networks, _DTYPE.value)
  warning = inference.demo_warning(config)
  if warning:
    print(f"warning: {warning}", file=sys.stderr)

  if _VIDEO.value or _FRAMES.value:
    from harmonax import video  # pylint: disable=g-import-not-at-top
    return video.harmonize_video(config, networks, video=_VIDEO.value,
                                 frames=_FRAMES.value, mask=_MASK.value,
                                 output=_OUTPUT.value, max_pixels=_MAX_PIXELS.value)

  inputs = models.get_family(config.model.name).INPUTS
  if _FOREGROUND.value or _BACKGROUND.value or "composite" not in inputs:
    return _compose(config, networks, inputs)
  composite, mask = _COMPOSITE.value, _MASK.value
  if not (composite and mask and output):
    raise app.UsageError("--composite, --mask and --output are required")
  if os.path.isdir(composite):
    if not os.path.exists(mask):
      raise app.UsageError(f"--mask {mask} not found (a folder of masks, or one mask for all)")
    written, skipped = inference.harmonize_folder(config, networks, composite, mask,
                                                  output, _MAX_PIXELS.value)
    print(f"Harmonized {len(written)} images into {output}; skipped {len(skipped)}.")
    for path, reason in skipped:
      print(f"  skipped {path}: {reason}")
    return 1 if skipped else 0
  try:
    inference.harmonize_file(config, networks, composite, mask, output, _MAX_PIXELS.value)
  except (image_io.ImageError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"Wrote {output}")
  return 0


def _compose(config, networks, inputs) -> int:
  """--foreground/--background: a compositing model (harmonax.compositing)."""
  if "foreground" not in inputs:
    raise app.UsageError(f"{config.model.name} harmonizes composites: give --composite and "
                         "--mask, not --foreground/--background")
  if _COMPOSITE.value:
    raise app.UsageError(f"{config.model.name} composes two photos: give --foreground and "
                         "--background (and optionally --mask), not --composite")
  if not (_FOREGROUND.value and _BACKGROUND.value and _OUTPUT.value):
    raise app.UsageError("--foreground, --background and --output are required")
  from harmonax import compositing  # pylint: disable=g-import-not-at-top
  try:
    compositing.compose_file(config, networks, _FOREGROUND.value, _BACKGROUND.value,
                             _MASK.value, _OUTPUT.value, _MAX_PIXELS.value)
  except (image_io.ImageError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"Wrote {_OUTPUT.value}")
  return 0


if __name__ == "__main__":
  # Missing workdir/checkpoint or files, bad masks: one line (--verbose for the traceback).
  cli.run(main, user_errors=(FileNotFoundError, ValueError))
