r"""Builds a harmonax TFDS dataset as ArrayRecord files, without TensorFlow.

  python -m data_builders.build harmonization_composites/sample --data_dir=/tmp/tfds
  python -m data_builders.build harmonization_composites/coco --manual_dir=~/coco --beam
  python -m data_builders.build iharmony4/all --manual_dir=~/iHarmony4

The builder module (`data_builders/<dataset>/<dataset>_dataset_builder.py`) is
imported directly: `tfds build` would import TensorFlow. Data dir: --data_dir,
else $TFDS_DATA_DIR, else ~/tensorflow_datasets. With --beam, examples are made
by Apache Beam (DirectRunner with --beam_workers processes, or any runner given
in --beam_pipeline_options). Prints progress (rate, ETA) and a summary of
skipped, converted and rejected inputs.
"""

import functools
import importlib
import logging
import os
import sys
from typing import Sequence

from absl import app
from absl import flags
import tensorflow_datasets as tfds
import tqdm

from data_builders.harmonization_composites.summary import Summary

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


def resolve_data_dir(data_dir: str | None) -> str:
  """--data_dir, else $TFDS_DATA_DIR, else ~/tensorflow_datasets (the input pipeline's rule)."""
  try:
    from harmonax import input_pipeline  # pylint: disable=g-import-not-at-top
    return input_pipeline.resolve_data_dir(data_dir)
  except ImportError:  # The input pipeline needs grain/jax; the rule is simple.
    return os.path.expanduser(
        data_dir or os.environ.get("TFDS_DATA_DIR") or "~/tensorflow_datasets")


def builder_class(dataset: str) -> type[tfds.core.DatasetBuilder]:
  """The `Builder` class of data_builders/<dataset>/<dataset>_dataset_builder.py.

  Raises:
    ValueError: unknown dataset, naming the ones in data_builders/.
  """
  try:
    module = importlib.import_module(f"data_builders.{dataset}.{dataset}_dataset_builder")
  except ModuleNotFoundError as e:
    if not e.name or not e.name.startswith(f"data_builders.{dataset}"):
      raise
    root = os.path.dirname(os.path.abspath(__file__))
    known = sorted(d for d in os.listdir(root)
                   if os.path.exists(os.path.join(root, d, f"{d}_dataset_builder.py")))
    raise ValueError(f"Unknown dataset {dataset!r}; valid: {known}") from None
  return module.Builder


def _beam_options(workers: int, pipeline_options: str):
  try:
    from apache_beam.options import pipeline_options as beam_options  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("--beam needs Apache Beam: pip install -e .[beam] (in its own "
                      "virtualenv: Beam pins protobuf and pyarrow back)") from None
  if pipeline_options:
    args = [f"--{kv.strip()}" for kv in pipeline_options.split(",") if kv.strip()]
  else:
    args = ["--runner=DirectRunner", f"--direct_num_workers={workers}",
            "--direct_running_mode=multi_processing"]
  return beam_options.PipelineOptions(flags=args)


def _with_progress(generate_examples):
  """Wraps a builder's _generate_examples(inputs: list, ...): a bar with rate and ETA."""
  @functools.wraps(generate_examples)
  def wrapper(*args, **kwargs):
    inputs = next((a for a in list(args) + list(kwargs.values())
                   if isinstance(a, (list, tuple))), None)
    split = next((a for a in list(args) + list(kwargs.values()) if isinstance(a, str)), "")
    # Counts examples against the number of inputs: an upper bound when some
    # inputs are skipped, so the ETA errs on the long side.
    with tqdm.tqdm(total=len(inputs) if inputs is not None else None,
                   desc=f"Building {split}".strip(), unit=" examples", mininterval=1.0,
                   file=sys.stderr) as bar:
      for key, example in generate_examples(*args, **kwargs):
        bar.update(1)
        yield key, example
  return wrapper


def build(name: str, data_dir: str | None, manual_dir: str | None = None,
          beam: bool = False, *, beam_workers: int | None = None,
          beam_pipeline_options: str = "") -> Summary:
  """Builds `name` ('<dataset>[/<config>]') into the data dir; returns the summary.

  A dataset that is already built is left as it is (the summary then only
  has the example counts).

  Raises:
    ValueError: unknown dataset or config (naming the valid ones).
    FileNotFoundError: a manual dir that lacks what the config needs.
  """
  dataset, _, config = name.partition(":")[0].partition("/")
  cls = builder_class(dataset)
  configs = [c.name for c in getattr(cls, "BUILDER_CONFIGS", [])]
  if config and config not in configs:
    raise ValueError(f"Unknown config {config!r} of dataset {dataset!r}; valid: {configs}")
  data_dir = resolve_data_dir(data_dir)
  builder = cls(config=config or None, data_dir=data_dir, file_format="array_record")
  if not beam:
    builder._generate_examples = _with_progress(builder._generate_examples)  # pylint: disable=protected-access
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None,
      beam_options=_beam_options(beam_workers or os.cpu_count() or 1,
                                 beam_pipeline_options) if beam else None)
  already = builder.is_prepared()
  builder.download_and_prepare(download_config=download_config)
  collect = getattr(builder, "collect_summary", None)
  summary = collect() if collect and not already else Summary()
  for split, info in builder.info.splits.items():
    summary.examples[split] = info.num_examples
  where = f"{builder.data_dir}" + (" (already built)" if already else "")
  logging.info("%s -> %s\n%s", name, where, summary.format())
  return summary


def main(argv: Sequence[str]) -> None:
  if len(argv) != 2:
    raise app.UsageError("usage: python -m data_builders.build <dataset>[/<config>] "
                         "--data_dir=DIR [--manual_dir=DIR] [--beam]")
  tfds.disable_progress_bar()  # Ours (per input, with ETA) replaces TFDS' bars.
  summary = build(argv[1], _DATA_DIR.value, _MANUAL_DIR.value, _BEAM.value,
                  beam_workers=_BEAM_WORKERS.value,
                  beam_pipeline_options=_BEAM_PIPELINE_OPTIONS.value)
  print(f"{argv[1]} built in {resolve_data_dir(_DATA_DIR.value)}")
  print(summary.format())


if __name__ == "__main__":
  app.run(main)
