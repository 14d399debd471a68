"""Finding, naming and building harmonax's TFDS datasets (the library behind the build CLI).

`build()` makes a dataset as ArrayRecord files without TensorFlow: the builder
module (`data_builders/<dataset>/<dataset>_dataset_builder.py`) is imported
directly, because `tfds build` would import TensorFlow. The input pipeline
(`harmonax.input_pipeline`) uses the same functions to find built datasets,
to name the command that builds a missing one and to build the sample set on
first use. Nothing here defines flags or imports harmonax.
"""

import contextlib
import functools
import importlib
import logging
import os
import re
import sys
from typing import Iterator

import tensorflow_datasets as tfds
import tqdm

from data_builders.harmonization_composites.summary import Summary

# The default dataset, which needs no download: its photos ship in the repository.
SAMPLE = "harmonization_composites/sample"
# Every dataset that needs no download (built from the same photos).
EMBEDDED = (SAMPLE, "compositing_triplets/sample")


def resolve_data_dir(data_dir: str | None) -> str:
  """The TFDS data dir: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if data_dir:
    return os.path.expanduser(data_dir)
  env = os.environ.get("TFDS_DATA_DIR")
  if env:
    return os.path.expanduser(env)
  return os.path.expanduser(os.path.join("~", "tensorflow_datasets"))


def known_datasets() -> list[str]:
  """The datasets with a builder in data_builders/ (`<name>/<name>_dataset_builder.py`)."""
  root = os.path.dirname(os.path.abspath(__file__))
  return sorted(d for d in os.listdir(root)
                if os.path.exists(os.path.join(root, d, f"{d}_dataset_builder.py")))


class BuildInputError(ValueError):
  """Manual data a build cannot use (a malformed list, nothing usable); the
  message names the file. `details`: the summary of what was skipped, if any
  (also in str(error), after the message)."""

  def __init__(self, message: str, details: str = ""):
    super().__init__(f"{message}\n{details}" if details else message)
    self.message, self.details = message, details


def builder_class(dataset: str) -> type[tfds.core.DatasetBuilder]:
  """The `Builder` class of data_builders/<dataset>/<dataset>_dataset_builder.py.

  Raises:
    ValueError: unknown dataset, naming the ones in data_builders/.
  """
  if dataset not in known_datasets():
    raise ValueError(f"Unknown dataset {dataset!r}; valid: {known_datasets()}")
  module = importlib.import_module(f"data_builders.{dataset}.{dataset}_dataset_builder")
  return module.Builder


def split_name(name: str) -> tuple[str, str]:
  """('dataset', 'config') of '<dataset>[/<config>][:<version>]'."""
  dataset, _, config = name.partition(":")[0].partition("/")
  return dataset, config


def check_name(name: str) -> type[tfds.core.DatasetBuilder]:
  """The builder class of `name` after checking its dataset and config names.

  Raises:
    ValueError: unknown dataset or config, naming the valid ones.
  """
  dataset, config = split_name(name)
  cls = builder_class(dataset)
  configs = [c.name for c in getattr(cls, "BUILDER_CONFIGS", [])]
  if configs and config and config not in configs:
    raise ValueError(f"Unknown config {config!r} of dataset {dataset!r}; valid: {configs}")
  return cls


def needs_manual_dir(name: str) -> bool:
  """Whether building `name` reads a manual download (all but the EMBEDDED samples)."""
  cls = builder_class(split_name(name)[0])
  return bool(getattr(cls, "MANUAL_DOWNLOAD_INSTRUCTIONS", None)) and (
      name.partition(":")[0] not in EMBEDDED)


def build_command(name: str, data_dir: str) -> str:
  """The shell command that builds dataset `name` into `data_dir`."""
  command = f"python -m data_builders.build {name} --data_dir={data_dir}"
  try:
    if needs_manual_dir(name):
      command += " --manual_dir=<folder of the manual download>"
  except ValueError:  # Unknown dataset: the command is still the best hint.
    pass
  return command


def find_built(name: str, data_dir: str) -> str | None:
  """The newest complete version directory of `name` (`dataset/config[:version]`), or None."""
  name, _, version = name.partition(":")
  base = os.path.join(data_dir, *name.split("/"))
  # Only finished versions: TFDS writes into `incomplete.*` folders and renames them.
  versions = [version] if version else sorted(
      (v for v in (os.listdir(base) if os.path.isdir(base) else [])
       if re.fullmatch(r"\d+\.\d+\.\d+", v)),
      key=lambda v: tuple(map(int, v.split("."))))
  for v in reversed(versions):
    if os.path.exists(os.path.join(base, v, "dataset_info.json")):
      return os.path.join(base, v)
  return None


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


class _TfdsChatter(logging.Filter):
  """Drops TFDS' info lines and its warning about the folder it is about to fill."""

  def filter(self, record: logging.LogRecord) -> bool:
    if "tensorflow_datasets" not in record.pathname:
      return True
    if record.levelno <= logging.INFO:  # "Generating dataset ...": ours says it.
      return False
    return not str(record.msg).startswith("Variant folder")


