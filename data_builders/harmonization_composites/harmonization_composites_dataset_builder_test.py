"""Tests of the harmonization_composites builder on dummy data, the sample and bad files."""

import dataclasses
import io
import json
import os
import struct
import subprocess
import sys
import unittest
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from data_builders.harmonization_composites import harmonization_composites_dataset_builder as hcb
from data_builders.harmonization_composites import sources

DUMMY = os.path.join(os.path.dirname(__file__), "dummy_data")

try:  # tfds' standard test needs TensorFlow (and dill), which harmonax does not.
  import tensorflow  # noqa: F401  pylint: disable=unused-import
  from tensorflow_datasets.testing import dataset_builder_testing
  _HAVE_TF = True
except ImportError:
  _HAVE_TF = False


def _base_test():
  # Not a module-level name: pytest would collect the bare base class as a test.
  return dataset_builder_testing.DatasetBuilderTestCase if _HAVE_TF else unittest.TestCase


@unittest.skipUnless(_HAVE_TF, "tfds.testing.DatasetBuilderTestCase needs TensorFlow")
class CocoDatasetBuilderTest(_base_test()):
  """The `tfds new` standard test, coco config (runs where TensorFlow is installed)."""
  DATASET_CLASS = hcb.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["coco"]
  SPLITS = {"train": 8, "test": 3}
  EXAMPLE_DIR = DUMMY


@unittest.skipUnless(_HAVE_TF, "tfds.testing.DatasetBuilderTestCase needs TensorFlow")
class FolderDatasetBuilderTest(_base_test()):
  """The `tfds new` standard test, folder config."""
  DATASET_CLASS = hcb.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["folder"]
  SPLITS = {"train": 4, "test": 1}
  EXAMPLE_DIR = DUMMY


def build(data_dir, config, manual_dir=DUMMY):
  """Builds `config` (a name or a BuilderConfig) as ArrayRecord; returns the builder."""
  builder = hcb.Builder(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=os.fspath(manual_dir) if manual_dir else None))
  return builder


def examples(builder, split):
  return {ex["name"].decode(): ex for ex in builder.as_data_source(split=split)}


def record_bytes(builder) -> dict[str, bytes]:
  path = builder.data_path
  return {p.name: p.read_bytes() for p in path.iterdir() if ".array_record" in p.name}


def check_example(ex):
  """Shapes, 0/255 mask, background equal to real, a recorded method."""
  comp, real, mask = ex["composite"], ex["real"], ex["mask"]
  assert comp.shape == real.shape and comp.shape[-1] == 3
  assert mask.shape == comp.shape[:2] + (1,)
  assert set(np.unique(mask)) <= {0, 255}
  background = mask[..., 0] == 0
  np.testing.assert_array_equal(comp[background], real[background])
  assert np.any(comp[~background] != real[~background])
  return json.loads(ex["transfer"])


@pytest.fixture(scope="module")
def coco_builder(tmp_path_factory):
  return build(tmp_path_factory.mktemp("coco"), "coco")


def test_coco_examples_follow_the_contract(coco_builder):
  train, test = examples(coco_builder, "train"), examples(coco_builder, "test")
  assert (len(train), len(test)) == (8, 3)
  annotations = json.load(open(os.path.join(DUMMY, "annotations", "instances_train2017.json")))
  category_names = {c["id"]: c["name"] for c in annotations["categories"]}
  category_of = {f"train2017/{a['image_id']:012d}/{a['id']}": category_names[a["category_id"]]
                 for a in annotations["annotations"]}
  for name, ex in train.items():
    transfer = check_example(ex)
    assert transfer["method"] in hcb.color_transfer.METHODS
    obj = name.rsplit("/", 1)[0]
    assert ex["category"].decode() == category_of[obj]
    if "reference" in transfer:  # Same category, another photo.
      assert category_of[transfer["reference"]] == category_of[obj]
      assert transfer["reference"].split("/")[1] != obj.split("/")[1]
  summary = coco_builder.collect_summary()
  assert summary.count("crowd") == 2 and summary.count("area_filtered") == 6


def test_coco_splits_share_no_photo(coco_builder):
  photos = {split: {n.split("/")[1] for n in examples(coco_builder, split)}
            for split in ("train", "test")}
  assert photos["train"] and photos["test"] and not photos["train"] & photos["test"]


def test_build_is_byte_identical(tmp_path):
  first = record_bytes(build(tmp_path / "a", "folder"))
  second = record_bytes(build(tmp_path / "b", "folder"))
  assert first and first == second


def test_build_is_byte_identical_across_processes(tmp_path):
  # Another process: protobuf's map order (feature keys) is seeded per process.
  code = ("import sys; from absl import flags; flags.FLAGS.mark_as_parsed(); "
          "from data_builders import datasets; datasets.build('harmonization_composites/folder', "
          "sys.argv[1], sys.argv[2])")
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  subprocess.run([sys.executable, "-c", code, os.fspath(tmp_path / "b"), DUMMY],
                 cwd=repo, check=True, capture_output=True, timeout=300)
  first = record_bytes(build(tmp_path / "a", "folder"))
  second = record_bytes(hcb.Builder(config="folder", data_dir=os.fspath(tmp_path / "b"),
                                    file_format="array_record"))
  assert first and first == second


