r"""Exports a model to ONNX or StableHLO: one graph from composite and mask to the output.

  python -m harmonax.export --checkpoint=/tmp/issam_official --format=onnx \
      --output=/tmp/issam.onnx --height=256 --width=256 [--input_dtype=uint8|float32]
  python -m harmonax.export --checkpoint=/tmp/issam_official --format=stablehlo \
      --output=/tmp/exports/ --dynamic

The graph does what `harmonax.harmonize` does (mask binarization, normalization,
padding or internal resizing, the network, clamping, background pasting).
Inputs: composite [B,H,W,3] and mask [B,H,W,1] in --input_dtype (uint8 0..255,
or float32 in [0, 1]); output `harmonized` of the same dtype. An --output
ending in '/' (or an existing directory) gets a name with the model, size and
dtype. A `<file>.json` beside it records versions, license and source. The
library is harmonax.export_lib.
"""

import sys

from absl import app
from absl import flags

from harmonax import cli


_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A convert/save_networks directory or a "
                                  "training workdir.")
_FORMAT = flags.DEFINE_enum("format", None, ["onnx", "stablehlo"], "Export format.")
_OUTPUT = flags.DEFINE_string("output", None, "File to write, or a directory ending in '/'.")
_HEIGHT = flags.DEFINE_integer("height", None, "Fixed input height (with --width).")
_WIDTH = flags.DEFINE_integer("width", None, "Fixed input width (with --height).")
_DYNAMIC = flags.DEFINE_boolean("dynamic", False, "Any height and width (where the model's "
                                "operations allow it).")
_INPUT_DTYPE = flags.DEFINE_enum("input_dtype", "float32", ["uint8", "float32"],
                                 "Input and output dtype: uint8 0..255 or float32 in [0, 1].")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for flag in (_CHECKPOINT, _FORMAT, _OUTPUT):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required")
  sized = _HEIGHT.value is not None and _WIDTH.value is not None
  if _DYNAMIC.value == sized or (_HEIGHT.value is None) != (_WIDTH.value is None):
    raise app.UsageError("Give --height and --width, or --dynamic")
  from harmonax import export_lib  # pylint: disable=g-import-not-at-top
  try:
    path, sidecar = export_lib.export(_CHECKPOINT.value, _FORMAT.value, _OUTPUT.value,
                                      _HEIGHT.value, _WIDTH.value, _INPUT_DTYPE.value)
  except export_lib.ExportError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(f"Wrote {path} and {sidecar}")
  return 0


if __name__ == "__main__":
  # Missing checkpoint, no jax2onnx: one line (as are bad sizes, formats and
  # output paths, cli.UserErrors); --verbose for the traceback.
  cli.run(main, user_errors=(FileNotFoundError, ImportError))