@contextlib.contextmanager
def _tfds_quiet() -> Iterator[None]:
  """Without TFDS' own progress bars and chatter (our bar, per input with an ETA, and
  our one line replace them)."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  active = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  chatter = _TfdsChatter()
  logger = logging.getLogger("absl")  # TFDS logs through absl.logging.
  logger.addFilter(chatter)
  try:
    yield
  finally:
    logger.removeFilter(chatter)
    tfds.display_progress_bar(active)


def build(name: str, data_dir: str | None, manual_dir: str | None = None,
          beam: bool = False, *, beam_workers: int | None = None,
          beam_pipeline_options: str = "", log_summary: bool = True) -> Summary:
  """Builds `name` ('<dataset>[/<config>]') into the data dir; returns the summary.

  A dataset that is already built is left as it is (the summary then only
  has the example counts). Logs one line when it starts and, with
  `log_summary`, the summary once when it ends.

  Raises:
    ValueError: unknown dataset or config (naming the valid ones).
    FileNotFoundError: no manual dir where the config needs one, or one that
      lacks what the config needs (naming what is missing).
    ImportError: --beam without Apache Beam installed.
    BuildInputError: manual data that the builder cannot use, or none of it.
  """
  cls = check_name(name)
  _, config = split_name(name)
  if needs_manual_dir(name) and not (manual_dir and os.path.isdir(os.path.expanduser(manual_dir))):
    what = (f"the manual dir {manual_dir!r} does not exist" if manual_dir
            else "it needs --manual_dir")
    instructions = " ".join(cls.MANUAL_DOWNLOAD_INSTRUCTIONS.split())
    raise FileNotFoundError(f"Cannot build {name}: {what}. {instructions}")
  data_dir = resolve_data_dir(data_dir)
  with _tfds_quiet():
    builder = cls(config=config or None, data_dir=data_dir, file_format="array_record")
  source = (f"from {os.path.expanduser(manual_dir)}" if manual_dir and needs_manual_dir(name)
            else "from the photos in data_builders/ (no download)")
  # TFDS would print "Downloading and preparing dataset Unknown size ..." and
  # "... downloaded and prepared": nothing is downloaded. One line instead.
  builder._log_download_bytes = lambda: logging.info(  # pylint: disable=protected-access
      "Building %s %s into %s", name, source, builder.data_dir)
  builder._log_download_done = lambda: None  # pylint: disable=protected-access
  if not beam:
    builder._generate_examples = _with_progress(builder._generate_examples)  # pylint: disable=protected-access
  download_config = tfds.download.DownloadConfig(
      manual_dir=os.path.expanduser(manual_dir) if manual_dir else None,
      beam_options=_beam_options(beam_workers or os.cpu_count() or 1,
                                 beam_pipeline_options) if beam else None)
  collect = getattr(builder, "collect_summary", None)
  with _tfds_quiet():
    already = builder.is_prepared()
    try:
      builder.download_and_prepare(download_config=download_config)
    except AssertionError as e:  # TFDS: "No examples were yielded."
      if "No examples were yielded" not in str(e):
        raise
      skipped = collect().format() if collect else ""
      raise BuildInputError(
          f"Cannot build {name}: no example survived (nothing written); what was "
          "skipped and why is listed above", skipped) from None
  summary = collect() if collect and not already else Summary()
  summary.already_built = already
  for split, info in builder.info.splits.items():
    summary.examples[split] = info.num_examples
  if log_summary:
    where = f"{builder.data_dir}" + (" (already built)" if already else "")
    logging.info("%s -> %s\n%s", name, where, summary.format())
  return summary