def test_folder_splits_share_no_photo_and_references_stay_in_split(tmp_path):
  builder = build(tmp_path, "folder")
  names = {s: {n.split("/")[0] for n in examples(builder, s)} for s in ("train", "test")}
  assert names["train"] and names["test"] and not names["train"] & names["test"]
  for split in ("train", "test"):
    for ex in examples(builder, split).values():
      ref = json.loads(ex["transfer"]).get("reference")
      assert ref is None or ref in names[split]


def test_sample_photos_split_and_small_build(tmp_path):
  summary = hcb.Summary()
  objects = sources.sample_objects(None, summary)
  photos = {s: {os.path.basename(o.photo) for o in objects[s]} for s in ("train", "test")}
  assert photos["test"] == set(sources.SAMPLE_TEST_PHOTOS)
  assert not photos["train"] & photos["test"] and len(photos["train"]) >= 4
  assert len(objects["train"]) + len(objects["test"]) >= 10
  small = dataclasses.replace(hcb.Builder.BUILDER_CONFIGS[0], name="sample_small",
                              variants=(("train", 1), ("test", 1)),
                              methods=(("reinhard", 1.0), ("histogram", 1.0)))
  builder = build(tmp_path, small, manual_dir=None)
  train, test = examples(builder, "train"), examples(builder, "test")
  assert len(train) >= 7 and len(test) >= 4
  for ex in list(train.values()) + list(test.values()):
    check_example(ex)
  test_photos = {n.split("/")[0] + ".jpg" for n in test}
  assert test_photos <= set(sources.SAMPLE_TEST_PHOTOS)
  for ex in test.values():  # References come from the test photos only.
    assert json.loads(ex["transfer"])["reference"].split("/")[0] + ".jpg" in test_photos


def test_sample_config_sizes():
  sample = hcb.Builder.BUILDER_CONFIGS[0]
  objects = sources.sample_objects(sample, hcb.Summary())
  variants = dict(sample.variants)
  # 12 training photos: 13 annotated objects + 3 blobs each; 2 test photos, 5 objects.
  assert len(objects["train"]) == 13 + 12 * 3 and len(objects["test"]) == 5
  assert len(objects["train"]) * variants["train"] == 980
  assert len(objects["test"]) * variants["test"] == 60
  total = sum(os.path.getsize(p) for p in sources.SAMPLE_DIR.iterdir())
  assert total < 1 * 2 ** 20


def test_sample_blobs_are_seeded_regions_of_training_photos_only():
  config = hcb.Builder.BUILDER_CONFIGS[0]
  objects = sources.sample_objects(config, hcb.Summary())
  blobs = [o for o in objects["train"] if "/blob" in o.name]
  assert blobs and not any("/blob" in o.name for o in objects["test"])
  again = sources.sample_objects(config, hcb.Summary())["train"]
  assert [o.segmentation for o in again if "/blob" in o.name] == [o.segmentation for o in blobs]
  areas = []
  for obj in blobs:
    mask = hcb.compose.object_mask(obj, hcb.Summary(), (obj.height, obj.width))
    areas.append(mask.mean())
  assert 0.04 <= min(areas) and max(areas) <= 0.36
  assert len({round(a, 3) for a in areas}) > len(areas) // 2  # Different regions.
  mask = sources.blob_mask(40, 60, "x")
  assert mask.shape == (40, 60) and mask.dtype == bool
  np.testing.assert_array_equal(mask, sources.blob_mask(40, 60, "x"))
  assert (mask != sources.blob_mask(40, 60, "y")).any()


def test_unknown_method_is_an_error():
  with pytest.raises(ValueError, match="unknown methods \\['sepia'\\]"):
    hcb.BuilderConfig(name="x", methods=(("sepia", 1.0),))


def test_missing_manual_dir_content_is_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="lacks 'train2017'"):
    build(tmp_path / "data", "coco", manual_dir=tmp_path)
  with pytest.raises(FileNotFoundError, match="lacks 'images/'"):
    build(tmp_path / "data", "folder", manual_dir=tmp_path)


def _save(path, image, **kwargs):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  image.save(path, **kwargs)


