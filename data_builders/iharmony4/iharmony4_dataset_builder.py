"""iHarmony4: the image harmonization benchmark (manual download), as a TFDS builder.

Layout of the manual dir (the official download, unpacked):

  IHD_train.txt  IHD_test.txt                    (optional: the union of the lists)
  HCOCO/ HAdobe5k/ HFlickr/ Hday2night/
    composite_images/<real>_<maskid>_<k>.jpg
    masks/<real>_<maskid>.png
    real_images/<real>.jpg
    <Subset>_train.txt  <Subset>_test.txt

Images are stored as the original JPEG bytes; they are only re-encoded (Pillow) when a
config resizes them (`max_size`, e.g. `hadobe5k_1024`, `hadobe5k_2048`). Masks are stored as HxWx1 PNGs
with values 0/255. No TensorFlow is needed: build with `file_format='array_record'`.
"""

import collections
import concurrent.futures
import dataclasses
import io
import json
import os
from typing import Iterator

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from data_builders import datasets

SUBSETS = ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night")
SPLITS = ("train", "test")
# How many missing file names an error message lists before the count.
_MAX_LISTED = 5
# JPEG quality of resized images: as in the iS2AM authors' resizing of HAdobe5k.
_JPEG_QUALITY = 90
# Threads preparing images during generation (a fixed count: reading also waits on I/O).
_THREADS = 8


@dataclasses.dataclass
class BuilderConfig(tfds.core.BuilderConfig):
  """Which subsets to include and an optional bound on the long side of images."""
  subsets: tuple[str, ...] = SUBSETS
  max_size: int | None = None


def _config(name: str, subsets: tuple[str, ...], max_size: int | None = None,
            ) -> BuilderConfig:
  what = "all four subsets" if len(subsets) > 1 else subsets[0]
  size = f", long side resized to <= {max_size}" if max_size else ""
  return BuilderConfig(name=name, description=f"iHarmony4, {what}{size}.",
                       subsets=subsets, max_size=max_size)


def parse_composite_name(name: str) -> tuple[str, str]:
  """(real image file, mask file) of a composite file name.

  `a0001_1_1.jpg` -> (`a0001.jpg`, `a0001_1.png`). Fields are split on '_' only:
  Hday2night's real names contain '-' (`d21901-20130410-181833_1_9.jpg`).

  Raises:
    ValueError: when the name does not have the `<real>_<maskid>_<k>.<ext>` form.
  """
  stem = os.path.splitext(os.path.basename(name))[0]
  fields = stem.split("_")
  if len(fields) < 3 or not all(fields):
    raise ValueError(
        f"iHarmony4 composite name {name!r}: expected <real>_<maskid>_<k>.jpg")
  return fields[0] + ".jpg", "_".join(fields[:-1]) + ".png"


def _listed(names: list[str]) -> str:
  """The first _MAX_LISTED names, and how many more."""
  more = f" and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
  return ", ".join(names[:_MAX_LISTED]) + more


def _read_list(path: epath.Path) -> list[str]:
  return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()
          if line.strip()]


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for iHarmony4 (HCOCO, HAdobe5k, HFlickr, Hday2night)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      _config("all", SUBSETS),
      _config("hcoco", ("HCOCO",)),
      _config("hadobe5k", ("HAdobe5k",)),
      _config("hflickr", ("HFlickr",)),
      _config("hday2night", ("Hday2night",)),
      _config("all_1024", SUBSETS, max_size=1024),
      _config("hadobe5k_1024", ("HAdobe5k",), max_size=1024),
      # CDTNet's 2048 evaluation (square-resized from these at evaluation time).
      _config("hadobe5k_2048", ("HAdobe5k",), max_size=2048),
  ]
  DEFAULT_CONFIG_NAME = "all"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Download iHarmony4 from https://github.com/bcmi/Image-Harmonization-Dataset-iHarmony4
  (links in its README), unpack it and pass the folder that holds HCOCO/, HAdobe5k/,
  HFlickr/ and Hday2night/ as the manual dir
  (`python -m data_builders.build iharmony4/all --manual_dir=DIR --data_dir=...`).
  A config that uses one subset needs only that subset's folder.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "composite": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "real": tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg"),
            "mask": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
            "name": tfds.features.Text(),
            "transfer": tfds.features.Text(),
            "category": tfds.features.Text(),
            "subset": tfds.features.Text(),
        }),
        supervised_keys=None,
        homepage="https://github.com/bcmi/Image-Harmonization-Dataset-iHarmony4",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = find_root(dl_manager.manual_dir, self.builder_config.subsets)
    examples = {split: list_examples(root, self.builder_config.subsets, split)
                for split in SPLITS}
    check_files(root, [e for split in SPLITS for e in examples[split]])
    return {split: self._generate_examples(examples[split]) for split in SPLITS}

  def _generate_examples(self, examples: list[dict[str, epath.Path | str]]
                         ) -> Iterator[tuple[str, dict[str, object]]]:
    max_size = self.builder_config.max_size

    def load(ex):
      try:
        return ex, _prepare_images(ex, ex["composite"].read_bytes(), ex["real"].read_bytes(),
                                   ex["mask"].read_bytes(), max_size)
      except (UnreadableExampleError, OSError) as e:
        return ex, e

    # Threads: reading and Pillow's decode/resize/encode release the GIL, and resizing
    # 20k multi-megapixel HAdobe5k photos one at a time would take hours.
    skipped = []

    def take(ex, result):
      if isinstance(result, Exception):
        logging.warning("iHarmony4: skipping %s: %s", ex["key"], result)
        skipped.append(ex["key"])
        return None
      return _example(ex, result)

    with concurrent.futures.ThreadPoolExecutor(_THREADS) as pool:
      window = collections.deque()
      for ex in examples:
        window.append(pool.submit(load, ex))
        if len(window) >= 4 * _THREADS:  # Bounded: results are yielded in order.
          if (item := take(*window.popleft().result())) is not None:
            yield item
      while window:
        if (item := take(*window.popleft().result())) is not None:
          yield item
    if skipped:
      logging.warning(
          "iHarmony4: skipped %d of %d examples whose files are unreadable or "
          "disagree in size (%s; each is named above). Scores on a split with "
          "skipped examples are not comparable with published ones: replace the "
          "files from the official download and build again.",
          len(skipped), len(examples), _listed(skipped))


