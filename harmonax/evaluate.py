r"""Evaluates a model with the iHarmony4 protocol: the paper table and per-image CSV.

  python -m harmonax.evaluate --workdir=./workdirs/bargainnet_runlocal
  python -m harmonax.evaluate --checkpoint=/tmp/issam_official --dataset=iharmony4/all \
      [--background=output|pasted] [--psnr_peak=real_max|pred_range|255] \
      [--ssim=gaussian11|gaussian7|uniform7] [--image_size=256 | 0 for full resolution] \
      [--bucket=0] [--save_images=DIR] [--max_examples=N] [--data_dir=D] [--split=test]

Defaults come from the checkpoint's config (config.eval: the protocol its paper
used; its first evaluation set's dataset and size). The table says which PSNR
peak, SSIM window and background it used; the model's image is scored as it
comes out unless --background=pasted. Writes <output_dir>/eval_<dataset>_<split>_<size>.{md,csv}
(output_dir defaults to the workdir/checkpoint directory), the name extended by
what differs from the config's protocol or the whole split (e.g. `_peak-255`,
`_first100`, `_bucket64`, `_bfloat16`), and adds the 'All' row under the same description to
the model card. The library is harmonax.evaluation.
"""

import os
import sys
import time

from absl import app
from absl import flags
from absl import logging

from harmonax import cli
from harmonax import metric_writers

_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir (newest restorable step).")
_CHECKPOINT = flags.DEFINE_string("checkpoint", None, "A checkpoint.save_networks directory.")
_DATASET = flags.DEFINE_string("dataset", None, "TFDS name, e.g. iharmony4/all (default: the config's).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir.")
_SPLIT = flags.DEFINE_string("split", None, "Split to evaluate (default: the config's eval split).")
_SAVE_IMAGES = flags.DEFINE_string("save_images", None, "Write the scored predictions as PNGs here.")
_PSNR_PEAK = flags.DEFINE_enum("psnr_peak", None, ["real_max", "pred_range", "255"],
                               "Default: config.eval.psnr_peak.")
_SSIM = flags.DEFINE_enum("ssim", None, ["gaussian11", "gaussian7", "uniform7"],
                          "Default: config.eval.ssim.")
_BACKGROUND = flags.DEFINE_enum("background", None, ["output", "pasted"],
                                "Score the model output as is, or with the composite's "
                                "background pasted back. Default: config.eval.background.")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None,
                                   "Evaluation resize; 0: full resolution. Default: the "
                                   "config's first evaluation set.")
_BUCKET = flags.DEFINE_integer("bucket", 0, "Full resolution: pad to multiples of this "
                               "(metrics ignore the padding) so few shapes compile; 0: exact shapes.")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", -1,
                                     "Evaluate at most this many; -1 (or 0): all.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 0, "Batch size; 0: the config's.")
_DTYPE = flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"],
                           "Compute dtype of the layers (bfloat16: mixed precision).")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Where the table and CSV go.")


def _check_writable(directory: str) -> None:
  """Fails now if the results could not be written to `directory` later;
  creates nothing (a mistyped --workdir must not leave a folder behind)."""
  from harmonax import image_io  # pylint: disable=g-import-not-at-top
  try:
    image_io.check_output_path(directory, folder=True)
  except image_io.OutputPathError as e:
    raise cli.UserError(f"cannot write the results to {directory} ({e}): pass a "
                        "writable --output_dir") from e


def _qualifiers(default, protocol, max_examples: int, count: int, dtype: str, bucket: int
                ) -> list[tuple[str, str]]:
  """(file name part, description) of each way a run differs from the full
  split scored with the config's protocol in float32."""
  out = []
  if protocol.psnr_peak != default.psnr_peak:
    out.append((f"peak-{protocol.psnr_peak}", f"PSNR peak {protocol.psnr_peak}"))
  if protocol.ssim != default.ssim:
    out.append((f"ssim-{protocol.ssim}", f"SSIM {protocol.ssim}"))
  if protocol.background != default.background:
    out.append((f"bg-{protocol.background}", f"background {protocol.background}"))
  if 0 < max_examples <= count:  # The cap cut the split short (or just fit it).
    out.append((f"first{count}", f"first {count} examples"))
  if bucket:
    out.append((f"bucket{bucket}", f"padded to multiples of {bucket}"))
  if dtype != "float32":
    out.append((dtype, dtype))
  return out


