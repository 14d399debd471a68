r"""Harmonizes user images at any resolution with a trained or imported model.

One image (after the quick start):
  python -m harmonax.harmonize --workdir=./workdirs/bargainnet_runlocal \
      --composite=photo.jpg --mask=photo_mask.png --output=out.png
A folder (masks matched by file stem; the output is <stem>.png):
  python -m harmonax.harmonize --checkpoint=/tmp/converted/issam \
      --composite=comps/ --mask=masks/ --output=out/
Video (Harmonizer): --video / --frames are handed to harmonax.video.

Masks are binarized (rules in harmonax.inference.harmonize); the output keeps
every background pixel's bytes (where mask == 0 the output equals the
composite exactly). Write PNG to keep them: JPEG is lossy. The library is
harmonax.inference.
"""

import os
import sys

from absl import app
from absl import flags

from harmonax import cli
from harmonax import image_io
from harmonax import metric_writers

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir to load the newest checkpoint of.")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A checkpoint.save_networks directory.")
_COMPOSITE = flags.DEFINE_string("composite", None, "Composite image file, or a folder of them.")
_MASK = flags.DEFINE_string("mask", None, "Mask file, or a folder of masks with matching stems.")
_OUTPUT = flags.DEFINE_string("output", None, "Output file, or folder for folder runs.")
_MAX_PIXELS = flags.DEFINE_integer("max_pixels", image_io.DEFAULT_MAX_PIXELS,
                                   "Refuse larger images (decompression bombs).")
_VIDEO = flags.DEFINE_string("video", None, "Video file to harmonize (harmonax.video).")
_FRAMES = flags.DEFINE_string("frames", None, "Folder of video frames (harmonax.video).")


def main(argv: list[str]) -> int:
  """The command line; returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metric_writers.quiet_library_logs()
  if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
    raise app.UsageError("Give exactly one of --workdir or --checkpoint")
  from harmonax import checkpoint  # pylint: disable=g-import-not-at-top
  from harmonax import inference  # pylint: disable=g-import-not-at-top
  config, networks = checkpoint.load_networks(_WORKDIR.value or _CHECKPOINT.value)
  warning = inference.demo_warning(config)
  if warning:
    print(f"warning: {warning}", file=sys.stderr)

  if _VIDEO.value or _FRAMES.value:
    from harmonax import video  # pylint: disable=g-import-not-at-top
    return video.harmonize_video(config, networks, video=_VIDEO.value,
                                 frames=_FRAMES.value, mask=_MASK.value,
                                 output=_OUTPUT.value)

  composite, mask, output = _COMPOSITE.value, _MASK.value, _OUTPUT.value
  if not (composite and mask and output):
    raise app.UsageError("--composite, --mask and --output are required")
  if os.path.isdir(composite):
    if not os.path.isdir(mask):
      raise app.UsageError(f"--composite is a folder, so --mask must be one: {mask}")
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


if __name__ == "__main__":
  # Missing workdir/checkpoint or files, bad masks: one line (--verbose for the traceback).
  cli.run(main, user_errors=(FileNotFoundError, ValueError))
