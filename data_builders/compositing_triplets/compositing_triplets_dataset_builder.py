"""Compositing triplets: a foreground photo with its object, a mask, another photo as the
background, and the target composite alpha * fg + (1 - alpha) * bg.

For Deep Image Compositing (Zhang et al., WACV 2021). Configs:

- `sample`: the photos and COCO polygons of `harmonization_composites/sample/`
  (read from there, not copied). No matte exists, so the soft alpha is the
  polygon mask blurred by a Gaussian of `alpha_sigma` pixels (an assumption
  standing in for matted edges); `mask` is that alpha thresholded at 0.5.
- `folder`: a manual dir in the matting layout `fg/`, `alpha/` (same stems,
  grayscale mattes) and `bg/` (background photos); `mask` is alpha >= 128.

Each example pairs one object with one background photo of the same split
(never its own photo) and a random crop of it with the foreground photo's
aspect ratio; foreground and alpha are resized to the crop's size, so every
image of an example has the background crop's size. Examples are seeded from
their key: builds are byte-identical. Features: `foreground`, `background`,
`real` (the target; RGB PNG), `mask`, `alpha` (HxWx1 PNG), `name`, `category`.
"""

import collections
import dataclasses
import os
from typing import Any, Iterator

from etils import epath
import numpy as np
from PIL import Image, ImageFilter
import tensorflow_datasets as tfds

# Importing the package also makes TFDS serialize examples deterministically.
from data_builders.harmonization_composites import compose
from data_builders.harmonization_composites import photos
from data_builders.harmonization_composites import sources
from data_builders.harmonization_composites.summary import Summary

SPLITS = ("train", "test")


@dataclasses.dataclass
class BuilderConfig(tfds.core.BuilderConfig):
  """Attributes:
    source: 'sample' or 'folder'.
    variants: background crops per (object, background photo), per split.
    crop_scale: area fraction of the largest crop of the foreground's aspect.
    alpha_sigma: sample source: Gaussian sigma (pixels, at the output size) that
      softens the polygon mask into an alpha matte (an assumption).
    max_size: images with a longer side are downscaled to it (None: keep).
    test_fraction: folder source: fraction of foregrounds (by stem hash) in test.
  """
  source: str = "sample"
  variants: tuple[tuple[str, int], ...] = (("train", 4), ("test", 4))
  crop_scale: tuple[float, float] = (0.6, 1.0)
  alpha_sigma: float = 1.5
  max_size: int | None = 320
  test_fraction: float = 0.2


@dataclasses.dataclass(frozen=True)
class Foreground:
  """One object: its photo and its mask (polygons) or matte (a file)."""
  name: str
  photo: str
  category: str = ""
  obj: sources.Obj | None = None  # Sample: the polygon object.
  alpha_path: str | None = None   # Folder: the matte file.


def _sample(summary: Summary) -> tuple[dict[str, list[Foreground]], dict[str, list[str]]]:
  objects = sources.sample_objects(None, summary)
  fgs = {s: [Foreground(o.name, o.photo, o.category, obj=o) for o in objs]
         for s, objs in objects.items()}
  bgs = {s: sorted({o.photo for o in objs}) for s, objs in objects.items()}
  return fgs, bgs