def _example(ex: dict[str, epath.Path | str], images: tuple[bytes, bytes, bytes]
             ) -> tuple[str, dict[str, object]]:
  composite, real, mask = images
  return ex["key"], {
      "composite": composite,
      "real": real,
      "mask": mask,
      "name": ex["name"],
      "transfer": json.dumps({"method": "iharmony4"}),
      "category": "",
      "subset": ex["subset"],
  }


def find_root(manual_dir: epath.PathLike, subsets: tuple[str, ...]) -> epath.Path:
  """The folder of `manual_dir` (itself or one level down) holding the subset folders.

  Raises:
    FileNotFoundError: naming the manual dir and the subset folders it lacks.
  """
  manual_dir = epath.Path(manual_dir)
  candidates = [manual_dir]
  if manual_dir.is_dir():
    # The official archive unpacks into one folder (e.g. Image_Harmonization_Dataset/).
    candidates += sorted(d for d in manual_dir.iterdir() if d.is_dir())
  for root in candidates:
    if all((root / s).is_dir() for s in subsets):
      return root
  missing = [s for s in subsets if not (manual_dir / s).is_dir()]
  raise FileNotFoundError(
      f"iHarmony4 manual dir '{manual_dir}' lacks the subset folder(s) {missing}. "
      f"{Builder.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}")


def list_examples(root: epath.Path, subsets: tuple[str, ...], split: str
                  ) -> list[dict[str, epath.Path | str]]:
  """The examples of a split: paths of composite, real and mask, name, subset, key.

  Reads `<Subset>/<Subset>_<split>.txt`, else the `<Subset>/` lines of `IHD_<split>.txt`.
  Lines may be bare file names or paths ending in the composite file name.

  Raises:
    FileNotFoundError: when neither list exists for a subset.
    datasets.BuildInputError: a line that is not a composite name, or one
      listed twice (naming the list file).
  """
  ihd_path = root / f"IHD_{split}.txt"
  examples, seen = [], set()
  for subset in subsets:
    list_path = root / subset / f"{subset}_{split}.txt"
    if list_path.exists():
      lines = _read_list(list_path)
    elif ihd_path.exists():
      lines = [l for l in _read_list(ihd_path) if l.split("/")[0] == subset]
    else:
      raise FileNotFoundError(
          f"iHarmony4: no {split} list for {subset}: neither '{list_path}' nor "
          f"'{ihd_path}' exists")
    for line in lines:
      name = os.path.basename(line)
      try:
        real_name, mask_name = parse_composite_name(name)
      except ValueError as e:
        raise datasets.BuildInputError(
            f"{list_path if list_path.exists() else ihd_path}: line {line!r}: {e}") from None
      if f"{subset}/{name}" in seen:
        raise datasets.BuildInputError(
            f"{list_path if list_path.exists() else ihd_path}: {name} is listed twice "
            f"in the {split} list")
      seen.add(f"{subset}/{name}")
      subset_dir = root / subset
      examples.append({
          "key": f"{subset}/{name}",
          "name": name,
          "subset": subset,
          "composite": subset_dir / "composite_images" / name,
          "real": subset_dir / "real_images" / real_name,
          "mask": subset_dir / "masks" / mask_name,
      })
  return examples


