"""Input pipeline: TFDS ArrayRecord datasets read with grain.

Training: per-host shard -> seeded shuffle -> repeat -> decode -> random resized crop
and flip (the same box for composite, real and mask) -> batches of
global_batch_size // process_count. Evaluation: per-host shard -> deterministic resize
-> padded batches that count every example exactly once. See docs/architecture.md.
"""

import dataclasses
import functools
import io
import math
import os
import signal
import threading
import time
from typing import Any, Iterator

import grain
import jax
import ml_collections
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from data_builders import datasets
from data_builders.harmonization_composites import record
from harmonax import cli

# The datasets that are built automatically on first use: their photos ship in the repo.
AUTO_BUILD = datasets.SAMPLE
AUTO_BUILDS = datasets.EMBEDDED
# Random resized crop: aspect ratios as in the papers (torchvision / albumentations default).
_CROP_RATIO = (3 / 4, 4 / 3)
_CROP_TRIES = 10
# How many crops are drawn before an empty-mask crop is accepted anyway.
_MASK_TRIES = 10
# RGB images read besides the mask, unless data_config.image_keys says otherwise
# (compositing datasets: ('foreground', 'background', 'real'), the family's
# INPUTS plus the target).
IMAGE_KEYS = ("composite", "real")


def image_keys(data_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The RGB image keys a batch carries: data_config.image_keys, else IMAGE_KEYS."""
  return tuple(data_config.get("image_keys", None) or IMAGE_KEYS)


# Where built datasets live and how a missing one is built: data_builders' rules.
resolve_data_dir = datasets.resolve_data_dir
build_command = datasets.build_command


def get_builder(name: str, data_dir: str | None) -> tfds.core.DatasetBuilder:
  """The built TFDS dataset `name` ('dataset/config') in the data dir.

  The AUTO_BUILDS samples are built on first use; any other dataset must
  have been built with `python -m data_builders.build`.

  Raises:
    ValueError: unknown dataset or config name (lists the valid ones).
    FileNotFoundError: missing data dir or dataset not built (prints the build command).
  """
  data_dir = resolve_data_dir(data_dir)
  base = name.partition(":")[0]
  if base in AUTO_BUILDS and name == base:
    # The builder's current version: a sample built by an older version (other
    # photos) is rebuilt, not reused.
    name += f":{datasets.builder_class(datasets.split_name(base)[0]).VERSION}"
  path = datasets.find_built(name, data_dir)
  if path is None and base in AUTO_BUILDS:
    datasets.build(base, data_dir)
    path = datasets.find_built(name, data_dir)
  if path is not None:
    return tfds.builder_from_directory(path)
  dataset, config = datasets.split_name(name)
  known = datasets.known_datasets()
  if dataset not in known:
    raise ValueError(f"Unknown dataset {name!r}: not built in {data_dir!r} and not one "
                     f"of the builders in data_builders/: {known}")
  configs = [c.name for c in getattr(datasets.builder_class(dataset), "BUILDER_CONFIGS", [])]
  if configs and config not in configs:
    raise ValueError(f"Unknown config {config!r} of dataset {dataset!r} in {name!r}; "
                     f"valid: {configs}")
  where = (f"is not built in {data_dir!r}" if os.path.isdir(data_dir)
           else f"is not built: the data dir {data_dir!r} does not exist")
  raise FileNotFoundError(f"Dataset {name!r} {where}; build it with: "
                          f"{build_command(name, data_dir)}")


def _data_source(data_config: ml_collections.ConfigDict, split: str):
  """The split's records with images left encoded: the transforms decode them
  (every Image feature is skipped, also those no batch reads)."""
  builder = get_builder(data_config.name, data_config.data_dir)
  skip = {k: tfds.decode.SkipDecoding() for k, feature in builder.info.features.items()
          if isinstance(feature, tfds.features.Image)}
  return builder.as_data_source(split=split, decoders=skip)


def num_examples(data_config: ml_collections.ConfigDict, split: str) -> int:
  """Number of examples of `split` (any TFDS split string) of the configured dataset."""
  builder = get_builder(data_config.name, data_config.data_dir)
  return builder.info.splits[split].num_examples


def _process(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  return (jax.process_index() if process_index is None else process_index,
          jax.process_count() if process_count is None else process_count)


def _local_batch_size(global_batch_size: int, process_count: int) -> int:
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} must be a positive "
                     f"multiple of the process count {process_count}")
  return global_batch_size // process_count


def _random_box(rng: np.random.Generator, height: int, width: int,
                scale: tuple[float, float]) -> tuple[int, int, int, int]:
  """(top, left, h, w) of a random resized crop, as torchvision's RandomResizedCrop."""
  area = height * width
  log_ratio = np.log(_CROP_RATIO)
  for _ in range(_CROP_TRIES):
    target = area * rng.uniform(*scale)
    ratio = math.exp(rng.uniform(*log_ratio))
    w = int(round(math.sqrt(target * ratio)))
    h = int(round(math.sqrt(target / ratio)))
    if 0 < w <= width and 0 < h <= height:
      return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
  # Fallback: a centered crop with the aspect ratio clamped to the range.
  ratio = width / height
  if ratio < _CROP_RATIO[0]:
    w, h = width, int(round(width / _CROP_RATIO[0]))
  elif ratio > _CROP_RATIO[1]:
    h, w = height, int(round(height * _CROP_RATIO[1]))
  else:
    h, w = height, width
  return (height - h) // 2, (width - w) // 2, h, w


def _open(data: bytes, what: str) -> Image.Image:
  try:
    return Image.open(io.BytesIO(data))
  except Exception as e:  # PIL raises several types for corrupt data.
    raise ValueError(f"cannot decode the {what} image ({len(data)} bytes): {e}") from e


def _decode_mask(data: bytes) -> np.ndarray:
  """HxW uint8 mask (the first channel of a multi-channel PNG)."""
  img = _open(data, "mask")
  return np.asarray(img.getchannel(0) if img.mode in ("RGB", "RGBA") else img.convert("L"))


def _check_size(key: str, img: Image.Image, mask: np.ndarray, name: Any) -> None:
  if img.size != (mask.shape[1], mask.shape[0]):
    raise ValueError(f"example {name!r}: {key} is {img.size[0]}x{img.size[1]} but the mask "
                     f"is {mask.shape[1]}x{mask.shape[0]} (width x height)")


def _open_images(example: dict[str, Any], mask: np.ndarray,
                 keys: tuple[str, ...] = ("composite", "real")) -> dict[str, Image.Image]:
  """The images `keys` of an example, size-checked against the mask.

  Opened lazily (JPEGs can still be draft-decoded) where the record stores them;
  where it stores the composite as its foreground's box (harmonization_composites
  2.0.0), the composite is rebuilt on the decoded real image, so its background
  is the real image's exactly.
  """
  if record.CROP not in example:
    images = {key: _open(example[key], key) for key in keys}
    for key, img in images.items():
      _check_size(key, img, mask, example.get("name"))
    return images
  real = _open(example["real"], "real")
  _check_size("real", real, mask, example.get("name"))
  real = np.asarray(real.convert("RGB"))
  crop = np.asarray(_open(example[record.CROP], "composite crop").convert("RGB"))
  try:
    composite = record.rebuild_composite(real, crop, example[record.BOX], mask)
  except ValueError as e:
    raise ValueError(f"example {example.get('name')!r}: {e}") from None
  return {"composite": Image.fromarray(composite), "real": Image.fromarray(real)}



# How often a worker checks that the trainer is still alive.
_PARENT_POLL_SECONDS = 0.5


def _watch_parent(parent_pid: int) -> None:
  """Ends this worker process as soon as `parent_pid` is no longer its parent."""
  while os.getppid() == parent_pid:
    time.sleep(_PARENT_POLL_SECONDS)
  os._exit(1)  # pylint: disable=protected-access


def _init_worker(parent_pid: int, worker_index: int, worker_count: int) -> None:
  """Grain worker init: ignore SIGTERM and SIGINT, and die with the trainer.

  A signal sent to the whole process group (`timeout`, Ctrl-C, many launchers)
  would otherwise kill the workers, and the trainer's next batch would fail
  before it could save its preemption checkpoint. The main process handles the
  signal and shuts the workers down itself.

  A trainer killed with SIGKILL cannot shut them down, and workers ignoring
  SIGTERM would live on (hundreds of MB each): a thread here exits the worker
  once its parent is gone (it is re-parented). prctl(PR_SET_PDEATHSIG) is not
  used: it fires when the *thread* that started the worker ends, and grain
  starts workers from its own threads.
  """
  del worker_index, worker_count
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  if os.getppid() != parent_pid:  # The trainer died before this worker started.
    os._exit(1)  # pylint: disable=protected-access
  threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True,
                   name="harmonax-watch-parent").start()


