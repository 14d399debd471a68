r"""Builds a harmonax TFDS dataset as ArrayRecord files, without TensorFlow.

  python -m data_builders.build harmonization_composites/sample --data_dir=/tmp/tfds
  python -m data_builders.build harmonization_composites/coco --manual_dir=~/coco --beam
  python -m data_builders.build iharmony4/all --manual_dir=~/iHarmony4

Data dir: --data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets. With
--beam, examples are made by Apache Beam (DirectRunner with --beam_workers
processes, or any runner given in --beam_pipeline_options). Prints progress
(rate, ETA) and a summary of skipped, converted and rejected inputs. A user
error (unknown name, missing or incomplete manual dir, Beam not installed)
prints one line with the fix and exits with status 1; --verbose adds the
traceback. The library behind it is `data_builders.datasets`.
"""

import logging
import os
import sys
from typing import Sequence

from absl import app
from absl import flags

from data_builders import datasets

_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir (default: "
                                "$TFDS_DATA_DIR, else ~/tensorflow_datasets).")
_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "Folder of the manual download.")
_BEAM = flags.DEFINE_bool("beam", False, "Generate with Apache Beam (pip install .[beam]).")
_BEAM_WORKERS = flags.DEFINE_integer("beam_workers", os.cpu_count() or 1,
                                     "DirectRunner worker processes.")
_BEAM_PIPELINE_OPTIONS = flags.DEFINE_string(
    "beam_pipeline_options", "",
    "Comma-separated Beam options, e.g. 'runner=DataflowRunner,project=P,"
    "region=R,temp_location=gs://B/tmp' (replaces the DirectRunner setup).")
_VERBOSE = flags.DEFINE_bool("verbose", False, "Show the traceback of user errors too.")

_USAGE = ("usage: python -m data_builders.build <dataset>[/<config>] "
          "--data_dir=DIR [--manual_dir=DIR] [--beam]")


def _user_error(error: Exception | str) -> None:
  """Prints `error` on one line (with the traceback under --verbose) and exits with 1."""
  if _VERBOSE.value:
    logging.exception("Build failed")
  print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
  sys.exit(1)


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError(_USAGE)
  name = argv[1]
  try:
    datasets.check_name(name)
  except ValueError as e:  # Only the name is checked here: other ValueErrors are bugs.
    _user_error(e)
  try:
    summary = datasets.build(name, _DATA_DIR.value, _MANUAL_DIR.value, _BEAM.value,
                             beam_workers=_BEAM_WORKERS.value,
                             beam_pipeline_options=_BEAM_PIPELINE_OPTIONS.value,
                             log_summary=False)
  except (FileNotFoundError, ImportError, datasets.BuildInputError) as e:
    # Manual dir problems, Beam missing, nothing usable.
    if isinstance(e, datasets.BuildInputError) and e.details:
      print(e.details, file=sys.stderr)  # The summary of what was skipped.
      e = e.message
    _user_error(e)
  where = datasets.resolve_data_dir(_DATA_DIR.value)
  if summary.already_built:
    print(f"{name} is already built in {where}: left as it was (its inputs were not read "
          "again; remove its folder there, or give another --data_dir, to build anew)")
  else:
    print(f"{name} built in {where}")
  print(summary.format())


if __name__ == "__main__":
  app.run(main)