def main(argv: list[str]) -> int:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if bool(_WORKDIR.value) == bool(_CHECKPOINT.value):
    raise app.UsageError("Give exactly one of --workdir or --checkpoint")
  # Imported here so that --help answers at once.
  import jax  # pylint: disable=g-import-not-at-top
  from harmonax import checkpoint  # pylint: disable=g-import-not-at-top
  from harmonax import evaluation  # pylint: disable=g-import-not-at-top
  from harmonax import models  # pylint: disable=g-import-not-at-top
  if jax.process_count() > 1:
    raise app.UsageError("harmonax.evaluate runs on one host; use evaluation.evaluate_sets on pods")
  source = _WORKDIR.value or _CHECKPOINT.value
  output_dir = _OUTPUT_DIR.value or source
  _check_writable(output_dir)  # Now, not after the whole evaluation.
  started = time.monotonic()
  with metric_writers.Phase(f"loading the networks from {source}"):
    config, networks, step = checkpoint.load_networks(source, return_step=True)
    models.set_compute_dtype(networks, _DTYPE.value)
  sets = evaluation.eval_sets(config)
  data_config, split, _ = next(iter(sets.values())) if sets else (config.data, None, -1)
  data_config = data_config.copy_and_resolve_references()
  split = _SPLIT.value or split or config.data.eval_split
  if _DATASET.value:
    data_config.name = _DATASET.value
  if _DATA_DIR.value:
    data_config.data_dir = _DATA_DIR.value
  if _IMAGE_SIZE.value is not None:
    data_config.image_size = _IMAGE_SIZE.value or None
  data_config.max_eval_examples = _MAX_EXAMPLES.value
  if _BUCKET.value and data_config.image_size:
    raise app.UsageError(f"--bucket pads full-resolution images; this evaluation resizes to "
                         f"{data_config.image_size} (pass --image_size=0)")
  protocol = evaluation.protocol_of(config, psnr_peak=_PSNR_PEAK.value, ssim=_SSIM.value,
                                    background=_BACKGROUND.value)
  batch_size = _BATCH_SIZE.value or config.get("batch_size", 8)

  records = []
  # Reading the data and compiling are the silent part: done at the first result.
  starting = metric_writers.Phase(
      f"reading {data_config.name} {split} and compiling the evaluation step").start()
  for record in evaluation.iterate_records(config, networks, data_config, split, batch_size,
                                           protocol, _SAVE_IMAGES.value, _BUCKET.value):
    starting.done()
    records.append(record)
    if len(records) % 500 == 0:
      logging.info("Evaluated %d examples (%.0f s)", len(records), time.monotonic() - started)
  starting.done()
  if not records:
    print(f"error: no examples in {data_config.name} split {split!r}", file=sys.stderr)
    return 1
  extra = tuple(sorted(set(records[0]) - set(evaluation.COLUMNS) - {"name", "subset"}
                       - {evaluation.COMPOSITE_PREFIX + k for k in evaluation.COLUMNS}))
  size = (f"{data_config.image_size}x{data_config.image_size}" if data_config.image_size
          else "full resolution")
  from harmonax import model_card  # pylint: disable=g-import-not-at-top
  where = source if step is None else f"{source}, step {step}"
  title = f"{model_card.model_name(config)} ({where}) on {data_config.name} {split}, {size}"
  table = evaluation.format_table(records, protocol, title, extra)
  print(table)
  # Runs that score differently from the config's protocol, or part of the
  # split, get their own files and card entry instead of replacing the run's.
  qualifiers = _qualifiers(evaluation.protocol_of(config), protocol, _MAX_EXAMPLES.value,
                           len(records), _DTYPE.value, _BUCKET.value)
  stem = (f"{checkpoint.EVAL_FILE_PREFIX}{data_config.name.replace('/', '_')}_{split}_"
          f"{data_config.image_size or 'full'}"
          + "".join(f"_{short}" for short, _ in qualifiers))
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, stem + ".md"), "w", encoding="utf-8") as out:
    out.write(table)
  evaluation.write_csv(os.path.join(output_dir, stem + ".csv"), records)
  print(f"Wrote {os.path.join(output_dir, stem)}.md and .csv")
  # The model card (if the checkpoint has one) keeps the 'All' row of each evaluation.
  described = f" ({', '.join(long for _, long in qualifiers)})" if qualifiers else ""
  # A workdir's card names the step scored: training on makes the entry stale.
  at_step = {} if step is None else {"step": int(step)}
  model_card.update_metrics(source, f"{data_config.name} {split} {size}{described}",
                            {**evaluation.summarize(records)["All"], **at_step})
  return 0


if __name__ == "__main__":
  # Missing workdir/checkpoint, unbuilt or unknown dataset, bad settings: one line
  # (every ValueError here is about the inputs; --verbose for the traceback).
  cli.run(main, user_errors=(FileNotFoundError, ValueError))