def _folder(manual_dir: epath.PathLike, config: BuilderConfig, summary: Summary
            ) -> tuple[dict[str, list[Foreground]], dict[str, list[str]]]:
  root = epath.Path(manual_dir)
  for sub in ("fg", "alpha", "bg"):
    if not (root / sub).is_dir():
      raise FileNotFoundError(f"Matting folder '{root}' lacks '{sub}/': expected fg/, "
                              "alpha/ (mattes with the fg stems) and bg/")
  (fg, _), (alpha, shared) = (sources.images_by_stem(root / s, summary) for s in ("fg", "alpha"))
  # Backgrounds pair with no file: all of them, by stem (by name where stems repeat).
  files = [p for p in sorted((root / "bg").iterdir()) if p.suffix.lower() in sources.IMAGE_SUFFIXES]
  stems = collections.Counter(p.stem for p in files)
  bg = {(p.stem if stems[p.stem] == 1 else p.name): p for p in files}
  fgs = {s: [] for s in SPLITS}
  for stem in sorted(fg):
    if stem not in alpha:
      if stem not in shared:  # (Else already recorded as 'duplicate_stem'.)
        summary.add("missing_mask", os.fspath(fg[stem]))
      continue
    split = ("test" if sources.stable_fraction("split/" + stem) < config.test_fraction
             else "train")
    fgs[split].append(Foreground(stem, os.fspath(fg[stem]), alpha_path=os.fspath(alpha[stem])))
  bgs = {s: [] for s in SPLITS}
  for stem in sorted(bg):
    split = ("test" if sources.stable_fraction("bg/" + stem) < config.test_fraction
             else "train")
    bgs[split].append(os.fspath(bg[stem]))
  for s in SPLITS:  # A tiny folder could hash everything into one split.
    other = "train" if s == "test" else "test"
    if not bgs[s] and len(bgs[other]) > 1:
      bgs[s].append(bgs[other].pop())
  return fgs, bgs


def _alpha(fg: Foreground, shape: tuple[int, int], summary: Summary) -> np.ndarray | None:
  """uint8 [H, W] matte at the photo's decoded size (before resizing)."""
  if fg.alpha_path is not None:
    # Any mode (16-bit, colour, alpha, 0/1 labels); unreadable files are skipped.
    matte = photos.read_matte(fg.alpha_path, summary)
    if matte is None:
      return None
    if matte.shape != shape:
      summary.add("size_mismatch", fg.alpha_path)
      return None
    return matte
  mask = compose.object_mask(fg.obj, summary, shape)
  return None if mask is None else mask.astype(np.uint8) * np.uint8(255)


def _crop_box(rng: np.random.Generator, bg_hw: tuple[int, int], aspect: float,
              scale: tuple[float, float]) -> tuple[int, int, int, int]:
  """(top, left, h, w): a random crop of aspect w / h = `aspect`."""
  bh, bw = bg_hw
  h = min(bh, bw / aspect)
  s = np.sqrt(rng.uniform(*scale))
  h = max(1, int(round(h * s)))
  w = max(1, min(bw, int(round(h * aspect))))
  return int(rng.integers(0, bh - h + 1)), int(rng.integers(0, bw - w + 1)), h, w


def composite(foreground: np.ndarray, background: np.ndarray, alpha: np.ndarray) -> np.ndarray:
  """uint8 round(a * fg + (1 - a) * bg) with a = alpha / 255 (alpha uint8 [H, W, 1])."""
  a = alpha.astype(np.float64) / 255.0
  out = a * foreground.astype(np.float64) + (1.0 - a) * background.astype(np.float64)
  return np.round(out).astype(np.uint8)