def prefetch_in_workers(ds: grain.IterDataset, num_workers: int) -> grain.IterDataset:
  """`ds` made in `num_workers` worker processes (0: in this process).

  The workers ignore SIGTERM/SIGINT (the trainer stops them after saving) and
  exit within a second of the trainer's death, however it dies.
  """
  if num_workers <= 0:
    return ds
  return ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers),
                        worker_init_fn=functools.partial(_init_worker, os.getpid()))


@dataclasses.dataclass(frozen=True)
class TrainTransform:
  """Decodes and random-resized-crops + flips the images (image_keys) and mask identically.

  Takes encoded images (PNG/JPEG bytes); returns uint8 arrays of image_size x image_size
  (composite, real: x3; mask: x1, soft at the edges after bilinear resizing). Crops whose mask is empty are redrawn, except
  with probability keep_empty_mask_prob. JPEGs are decoded at a reduced scale (libjpeg's
  DCT scaling) when the crop is that much larger than image_size: this is what makes
  multi-megapixel HAdobe5k photos affordable.
  """
  image_size: int
  crop_scale: tuple[float, float] = (0.5, 1.0)
  hflip: bool = True
  keep_empty_mask_prob: float = 0.05
  image_keys: tuple[str, ...] = IMAGE_KEYS

  def __call__(self, example: dict[str, Any], rng: np.random.Generator
               ) -> dict[str, np.ndarray]:
    mask = _decode_mask(example["mask"])
    height, width = mask.shape
    for _ in range(_MASK_TRIES):
      top, left, h, w = _random_box(rng, height, width, tuple(self.crop_scale))
      if mask[top:top + h, left:left + w].any() or rng.random() < self.keep_empty_mask_prob:
        break
    flip = bool(self.hflip and rng.random() < 0.5)
    size = (self.image_size, self.image_size)
    out = {}
    for key, img in _open_images(example, mask, self.image_keys).items():
      scale = 1.0
      if img.format == "JPEG":
        # The smallest 1/2^k decode that still gives the crop >= image_size pixels.
        drafted = img.draft("RGB", (math.ceil(width * size[1] / w),
                                    math.ceil(height * size[0] / h)))
        if drafted is not None:
          scale = width / drafted[1][2]
      if img.mode != "RGB":
        img = img.convert("RGB")
      img = img.resize(
          size, Image.BILINEAR,
          box=(left / scale, top / scale, (left + w) / scale, (top + h) / scale))
      out[key] = img
    out["mask"] = Image.fromarray(mask).resize(
        size, Image.BILINEAR, box=(left, top, left + w, top + h))
    result = {}
    for key, img in out.items():
      if flip:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
      value = np.asarray(img)
      result[key] = value[..., None] if key == "mask" else value
    return result


