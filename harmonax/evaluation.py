"""Evaluation with the iHarmony4 protocol, as a library: records, tables, CSV.

`harmonax.evaluate` is the command line; the trainer calls `evaluate_sets`.
Per image, the model's prediction (clipped to [0, 1], not quantized to 8 bits)
is scored by the evaluators of `config.eval.metrics` (harmonax.evaluators) on
0..255 pixels; tables average over images and "All" is image-weighted.
Padding rows of the last batch are never counted.

The protocol (`Protocol`): PSNR peak, SSIM window and background. background
'output' scores the model's image as it comes out (the official evaluation of
iDIH/iS2AM/DoveNet/BargainNet scores the raw network image); 'pasted' puts the
composite's background back first, as `harmonize` does for users.
"""

import csv
import dataclasses
import functools
import math
import os
from collections.abc import Iterator
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmonax import evaluators
from harmonax import image_io
from harmonax import metrics
from harmonax import models
from harmonax.evaluators import harmonization
from harmonax.models import layers

Record = dict[str, Any]

# Paper column order; subsets in iHarmony4's customary order, others sorted.
COLUMNS = harmonization.COLUMNS
COMPOSITE_PREFIX = harmonization.COMPOSITE_PREFIX
_HEADERS = {"mse": "MSE", "psnr": "PSNR", "fmse": "fMSE", "fpsnr": "fPSNR", "ssim": "SSIM"}
_SUBSET_ORDER = ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night")
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
BACKGROUNDS = ("output", "pasted")
BACKGROUND_NOTES = {
    "output": "model output (the official evaluation's)",
    "pasted": "pasted (the composite's background put back, as harmonize does)",
}


@dataclasses.dataclass(frozen=True)
class Protocol:
  """How predictions are scored (hashable: part of the jitted scorer's key)."""
  psnr_peak: str = "real_max"
  ssim: str = "gaussian11"
  background: str = "output"
  metrics: tuple[str, ...] = ("harmonization",)

  def __post_init__(self):
    if self.psnr_peak not in metrics.PSNR_PEAKS:
      raise ValueError(f"psnr_peak={self.psnr_peak!r}; expected one of {metrics.PSNR_PEAKS}")
    if self.ssim not in metrics.SSIM_VARIANTS:
      raise ValueError(f"ssim={self.ssim!r}; expected one of {metrics.SSIM_VARIANTS}")
    if self.background not in BACKGROUNDS:
      raise ValueError(f"background={self.background!r}; expected one of {BACKGROUNDS}")
    for name in self.metrics:
      evaluators.get(name)

  def describe(self) -> str:
    return (f"PSNR / fPSNR: {self.psnr_peak} ({PSNR_PEAK_NOTES[self.psnr_peak]}). "
            f"SSIM: {self.ssim} ({SSIM_NOTES[self.ssim]}). "
            f"Background: {BACKGROUND_NOTES[self.background]}. Metrics on 0..255, "
            "averaged over images; All is image-weighted.")


def protocol_of(config: ml_collections.ConfigDict, **overrides) -> Protocol:
  """The Protocol of config.eval (documented defaults), with non-None overrides."""
  ev = config.get("eval") or {}
  fields = dict(psnr_peak=ev.get("psnr_peak", "real_max"), ssim=ev.get("ssim", "gaussian11"),
                background=ev.get("background", "output"),
                metrics=tuple(ev.get("metrics", ("harmonization",))))
  fields.update({k: v for k, v in overrides.items() if v is not None})
  return Protocol(**fields)


