"""Where the real photos and their object masks come from: sample, COCO, or a folder.

Each source lists `Obj`s (one foreground object of one photo) per split, from
annotations and file headers only; pixels are decoded later, per example. The
sample source adds random blob regions of its training photos as objects
(`blob_mask`), so that a few photos give many different foregrounds.
"""

import dataclasses
import hashlib
import json
import os
from typing import Any

from etils import epath
import numpy as np
from pycocotools import mask as coco_mask

from data_builders.harmonization_composites import photos
from data_builders.harmonization_composites.summary import Summary

SAMPLE_DIR = epath.Path(__file__).parent / "sample"
# The sample photos held out for the test split (train and test share no photo).
SAMPLE_TEST_PHOTOS = ("coffee.jpg", "coins.jpg")
COCO_SPLITS = {"train": "train2017", "test": "val2017"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


@dataclasses.dataclass(frozen=True)
class Obj:
  """One foreground object: its photo, its mask and what it is."""
  name: str              # Unique and stable, e.g. 'astronaut/helmet'.
  photo: str             # Path of the photo file.
  category: str          # '' where the source has no categories.
  height: int            # The photo's size, as the annotation states it.
  width: int
  # COCO polygons / RLE (sample, coco), or None; not part of the identity.
  segmentation: Any = dataclasses.field(default=None, compare=False)
  mask_path: str | None = None  # A mask file (folder).


def _seed(text: str) -> int:
  """A 64-bit number from `text` alone (not Python's salted hash())."""
  return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def stable_fraction(text: str) -> float:
  """A number in [0, 1) from `text` alone."""
  return _seed(text) / 2.0 ** 64


def _coco_objects(annotations: dict[str, Any], image_dir: epath.Path, prefix: str,
                  min_area: float, max_area: float, max_objects: int,
                  summary: Summary) -> list[Obj]:
  """Objects of a COCO-format annotation dict, filtered by area, crowds excluded."""
  categories = {c["id"]: c["name"] for c in annotations.get("categories", [])}
  by_image: dict[int, list[dict[str, Any]]] = {}
  for ann in annotations.get("annotations", []):
    by_image.setdefault(ann["image_id"], []).append(ann)
  objects = []
  for image in sorted(annotations.get("images", []), key=lambda im: im["id"]):
    path = image_dir / image["file_name"]
    area = float(image["height"] * image["width"])
    kept = []
    for ann in sorted(by_image.get(image["id"], []), key=lambda a: a["id"]):
      if ann.get("iscrowd", 0):
        summary.add("crowd", f"{image['file_name']}#{ann['id']}")
      elif not min_area <= ann["area"] / area <= max_area:
        summary.add("area_filtered", f"{image['file_name']}#{ann['id']}")
      else:
        kept.append(ann)
    # The largest objects first: their colors are the most learnable.
    kept.sort(key=lambda a: (-a["area"], a["id"]))
    stem = os.path.splitext(image["file_name"])[0]
    for ann in kept[:max_objects]:
      label = ann.get("object_name") or str(ann["id"])
      objects.append(Obj(name=f"{prefix}{stem}/{label}", photo=os.fspath(path),
                         category=categories.get(ann["category_id"], ""),
                         height=image["height"], width=image["width"],
                         segmentation=ann["segmentation"]))
  return objects


def _upsample(coarse: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bilinear upsampling of a small grid to [height, width] (plain numpy: the
  same floats on every machine)."""
  gh, gw = coarse.shape
  xs, ys = np.linspace(0, gw - 1, width), np.linspace(0, gh - 1, height)
  rows = np.stack([np.interp(xs, np.arange(gw), r) for r in coarse])  # [gh, W]
  return np.stack([np.interp(ys, np.arange(gh), c) for c in rows.T], axis=1)  # [H, W]


def blob_mask(height: int, width: int, key: str,
              area_range: tuple[float, float] = (0.05, 0.35)) -> np.ndarray:
  """A random smooth region (bool [height, width]) seeded by `key` alone.

  A Gaussian bump at a random place and scale plus low-frequency noise,
  thresholded at the quantile that gives an area drawn from `area_range`:
  mostly one irregular blob, sometimes with a smaller second part. Harmonizer
  makes its training pairs on regions like these: a region of any photo
  recolored must be put back whatever it shows.
  """
  rng = np.random.default_rng(_seed("blob/" + key))
  noise = _upsample(rng.normal(size=(5, 5)), height, width)
  cy, cx = rng.uniform(0.2, 0.8, 2) * (height, width)
  sy, sx = rng.uniform(0.12, 0.35, 2) * (height, width)
  y, x = np.arange(height)[:, None], np.arange(width)[None, :]
  bump = np.exp(-0.5 * (((y - cy) / sy) ** 2 + ((x - cx) / sx) ** 2))
  field = 2.5 * bump + 0.5 * noise
  area = rng.uniform(*area_range)
  return field > np.quantile(field, 1.0 - area)


def _blob_objects(image: dict[str, Any], image_dir: epath.Path, count: int) -> list[Obj]:
  """`count` blob regions of one photo as objects (masks as COCO RLE)."""
  stem = os.path.splitext(image["file_name"])[0]
  objects = []
  for i in range(count):
    name = f"{stem}/blob{i}"
    mask = blob_mask(image["height"], image["width"], name)
    rle = coco_mask.encode(np.asfortranarray(mask.astype(np.uint8)))
    objects.append(Obj(name=name, photo=os.fspath(image_dir / image["file_name"]),
                       category="", height=image["height"], width=image["width"],
                       segmentation={"size": [int(v) for v in rle["size"]],
                                     "counts": rle["counts"].decode("ascii")}))
  return objects


def sample_objects(config, summary: Summary) -> dict[str, list[Obj]]:
  """The embedded sample photos' objects, split by photo; the training photos
  also give `config.blobs_per_photo` random blob regions each."""
  annotations = json.loads((SAMPLE_DIR / "annotations.json").read_text())
  objects = _coco_objects(annotations, SAMPLE_DIR, "", 0.0, 1.0, 3, summary)
  is_test = lambda path: os.path.basename(path) in SAMPLE_TEST_PHOTOS
  blobs = getattr(config, "blobs_per_photo", 0)
  for image in sorted(annotations["images"], key=lambda im: im["id"]):
    if not is_test(image["file_name"]):
      objects += _blob_objects(image, SAMPLE_DIR, blobs)
  test = [o for o in objects if is_test(o.photo)]
  return {"train": [o for o in objects if o not in test], "test": test}


def coco_objects(manual_dir: epath.PathLike, config, summary: Summary
                 ) -> dict[str, list[Obj]]:
  """COCO 2017 objects: train2017 -> train, val2017 -> test.

  Raises:
    FileNotFoundError: naming the missing folder or annotation file.
  """
  root = epath.Path(manual_dir)
  out = {}
  for split, folder in COCO_SPLITS.items():
    ann_path = root / "annotations" / f"instances_{folder}.json"
    for needed in (root / folder, ann_path):
      if not needed.exists():
        raise FileNotFoundError(
            f"COCO manual dir '{root}' lacks '{needed.relative_to(root)}': expected "
            "train2017/, val2017/ and annotations/instances_{train,val}2017.json")
    annotations = json.loads(ann_path.read_text())
    out[split] = _coco_objects(annotations, root / folder, f"{folder}/",
                               config.min_area, config.max_area,
                               config.max_objects_per_photo, summary)
  return out


def images_by_stem(folder: epath.Path, summary: Summary
                   ) -> tuple[dict[str, epath.Path], set[str]]:
  """(the image files of `folder` by stem, the stems shared by several files).

  Files that share a stem (a.jpg, a.png) are all left out and recorded as
  'duplicate_stem'.
  """
  by_stem: dict[str, list[epath.Path]] = {}
  for p in sorted(folder.iterdir()):
    if p.suffix.lower() in IMAGE_SUFFIXES:
      by_stem.setdefault(p.stem, []).append(p)
  shared = {stem for stem, paths in by_stem.items() if len(paths) > 1}
  for stem in shared:
    for p in by_stem[stem]:
      summary.add("duplicate_stem", os.fspath(p))
  return {stem: paths[0] for stem, paths in by_stem.items() if stem not in shared}, shared


def _split_of(stem: str, test_fraction: float) -> str:
  return "test" if stable_fraction("split/" + stem) < test_fraction else "train"


def folder_objects(manual_dir: epath.PathLike, config, summary: Summary
                   ) -> dict[str, list[Obj]]:
  """Photos in `images/` with masks of the same stem in `masks/` (one object each).

  The split of a photo is a hash of its stem: adding photos moves no other photo.
  Masks are decoded here (area filter, empty masks); photos only read headers.

  Raises:
    FileNotFoundError: naming a missing images/ or masks/ folder.
  """
  root = epath.Path(manual_dir)
  listings = {}
  for sub in ("images", "masks"):
    if not (root / sub).is_dir():
      raise FileNotFoundError(
          f"Folder manual dir '{root}' lacks '{sub}/': expected images/ and masks/ "
          "holding photos and masks with matching stems")
    listings[sub] = images_by_stem(root / sub, summary)
  (images, shared), (masks, shared_masks) = listings["images"], listings["masks"]
  for stem in sorted(set(masks) - set(images) - shared):
    summary.add("missing_image", os.fspath(masks[stem]))
  out = {"train": [], "test": []}
  for stem in sorted(images):
    if stem not in masks:
      if stem not in shared_masks:
        summary.add("missing_mask", os.fspath(images[stem]))
      continue
    size = photos.oriented_size(images[stem], summary)
    mask = photos.read_mask(masks[stem], summary)
    if size is None or mask is None:
      continue
    if mask.shape != (size[1], size[0]):
      summary.add("size_mismatch", os.fspath(masks[stem]))
      continue
    fraction = mask.mean()
    if fraction == 0:
      summary.add("empty_mask", os.fspath(masks[stem]))
      continue
    if not config.min_area <= fraction <= config.max_area:
      summary.add("area_filtered", os.fspath(masks[stem]))
      continue
    out[_split_of(stem, config.test_fraction)].append(Obj(
        name=stem, photo=os.fspath(images[stem]), category="", height=size[1],
        width=size[0], mask_path=os.fspath(masks[stem])))
  # A tiny folder could hash every photo into one split: keep both non-empty.
  if not out["test"] and len(out["train"]) > 1:
    moved = min(out["train"], key=lambda o: stable_fraction("split/" + o.name))
    out["train"].remove(moved)
    out["test"].append(moved)
  return out


def pick_reference(obj: Obj, candidates: list[Obj], by_category: dict[str, list[Obj]],
                   rng: np.random.Generator, tries: int = 20) -> Obj | None:
  """Another object: same category from another photo, else any from another
  photo, else another object of the same photo; None if there is none.

  Rejection sampling (a few random draws per pool) keeps this O(1) per call on
  COCO's 100k-object categories.
  """
  pools = ([by_category.get(obj.category, [])] if obj.category else []) + [candidates]
  for pool in pools:
    for _ in range(tries if pool else 0):
      ref = pool[int(rng.integers(len(pool)))]
      if ref.photo != obj.photo:
        return ref
  others = [o for o in candidates if o.photo == obj.photo and o.name != obj.name]
  return others[int(rng.integers(len(others)))] if others else None