def _to_float(batch: dict[str, Any]) -> dict[str, Any]:
  """uint8 arrays -> float32 in [0, 1]; the rest unchanged (host side)."""
  return {k: v.astype(np.float32) / 255.0 if getattr(v, "dtype", None) == np.uint8 else v
          for k, v in batch.items()}


def _seeds(seed: int, data_config: ml_collections.ConfigDict, process_index: int
           ) -> tuple[int, int]:
  # Different hosts draw different crops; the shuffle_seed field reshuffles data alone.
  shuffle = np.random.SeedSequence([seed, data_config.get("shuffle_seed", 0), process_index])
  augment = np.random.SeedSequence([seed, process_index, 1])
  return int(shuffle.generate_state(1)[0]), int(augment.generate_state(1)[0])


def make_train_iterator(data_config: ml_collections.ConfigDict, global_batch_size: int,
                        seed: int, *, process_index: int | None = None,
                        process_count: int | None = None) -> grain.DatasetIterator:
  """Endless iterator of training batches {composite, real, mask} for this host
  (the images: data_config.image_keys, default composite and real).

  Deterministic given the seed and position; its state is checkpointable with
  `get_state`/`set_state` or orbax `grain.checkpoint.CheckpointSave/Restore`.
  process_index/process_count default to jax's (override to simulate hosts).
  """
  process_index, process_count = _process(process_index, process_count)
  batch_size = _local_batch_size(global_batch_size, process_count)
  source = _data_source(data_config, data_config.train_split)
  if len(source):
    check_keys(data_config, data_config.train_split, source[0])
  if len(source) < process_count:
    raise ValueError(f"{data_config.name} {data_config.train_split!r} has {len(source)} "
                     f"examples, fewer than the {process_count} processes")
  shuffle_seed, augment_seed = _seeds(seed, data_config, process_index)
  ds = grain.MapDataset.source(source)[process_index::process_count]
  ds = ds.shuffle(seed=shuffle_seed).repeat()
  ds = ds.random_map(TrainTransform(
      image_size=data_config.image_size,
      crop_scale=tuple(data_config.crop_scale),
      hflip=data_config.hflip,
      keep_empty_mask_prob=data_config.keep_empty_mask_prob,
      image_keys=image_keys(data_config)), seed=augment_seed)
  # Workers make single examples and the batch is formed here, so the batches do not
  # depend on the number of workers.
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=4, prefetch_buffer_size=4 * batch_size))
  ds = prefetch_in_workers(ds, data_config.num_workers)
  # uint8 all the way to the device (a quarter of float32's bytes); the
  # families convert with layers.to_float inside jit.
  return iter(ds.batch(batch_size, drop_remainder=True))