def host_local(x: Any) -> Any:
  """A host copy of `x`: a replicated global array (trainer on a multi-host
  mesh) has its full value on every host; evaluation runs on this host."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return np.asarray(x.addressable_data(0))
  return np.asarray(x) if isinstance(x, jax.Array) else x


@functools.lru_cache(maxsize=32)
def _scorer(config: ml_collections.FrozenConfigDict, graphdef: nnx.GraphDef,
            protocol: Protocol):
  """jit((state, batch) -> (pred, per-image scores)) for one model and protocol."""
  family = models.get_family(config.model.name)
  modules = [evaluators.get(name) for name in protocol.metrics]

  @jax.jit
  def score(state, batch):
    networks = nnx.merge(graphdef, state)
    batch = layers.floats(batch)
    pred = family.predict(config, networks, {k: batch[k] for k in family.INPUTS})
    pred = jnp.clip(pred, 0.0, 1.0)
    if protocol.background == "pasted" and "composite" in batch:
      pred = layers.blend_background(pred, batch["composite"], batch["mask"])
    scores = {}
    for module in modules:
      scores.update(module.score(config, networks, batch, pred, protocol))
    return pred, scores
  return score


def _bucketed(batch: dict[str, Any], bucket: int) -> dict[str, Any]:
  """Full-resolution batch edge-padded to multiples of `bucket`, with
  'valid_pixels' marking the image: a few shapes compile instead of one each."""
  h, w = batch["real"].shape[1:3]
  ph, pw = -h % bucket, -w % bucket
  out = {}
  for key, value in batch.items():
    if isinstance(value, np.ndarray) and value.ndim == 4:
      out[key] = np.pad(value, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="edge")
    else:
      out[key] = value
  valid = np.zeros(out["real"].shape[:3] + (1,), np.float32)
  valid[:, :h, :w] = 1.0
  out["valid_pixels"] = valid
  # Padding is background for the mask: the foreground stays what it was.
  out["mask"] = out["mask"] * valid.astype(out["mask"].dtype)
  return out


def iterate_records(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                    data_config: ml_collections.ConfigDict, split: str, batch_size: int,
                    protocol: Protocol, save_images: str | None = None,
                    bucket: int = 0) -> Iterator[Record]:
  """Yields one record per valid example: name, subset and every evaluator column.

  Sets the networks to eval mode. bucket > 0 (full resolution only) pads images
  to multiples of `bucket` so that few shapes compile: the metrics ignore the
  padding, but the model sees it (a deviation for models with global context).
  """
  from harmonax import input_pipeline  # pylint: disable=g-import-not-at-top
  family = models.get_family(config.model.name)
  models.set_modes(networks)
  graphdef, state = nnx.split(networks)
  state = jax.tree.map(host_local, state)
  score = _scorer(ml_collections.FrozenConfigDict(config), graphdef, protocol)
  keys = (*family.INPUTS, "real")
  full_res = data_config.image_size is None
  for batch in input_pipeline.make_eval_iterator(data_config, batch_size, split):
    h, w = batch["real"].shape[1:3]
    if full_res and bucket > 0:
      batch = _bucketed(batch, bucket)
    arrays = {k: jnp.asarray(batch[k]) for k in (*keys, "mask", "valid_pixels") if k in batch}
    pred, scores = score(state, arrays)
    scores = {k: np.asarray(v, np.float64) for k, v in scores.items()}
    pred = np.asarray(pred)[:, :h, :w] if save_images else None
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


def format_table(records: list[Record], protocol: Protocol,
                 title: str = "", extra_keys: tuple[str, ...] = ()) -> str:
  """The paper-style markdown table: model and composite rows per subset and All."""
  model = summarize(records, COLUMNS + tuple(extra_keys))
  ident = summarize(records, [COMPOSITE_PREFIX + k for k in COLUMNS])
  headers = ["method", "subset", *(_HEADERS[k] for k in COLUMNS), *extra_keys, "N"]
  lines = []
  if title:
    lines += [f"### {title}", ""]
  lines += [protocol.describe(), ""]
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
                      max_examples: int = -1, protocol: Protocol | None = None
                      ) -> dict[str, float]:
  """Mean of every column over every example of `split` ("All").

  Each host scores its shard of the split; sums are combined across hosts.
  """
  data_config = ml_collections.ConfigDict(data_config.to_dict())
  data_config.max_eval_examples = max_examples
  protocol = protocol or protocol_of(config)
  batch_size = config.get("batch_size", 8)
  sums: dict[str, float] = {}
  count = 0
  for record in iterate_records(config, networks, data_config, split, batch_size, protocol):
    count += 1
    for key, value in record.items():
      if key not in ("name", "subset"):
        sums[key] = sums.get(key, 0.0) + value
  keys = sorted(sums)
  totals = np.array([count] + [sums[k] for k in keys], np.float64)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    # Every host has the same keys: the evaluators decide them, not the data.
    totals = np.asarray(multihost_utils.process_allgather(totals)).sum(axis=0)
  if totals[0] == 0:
    raise ValueError(f"No examples evaluated in {data_config.name} split {split!r}")
  return {k: float(v / totals[0]) for k, v in zip(keys, totals[1:])}


def eval_sets(config: ml_collections.ConfigDict
              ) -> dict[str, tuple[ml_collections.ConfigDict, str, int]]:
  """config.evals -> {name: (data config, split, max_examples)}.

  A set's dataset '' means config.data.name, split '' its eval_split,
  image_size -1 its image_size and 0 full resolution.
  """
  sets = {}
  for name, spec in (config.get("evals") or {}).items():
    data = ml_collections.ConfigDict(config.data.to_dict())
    if spec.get("dataset"):
      data.name = spec.dataset
    size = spec.get("image_size", -1)
    if size == 0:
      data.image_size = None
    elif size > 0:
      data.image_size = size
    split = spec.get("split") or config.data.eval_split
    sets[name] = (data, split, spec.get("max_examples", -1))
  return sets


def evaluate_sets(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module]
                  ) -> dict[str, dict[str, float]]:
  """Every set of config.evals scored with config.eval's protocol: {set: means}."""
  return {name: evaluate_networks(config, networks, data, split, max_examples)
          for name, (data, split, max_examples) in eval_sets(config).items()}
