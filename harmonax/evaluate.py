r"""Evaluation with the iHarmony4 protocol: the paper table and per-image CSV.

  python -m harmonax.evaluate --workdir=/tmp/issam --dataset=iharmony4/all \
      [--config=configs/issam.py] [--data_dir=D] [--split=test] \
      [--save_images=DIR] [--psnr_peak=real_max] [--ssim=gaussian11] \
      [--image_size=256 | 0 for full resolution] [--max_examples=N]

Metrics (harmonax.metrics) are computed per image on 0..255 pixels, on the
prediction clipped to [0, 1] (not quantized to 8 bits), then averaged over
images; "All" is image-weighted. The same code scores the input composite as
the identity "composite" row. Padding rows of the last batch are never counted.
Writes <output_dir>/eval_<dataset>_<split>.{md,csv}; output_dir defaults to
the workdir/checkpoint directory. With --image_size=0 (full resolution) batches
hold one image and every new image shape compiles once more.
"""

import csv
import functools
import math
import os
import sys
from typing import Any

from absl import app
from absl import flags
from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmonax import cli
from harmonax import image_io
from harmonax import metric_writers
from harmonax import metrics
from harmonax import models

Record = dict[str, Any]

# Paper column order; subsets in iHarmony4's customary order, others sorted.
COLUMNS = ("mse", "psnr", "fmse", "fpsnr", "ssim")
_HEADERS = {"mse": "MSE", "psnr": "PSNR", "fmse": "fMSE", "fpsnr": "fPSNR", "ssim": "SSIM"}
_SUBSET_ORDER = ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night")
COMPOSITE_PREFIX = "composite_"
PSNR_PEAK_NOTES = {
    "real_max": "peak = max of the real image (iS2AM)",
    "pred_range": "peak = pred.max() - pred.min() (DoveNet, BargainNet, Harmonizer)",
    "255": "peak = 255 (PCT-Net)",
}
SSIM_NOTES = {
    "gaussian11": "11x11 Gaussian window, sigma 1.5 (Wang et al.)",
    "gaussian7": "7x7 Gaussian window, sigma 1.5 (CDTNet)",
    "uniform7": "7x7 mean filter, sample covariance (scikit-image default)",
}