@dataclasses.dataclass(frozen=True)
class EvalTransform:
  """Decodes and resizes to image_size x image_size (bilinear; None: full resolution).

  Images are decoded at full resolution first, so the result does not depend on the
  JPEG decoder's scaling; they stay uint8 like the reference code's resized images.
  The mask is resized in float and stays soft unless binary_mask (uint8 when not resized).
  """
  image_size: int | None
  binary_mask: bool = False
  image_keys: tuple[str, ...] = IMAGE_KEYS

  def __call__(self, example: dict[str, Any]) -> dict[str, Any]:
    mask = _decode_mask(example["mask"])
    out = {}
    for key, img in _open_images(example, mask, self.image_keys).items():
      if img.mode != "RGB":
        img = img.convert("RGB")
      if self.image_size is not None:
        img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
      out[key] = np.asarray(img)
    if self.image_size is None:
      out["mask"] = mask[..., None]  # Full resolution: exact 0/255 values.
    else:
      img = Image.fromarray(mask.astype(np.float32) / 255.0, mode="F")
      img = img.resize((self.image_size, self.image_size), Image.BILINEAR)
      out["mask"] = np.asarray(img, dtype=np.float32)[..., None]
    if self.binary_mask:
      out["mask"] = (_to_float(out)["mask"] >= 0.5).astype(np.float32)
    for key in ("name", "subset"):
      value = example.get(key, b"")
      out[key] = value.decode("utf-8") if isinstance(value, bytes) else str(value)
    return out