def check_files(root: epath.Path, examples: list[dict[str, epath.Path | str]]) -> None:
  """Raises FileNotFoundError listing the first missing files and their count."""
  # One listing per folder: far faster than a stat per file on 73k examples (or GCS).
  listings: dict[epath.Path, set[str]] = {}
  missing = []
  for ex in examples:
    for kind in ("composite", "real", "mask"):
      path = ex[kind]
      if path.parent not in listings:
        listings[path.parent] = ({p.name for p in path.parent.iterdir()}
                                 if path.parent.is_dir() else set())
      if path.name not in listings[path.parent]:
        missing.append(os.fspath(path.relative_to(root)))
  missing = sorted(set(missing))
  if missing:
    raise FileNotFoundError(
        f"iHarmony4 manual dir '{root}' is incomplete: {len(missing)} file(s) named in "
        f"the split lists are missing: {_listed(missing)}. Unpack the complete download there, "
        "or build a config of the subsets you have (e.g. iharmony4/hcoco)")


def _resized_size(size: tuple[int, int], max_size: int) -> tuple[int, int]:
  w, h = size
  scale = max_size / max(w, h)
  if w >= h:
    return max_size, int(round(h * scale))
  return int(round(w * scale)), max_size


class UnreadableExampleError(ValueError):
  """An example whose files do not decode, or disagree in size; the message names them."""


def _open_decoded(data: bytes, path, what: str) -> Image.Image:
  """Opens `data`, checking that all of it decodes (a header alone opens fine).

  A truncated or corrupt JPEG would otherwise build and fail later, at
  evaluation, in a data loader that cannot name the file. JPEGs are checked
  with a DCT-scaled decode (all of the entropy-coded data, 1/64 of the pixels).

  Raises:
    UnreadableExampleError: naming the file.
  """
  try:
    img = Image.open(io.BytesIO(data))
    check = Image.open(io.BytesIO(data))
    if check.format == "JPEG":
      check.draft(check.mode, (max(1, check.width // 8), max(1, check.height // 8)))
    check.load()
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise UnreadableExampleError(
        f"{what} {path} is not a readable image ({type(e).__name__}: {e})") from e
  return img


def _prepare_images(ex: dict[str, epath.Path | str], composite: bytes, real: bytes, mask: bytes,
                    max_size: int | None) -> tuple[bytes, bytes, bytes]:
  """Checks sizes, makes the mask HxWx1 0/255 and resizes when the long side > max_size.

  Raises:
    UnreadableExampleError: when a file does not decode, or composite, real and
      mask sizes differ (naming the files).
  """
  comp_img = _open_decoded(composite, ex["composite"], "composite")
  real_img = _open_decoded(real, ex["real"], "real image")
  mask_img = _open_decoded(mask, ex["mask"], "mask")
  if not comp_img.size == real_img.size == mask_img.size:
    raise UnreadableExampleError(
        f"iHarmony4 {ex['key']}: sizes differ (width, height): composite "
        f"{comp_img.size} {ex['composite']}, real {real_img.size} {ex['real']}, "
        f"mask {mask_img.size} {ex['mask']}")
  resize = max_size is not None and max(comp_img.size) > max_size
  new_size = _resized_size(comp_img.size, max_size) if resize else comp_img.size

  def jpeg(img: Image.Image, data: bytes) -> bytes:
    if not resize and img.format == "JPEG" and img.mode == "RGB":
      return data  # The original bytes: no generation loss.
    img = img.convert("RGB")
    if resize:
      img = img.resize(new_size, Image.LANCZOS)
    out = io.BytesIO()
    img.save(out, format="JPEG", quality=_JPEG_QUALITY)
    return out.getvalue()

  # Masks: one channel (the first, as the reference loaders read it), 0/255.
  mask_img.load()
  m = mask_img.convert("RGB") if mask_img.mode not in ("L", "1", "RGB") else mask_img
  m = m.getchannel(0) if m.mode == "RGB" else m.convert("L")
  if resize:
    m = m.resize(new_size, Image.BILINEAR)
  m = np.asarray(m)
  binary = np.where(m >= 128, 255, 0).astype(np.uint8)
  if not binary.any():  # Its fMSE and fPSNR would be 0 and 108 dB: a perfect score.
    after = f" after resizing to {new_size[0]}x{new_size[1]}" if resize else ""
    raise UnreadableExampleError(f"mask {ex['mask']} has no foreground pixels{after}")
  if (not resize and mask_img.format == "PNG" and mask_img.mode == "L"
      and np.array_equal(binary, m)):
    mask_bytes = mask
  else:
    out = io.BytesIO()
    Image.fromarray(binary, mode="L").save(out, format="PNG")
    mask_bytes = out.getvalue()
  return jpeg(comp_img, composite), jpeg(real_img, real), mask_bytes