def _texture(h, w, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(40, 200, (h, w, 3), dtype=np.uint8)


def _mask(h, w):
  m = np.zeros((h, w), np.uint8)
  m[h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 255
  return Image.fromarray(m)


def _png_16bit_rgb(array: np.ndarray) -> bytes:
  """A 48-bit RGB PNG of uint16 [H, W, 3] (Pillow cannot write one)."""
  h, w, _ = array.shape
  rows = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

  def chunk(kind, data):
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
          + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_bad_inputs_are_skipped_or_converted_and_counted(tmp_path):
  root = tmp_path / "manual"
  img, msk = root / "images", root / "masks"
  good = Image.fromarray(_texture(24, 32, 0))
  _save(img / "good.png", good)
  _save(msk / "good.png", _mask(24, 32))
  _save(img / "gray.png", good.convert("L"))
  _save(msk / "gray.png", _mask(24, 32))
  _save(img / "rgba.png", good.convert("RGBA"))
  _save(msk / "rgba.png", _mask(24, 32))
  _save(img / "palette.png", good.convert("P"))
  _save(msk / "palette.png", _mask(24, 32).convert("P"))
  deep = (np.asarray(good.convert("L"), np.uint16) * 257)
  _save(img / "deep.png", Image.fromarray(deep))
  _save(msk / "deep.png", _mask(24, 32))
  deep_rgb = _texture(24, 32, 3).astype(np.uint16) * 257 + 11
  (img / "deep_rgb.png").write_bytes(_png_16bit_rgb(deep_rgb))
  _save(msk / "deep_rgb.png", _mask(24, 32))
  # Stored 32x24 landscape, displayed (EXIF orientation 6) as 24x32 portrait.
  exif = Image.Exif()
  exif[0x0112] = 6
  stored = Image.fromarray(_texture(24, 32, 1))
  _save(img / "rotated.jpg", stored, exif=exif, quality=95)
  _save(msk / "rotated.png", _mask(32, 24))
  jpeg = io.BytesIO()
  Image.fromarray(_texture(96, 128, 2)).save(jpeg, format="JPEG")
  # Cut in the image data: the header reads, decoding fails.
  (img / "truncated.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 2 // 3])
  _save(msk / "truncated.png", _mask(96, 128))
  (img / "garbage.png").write_bytes(b"this is not an image")
  _save(msk / "garbage.png", _mask(24, 32))
  _save(img / "mismatch.png", good)
  _save(msk / "mismatch.png", _mask(20, 32))
  _save(img / "empty.png", good)
  _save(msk / "empty.png", Image.new("L", (32, 24)))
  _save(img / "labels.png", good)  # A 0/1 label mask: converted, not empty.
  _save(msk / "labels.png", Image.fromarray((np.asarray(_mask(24, 32)) > 0).astype(np.uint8)))
  _save(img / "dup.png", good)  # dup.png and dup.jpg: which one pairs is ambiguous.
  _save(img / "dup.jpg", good)
  _save(msk / "dup.png", _mask(24, 32))
  _save(img / "lonely.png", good)
  _save(msk / "orphan.png", _mask(24, 32))
  config = dataclasses.replace(hcb.Builder.BUILDER_CONFIGS[2], name="folder_exposure",
                               methods=(("exposure", 1.0),), min_fmse=0.1,
                               max_fmse=1e9, test_fraction=0.0)
  builder = build(tmp_path / "data", config, manual_dir=root)
  summary = builder.collect_summary()
  files = {k: {os.path.basename(f) for f in v} for k, v in summary.files.items()}
  assert files["truncated"] == {"truncated.jpg"}
  assert files["unreadable"] == {"garbage.png"}
  assert files["size_mismatch"] == {"mismatch.png"}
  assert files["empty_mask"] == {"empty.png"}
  assert files["missing_mask"] == {"lonely.png"}
  assert files["duplicate_stem"] == {"dup.png", "dup.jpg"}
  assert files["missing_image"] == {"orphan.png"}
  assert files["grayscale"] == {"gray.png"}
  assert files["alpha"] == {"rgba.png"}
  assert files["palette"] == {"palette.png"}
  assert files["16bit"] == {"deep.png", "deep_rgb.png"}
  assert files["exif_rotated"] == {"rotated.jpg"}
  assert files["mask_converted"] == {"palette.png", "labels.png"}
  text = summary.format()
  for name in ("truncated.jpg", "garbage.png", "mismatch.png", "orphan.png"):
    assert name in text
  built = {**examples(builder, "train"), **examples(builder, "test")}
  assert {n.split("/")[0] for n in built} == {
      "good", "gray", "rgba", "palette", "deep", "deep_rgb", "rotated", "labels"}
  for ex in built.values():
    check_example(ex)
  rotated = built["rotated/v00"]["real"]
  expected = np.asarray(Image.open(img / "rotated.jpg").transpose(Image.Transpose.ROTATE_270))
  np.testing.assert_array_equal(rotated, expected)
  np.testing.assert_array_equal(built["deep/v00"]["real"][..., 0], deep >> 8)
  np.testing.assert_array_equal(built["deep_rgb/v00"]["real"], deep_rgb >> 8)


def test_job_json_round_trip_gives_the_same_example():
  config = hcb.Builder.BUILDER_CONFIGS[1]
  objects = sources.coco_objects(DUMMY, config, hcb.Summary())
  job = hcb._jobs(objects, config, "1.0.0", hcb.Summary())["train"][0]  # pylint: disable=protected-access
  again = hcb.compose.job_from_dict(json.loads(json.dumps(hcb.compose.job_to_dict(job))))
  assert again == job and again.obj.segmentation == job.obj.segmentation
  a = hcb.compose.make_example(job, config, hcb.Summary())
  b = hcb.compose.make_example(again, config, hcb.Summary())
  assert a[0] == b[0] and a[1]["composite_crop"] == b[1]["composite_crop"]