def _eval_batches(ds: grain.IterDataset, count: int, batch_size: int,
                  num_batches: int, template: dict[str, Any]) -> Iterator[dict[str, Any]]:
  """Groups `count` examples into `num_batches` batches, padding with valid=False rows."""
  it = iter(ds)
  pad = {k: (np.zeros_like(v) if isinstance(v, np.ndarray) else "")
         for k, v in template.items()}
  try:
    for b in range(num_batches):
      rows = [next(it) for _ in range(max(0, min(batch_size, count - b * batch_size)))]
      valid = np.array([True] * len(rows) + [False] * (batch_size - len(rows)))
      rows += [pad] * (batch_size - len(rows))
      # Images stay uint8 (converted on the device); the mask is float when
      # resized (soft edges), uint8 0/255 at full resolution.
      batch = {k: np.stack([r[k] for r in rows]) for k in template
               if isinstance(template[k], np.ndarray)}
      batch["valid"] = valid
      for key in ("name", "subset"):
        batch[key] = np.array([r[key] for r in rows], dtype=object)
      yield batch
  finally:
    it.close()  # Stops grain worker processes even when the caller stops early.


class DatasetKindError(cli.UserError, ValueError):
  """A dataset whose examples lack an image the model reads."""


def check_keys(data_config: ml_collections.ConfigDict, split: str, example: dict) -> None:
  """Raises DatasetKindError when `example` lacks an image the batches need
  (image_keys and the mask): e.g. a harmonization model on compositing
  triplets, which hold foreground, background and alpha."""
  wanted = (*image_keys(data_config), "mask")
  # harmonization_composites 2.0.0 stores the composite as its foreground's box.
  held = set(example) | ({"composite"} if record.CROP in example else set())
  if missing := [k for k in wanted if k not in held]:
    held = sorted(k for k in example if k not in ("name", "subset", "category", "transfer"))
    raise DatasetKindError(
        f"{data_config.name} {split!r}: its examples have no {', '.join(missing)} (they hold "
        f"{', '.join(held)}); this model reads {', '.join(wanted)}: use a dataset of its "
        "kind (harmonization composites or compositing triplets)")


def make_eval_iterator(data_config: ml_collections.ConfigDict, global_batch_size: int,
                       split: str | None = None, *, process_index: int | None = None,
                       process_count: int | None = None) -> Iterator[dict[str, Any]]:
  """This host's evaluation batches: every example once, the last batch padded.

  Batches carry composite, real, mask, valid (False on padding rows) and name, subset
  (numpy object arrays). All hosts yield the same number of batches. With
  data_config.image_size None images keep their resolution and batches hold one
  example per host.
  """
  process_index, process_count = _process(process_index, process_count)
  split = split or data_config.eval_split
  source = _data_source(data_config, split)
  total = len(source)
  if data_config.get("max_eval_examples", -1) > 0:
    total = min(total, data_config.max_eval_examples)
  if data_config.image_size is None:
    batch_size = 1
  else:
    batch_size = _local_batch_size(global_batch_size, process_count)
  count = len(range(process_index, total, process_count))
  num_batches = math.ceil(math.ceil(total / process_count) / batch_size)
  transform = EvalTransform(data_config.image_size, data_config.get("binary_eval_mask", False),
                            image_keys(data_config))
  ds = grain.MapDataset.source(source)[:total][process_index::process_count].map(transform)
  if not total:
    raise ValueError(f"{data_config.name} split {split!r} is empty")
  first = source[min(process_index, total - 1)]
  check_keys(data_config, split, first)
  # Padding rows copy the shapes of a real example (zeros).
  template = transform(first)
  full_res = data_config.image_size is None
  ds = ds.to_iter_dataset(grain.ReadOptions(
      num_threads=2 if full_res else 4, prefetch_buffer_size=4 if full_res else 4 * batch_size))
  ds = prefetch_in_workers(ds, data_config.num_workers)
  return _eval_batches(ds, count, batch_size, num_batches, template)