def eval_settings(config: ml_collections.ConfigDict) -> tuple[str, str]:
  """(psnr_peak, ssim variant) from config.eval, with the documented defaults."""
  ev = config.get("eval") or {}
  psnr_peak, ssim = ev.get("psnr_peak", "real_max"), ev.get("ssim", "gaussian11")
  if psnr_peak not in metrics.PSNR_PEAKS:
    raise ValueError(f"config.eval.psnr_peak={psnr_peak!r}; expected one of {metrics.PSNR_PEAKS}")
  if ssim not in metrics.SSIM_VARIANTS:
    raise ValueError(f"config.eval.ssim={ssim!r}; expected one of {metrics.SSIM_VARIANTS}")
  return psnr_peak, ssim


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3))
def _score_batch(graphdef: nnx.GraphDef, family_name: str, psnr_peak: str, ssim: str,
                 state: nnx.State, composite: jax.Array, mask: jax.Array, real: jax.Array
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(prediction, per-image metrics of the model, the composite and family extras)."""
  family = models.get_family(family_name)
  networks = nnx.merge(graphdef, state)
  pred = jnp.clip(family.predict(networks, composite, mask), 0.0, 1.0)
  scores = metrics.compute_all(pred * 255.0, real * 255.0, mask, psnr_peak, ssim)
  identity = metrics.compute_all(composite * 255.0, real * 255.0, mask, psnr_peak, ssim)
  scores.update({COMPOSITE_PREFIX + k: v for k, v in identity.items()})
  if hasattr(family, "extra_eval_metrics"):
    # 'harmonized' lets a family score the prediction without a second forward pass.
    batch = {"composite": composite, "mask": mask, "real": real, "harmonized": pred}
    for key, value in family.extra_eval_metrics(networks, batch).items():
      scores[key] = value.reshape(composite.shape[0])
  return pred, scores


def _host_local(x: Any) -> Any:
  # A replicated global array (trainer on a multi-host mesh) has its full value
  # on every host; evaluation runs on this host's default device.
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x) if isinstance(x, jax.Array) else x


def iterate_records(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                    data_config: ml_collections.ConfigDict, split: str,
                    batch_size: int, psnr_peak: str, ssim: str,
                    save_images: str | None = None):
  """Yields one record per valid example: name, subset and every metric.

  Keys: 'name', 'subset', COLUMNS (the model), COMPOSITE_PREFIX + COLUMNS
  (the input composite) and the family's extra metrics.
  """
  from harmonax import input_pipeline  # pylint: disable=g-import-not-at-top
  for net in networks.values():
    net.eval()
  graphdef, state = nnx.split(networks)
  state = jax.tree.map(_host_local, state)
  for batch in input_pipeline.make_eval_iterator(data_config, batch_size, split):
    pred, scores = _score_batch(
        graphdef, config.model.name, psnr_peak, ssim, state,
        jnp.asarray(batch["composite"]), jnp.asarray(batch["mask"]), jnp.asarray(batch["real"]))
    scores = {k: np.asarray(v, np.float64) for k, v in scores.items()}
    pred = np.asarray(pred) if save_images else None
    for i in np.flatnonzero(batch["valid"]):
      record = {"name": str(batch["name"][i]), "subset": str(batch["subset"][i])}
      record.update({k: float(v[i]) for k, v in scores.items()})
      if save_images:
        _save_prediction(save_images, record, pred[i])
      yield record


def image_path(directory: str, name: str, subset: str = "") -> str:
  """Where a saved prediction goes: directory/[subset/]<name without extension>.png.

  Example names may hold folders ('coffee/cup/v00'); they are kept as folders
  (unique names stay unique), minus empty, '.' and '..' parts.
  """
  parts = [p for p in f"{subset}/{name}".replace("\\", "/").split("/")
           if p not in ("", ".", "..")]
  if not parts:
    raise ValueError(f"Example without a usable name: name={name!r} subset={subset!r}")
  parts[-1] = os.path.splitext(parts[-1])[0] + ".png"
  return os.path.join(directory, *parts)


def _save_prediction(directory: str, record: Record, image: np.ndarray) -> None:
  image_io.write_image(image_path(directory, record["name"], record["subset"]), image)


def summarize(records: list[Record], keys: tuple[str, ...] | list[str] = COLUMNS
              ) -> dict[str, dict[str, float]]:
  """Mean of each key per subset and over all images ('All'), with 'n' per row.

  Subsets come in iHarmony4 order (then sorted); 'All' is last and weighs
  every image equally. Records without a subset only count towards 'All'.
  """
  subsets = {r["subset"] for r in records if r.get("subset")}
  order = [s for s in _SUBSET_ORDER if s in subsets] + sorted(subsets - set(_SUBSET_ORDER))
  summary = {}
  for subset in order + ["All"]:
    rows = [r for r in records if subset == "All" or r.get("subset") == subset]
    summary[subset] = {"n": len(rows)}
    for key in keys:
      values = [r[key] for r in rows if key in r]
      summary[subset][key] = float(np.mean(values)) if values else math.nan
  return summary


def format_table(records: list[Record], psnr_peak: str, ssim: str,
                 title: str = "", extra_keys: tuple[str, ...] = ()) -> str:
  """The paper-style markdown table: model and composite rows per subset and All."""
  model = summarize(records, COLUMNS + tuple(extra_keys))
  ident = summarize(records, [COMPOSITE_PREFIX + k for k in COLUMNS])
  headers = ["method", "subset", *(_HEADERS[k] for k in COLUMNS), *extra_keys, "N"]
  lines = []
  if title:
    lines += [f"### {title}", ""]
  lines += [f"PSNR / fPSNR: {psnr_peak} ({PSNR_PEAK_NOTES[psnr_peak]}). "
            f"SSIM: {ssim} ({SSIM_NOTES[ssim]}). Metrics on 0..255, averaged over "
            "images; All is image-weighted.", ""]
  lines += ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]

  def fmt(key, value):
    return f"{value:.4f}" if key == "ssim" or key in extra_keys else f"{value:.2f}"

  for method, summary, prefix, keys in (("model", model, "", COLUMNS + tuple(extra_keys)),
                                        ("composite", ident, COMPOSITE_PREFIX, COLUMNS)):
    for subset, row in summary.items():
      cells = [fmt(k, row[prefix + k]) for k in COLUMNS]
      cells += [fmt(k, row[k]) if k in keys else "-" for k in extra_keys]
      lines.append(f"| {method} | {subset} | " + " | ".join(cells) + f" | {row['n']} |")
  return "\n".join(lines) + "\n"


def write_csv(path: str, records: list[Record]) -> None:
  """Writes one row per image: name, subset, then every metric column."""
  composite = [COMPOSITE_PREFIX + k for k in COLUMNS]
  present = {k for r in records for k in r}
  extras = sorted(present - {"name", "subset", *COLUMNS, *composite})
  keys = ["name", "subset", *COLUMNS, *extras, *composite]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", newline="", encoding="utf-8") as f:
    writer = csv.DictWriter(f, fieldnames=keys, restval="")
    writer.writeheader()
    writer.writerows(records)


def evaluate_networks(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                      data_config: ml_collections.ConfigDict, split: str,
                      max_examples: int = -1) -> dict[str, float]:
  """Mean metrics over every example of `split` ("All"), for periodic evaluation.

  Each host scores its shard of the split; sums are combined across hosts.
  Returns COLUMNS, the family's extras and 'composite_' + COLUMNS.
  """
  data_config = ml_collections.ConfigDict(data_config.to_dict())
  data_config.max_eval_examples = max_examples
  psnr_peak, ssim = eval_settings(config)
  batch_size = config.get("batch_size", 8)
  sums: dict[str, float] = {}
  count = 0
  for record in iterate_records(config, networks, data_config, split, batch_size,
                                psnr_peak, ssim):
    count += 1
    for key, value in record.items():
      if key not in ("name", "subset"):
        sums[key] = sums.get(key, 0.0) + value
  keys = sorted(sums)
  totals = np.array([count] + [sums[k] for k in keys], np.float64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    # Every host has the same keys: the family decides them, not the data.
    totals = np.asarray(multihost_utils.process_allgather(totals)).sum(axis=0)
  if totals[0] == 0:
    raise ValueError(f"No examples evaluated in {data_config.name} split {split!r}")
  return {k: float(v / totals[0]) for k, v in zip(keys, totals[1:])}


# ---------------------------------------------------------------------------
# Command line.


def define_flags() -> None:
  """Defines this tool's flags, reusing any of the same name already defined.

  Not at import time: the trainer imports this module for evaluate_networks and
  defines its own --config/--workdir.
  """
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file("config", None, "Config file (eval/data settings).",
                                    allow_override=True)
  defs = [
      (flags.DEFINE_string, "workdir", None, "Training workdir (newest restorable step)."),
      (flags.DEFINE_string, "checkpoint", None, "A checkpoint.save_networks directory."),
      (flags.DEFINE_string, "dataset", None, "TFDS name, e.g. iharmony4/all (default: config's)."),
      (flags.DEFINE_string, "data_dir", None, "TFDS data dir."),
      (flags.DEFINE_string, "split", "test", "Split to evaluate."),
      (flags.DEFINE_string, "save_images", None, "Write harmonized PNGs here."),
      (flags.DEFINE_enum, "psnr_peak", None, metrics.PSNR_PEAKS, "Default: config.eval."),
      (flags.DEFINE_enum, "ssim", None, metrics.SSIM_VARIANTS, "Default: config.eval."),
      (flags.DEFINE_integer, "image_size", 256, "Evaluation resize; 0: full resolution."),
      (flags.DEFINE_integer, "max_examples", -1, "Evaluate at most this many; -1: all."),
      (flags.DEFINE_integer, "batch_size", 0, "Batch size; 0: the config's."),
      (flags.DEFINE_string, "output_dir", None, "Where the table and CSV go."),
  ]
  for define, name, default, *rest in defs:
    if name not in flags.FLAGS:
      # allow_override: a module imported later (e.g. harmonax.train) may
      # define the same flag at import time and then takes it over.
      define(name, default, *rest, allow_override=True)


def main(argv: list[str]) -> int:
  """The command line (flags from `define_flags`)."""
  f = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metric_writers.quiet_library_logs()
  if bool(f.workdir) == bool(f.checkpoint):
    raise app.UsageError("Give exactly one of --workdir or --checkpoint")
  if jax.process_count() > 1:
    raise app.UsageError("harmonax.evaluate runs on one host; use evaluate_networks on pods")
  from harmonax import checkpoint  # pylint: disable=g-import-not-at-top
  source = f.workdir or f.checkpoint
  with metric_writers.Phase(f"loading the networks from {source}"):
    config, networks = checkpoint.load_networks(source)
  settings = f.config if f.config is not None else config
  if f.config is not None and f.config.model.name != config.model.name:
    logging.warning("--config is for model %r but %s holds %r; using the checkpoint's model",
                    f.config.model.name, source, config.model.name)
  data_config = ml_collections.ConfigDict(settings.data.to_dict())
  if f.dataset:
    data_config.name = f.dataset
  if f.data_dir:
    data_config.data_dir = f.data_dir
  data_config.image_size = f.image_size or None
  data_config.max_eval_examples = f.max_examples
  psnr_peak, ssim = eval_settings(settings)
  psnr_peak, ssim = f.psnr_peak or psnr_peak, f.ssim or ssim
  batch_size = f.batch_size or settings.get("batch_size", 8)

  records = []
  # Reading the data and compiling are the silent part: done at the first result.
  starting = metric_writers.Phase(
      f"reading {data_config.name} {f.split} and compiling the evaluation step").start()
  for record in iterate_records(config, networks, data_config, f.split, batch_size,
                                psnr_peak, ssim, f.save_images):
    starting.done()
    records.append(record)
    if len(records) % 500 == 0:
      logging.info("Evaluated %d examples", len(records))
  starting.done()
  if not records:
    print(f"error: no examples in {data_config.name} split {f.split!r}", file=sys.stderr)
    return 1
  extra = tuple(sorted(set(records[0]) - set(COLUMNS) - {"name", "subset"}
                       - {COMPOSITE_PREFIX + k for k in COLUMNS}))
  size = f"{f.image_size}x{f.image_size}" if f.image_size else "full resolution"
  title = (f"{config.model.name} ({source}) on {data_config.name} {f.split}, {size}")
  table = format_table(records, psnr_peak, ssim, title, extra)
  print(table)
  output_dir = f.output_dir or source
  stem = f"eval_{data_config.name.replace('/', '_')}_{f.split}"
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, stem + ".md"), "w", encoding="utf-8") as out:
    out.write(table)
  write_csv(os.path.join(output_dir, stem + ".csv"), records)
  print(f"Wrote {os.path.join(output_dir, stem)}.md and .csv")
  return 0


if __name__ == "__main__":
  define_flags()
  # Missing workdir/checkpoint, unbuilt or unknown dataset, bad settings: one line
  # (every ValueError here is about the inputs; --verbose for the traceback).
  cli.run(main, user_errors=(FileNotFoundError, ValueError))