def make_example(fg: Foreground, bg_path: str, variant: int, config: BuilderConfig,
                 seed_key: str, summary: Summary) -> dict[str, Any] | None:
  """One triplet at the background crop's size, or None (recorded in summary)."""
  photo, original, _ = photos.read_photo(fg.photo, summary)
  background, _, _ = photos.read_photo(bg_path, summary, config.max_size)
  if photo is None or background is None:
    return None
  matte = _alpha(fg, tuple(original), summary)
  if matte is None:
    return None
  rng = compose.rng_for(seed_key)
  top, left, h, w = _crop_box(rng, background.shape[:2], photo.shape[1] / photo.shape[0],
                              config.crop_scale)
  background = background[top:top + h, left:left + w]
  if rng.random() < 0.5:
    background = background[:, ::-1]
  size = (w, h)
  foreground = np.asarray(Image.fromarray(photo).resize(size, Image.BILINEAR))
  matte_img = Image.fromarray(matte).resize(size, Image.BILINEAR)
  if fg.alpha_path is None and config.alpha_sigma > 0:
    matte_img = matte_img.filter(ImageFilter.GaussianBlur(config.alpha_sigma))
  alpha = np.asarray(matte_img)[..., None]
  if not (alpha >= 128).any():
    summary.add("empty_mask", f"{fg.name} at {w}x{h}")
    return None
  mask = np.where(alpha >= 128, 255, 0).astype(np.uint8)
  background = np.ascontiguousarray(background)
  return {
      "foreground": compose.encode_png(foreground),
      "background": compose.encode_png(background),
      "real": compose.encode_png(composite(foreground, background, alpha)),
      "mask": compose.encode_png(mask),
      "alpha": compose.encode_png(alpha),
      "name": f"{fg.name}/{os.path.splitext(os.path.basename(bg_path))[0]}/v{variant:02d}",
      "category": fg.category,
  }


def features() -> tfds.features.FeaturesDict:
  """The triplets' features (also those of harmonax.self_taught's rounds)."""
  rgb = lambda: tfds.features.Image(shape=(None, None, 3), encoding_format="png")
  gray = lambda: tfds.features.Image(shape=(None, None, 1), encoding_format="png")
  return tfds.features.FeaturesDict({
      "foreground": rgb(), "background": rgb(), "real": rgb(),
      "mask": gray(), "alpha": gray(),
      "name": tfds.features.Text(), "category": tfds.features.Text(),
  })


class Builder(tfds.core.GeneratorBasedBuilder):
  """DatasetBuilder for compositing triplets."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "sample: the 10 annotated photos and 18 objects of "
               "harmonization_composites/sample 2.1.0 (train 108 -> 364 triplets); the test "
               "split is unchanged.",
  }
  BUILDER_CONFIGS = [
      BuilderConfig(name="sample", source="sample",
                    description="The 10 annotated photos of harmonization_composites/sample "
                    "and their 18 objects; polygon masks softened into mattes; no download."),
      BuilderConfig(name="folder", source="folder", max_size=1024,
                    description="A matting layout: fg/, alpha/ (same stems) and bg/."),
  ]
  # The version in every example's seed: 1.1.0 added photos and objects and keeps
  # the draws of the old triplets (the sample test split is byte-identical to 1.0.0's).
  DRAWS_VERSION = "1.0.0"
  DEFAULT_CONFIG_NAME = "sample"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  folder: a folder with fg/ (photos), alpha/ (a grayscale matte per photo, same stem) and
  bg/ (background photos), as matting datasets ship. The sample config needs no manual dir.
  """

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.summary = Summary()

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(features=features(), supervised_keys=None)

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    self.summary = Summary()
    if config.source == "sample":
      fgs, bgs = _sample(self.summary)
    else:
      fgs, bgs = _folder(dl_manager.manual_dir, config, self.summary)
    variants = dict(config.variants)
    jobs = {}
    for split in SPLITS:
      jobs[split] = [(fg, bg, v) for fg in fgs[split] for bg in bgs[split]
                     if os.path.abspath(bg) != os.path.abspath(fg.photo)
                     for v in range(variants.get(split, 1))]
    return {split: self._generate_examples(jobs[split], split) for split in SPLITS}

  def _generate_examples(self, jobs: list, split: str
                         ) -> Iterator[tuple[str, dict[str, Any]]]:
    config = self.builder_config
    for fg, bg, v in jobs:
      key = f"{fg.name}/{os.path.basename(bg)}/v{v:02d}"
      example = make_example(fg, bg, v, config, f"{config.name}/{self.DRAWS_VERSION}/{key}",
                             self.summary)
      if example is not None:
        self.summary.examples[split] += 1
        yield key, example

  def collect_summary(self) -> Summary:
    """The build's summary (skipped inputs and example counts)."""
    return self.summary
