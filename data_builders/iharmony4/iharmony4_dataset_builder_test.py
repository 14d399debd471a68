"""Tests of the iHarmony4 builder on the dummy data (official layout, tiny images)."""

import io
import json
import logging
import os
import shutil
import unittest

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from data_builders.iharmony4 import iharmony4_dataset_builder as ihd

DUMMY = os.path.join(os.path.dirname(__file__), "dummy_data")

try:  # tfds' standard test needs TensorFlow (and dill), which harmonax does not.
  import tensorflow  # noqa: F401  pylint: disable=unused-import
  from tensorflow_datasets.testing import dataset_builder_testing
  _HAVE_TF = True
except ImportError:
  _HAVE_TF = False


@unittest.skipUnless(_HAVE_TF, "tfds.testing.DatasetBuilderTestCase needs TensorFlow")
class Iharmony4DatasetBuilderTest(
    dataset_builder_testing.DatasetBuilderTestCase if _HAVE_TF else unittest.TestCase):
  """The `tfds new` standard test (runs where TensorFlow is installed)."""
  DATASET_CLASS = ihd.Builder
  BUILDER_CONFIG_NAMES_TO_TEST = ["all", "all_1024"]
  SPLITS = {"train": 9, "test": 5}
  EXAMPLE_DIR = DUMMY


def _build(tmp_path, config="all", manual_dir=DUMMY):
  builder = ihd.Builder(config=config, data_dir=os.fspath(tmp_path / "data"),
                        file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def _by_name(builder, split):
  return {ex["name"].decode(): ex for ex in builder.as_data_source(split=split)}


def _decode(path, mode="RGB"):
  return np.asarray(Image.open(path).convert(mode))


def test_parse_composite_name_splits_on_underscores_only():
  assert ihd.parse_composite_name("a0001_1_1.jpg") == ("a0001.jpg", "a0001_1.png")
  assert ihd.parse_composite_name("composite_images/c101_12_3.jpg") == (
      "c101.jpg", "c101_12.png")
  assert ihd.parse_composite_name("d21901-20130410-181833_1_9.jpg") == (
      "d21901-20130410-181833.jpg", "d21901-20130410-181833_1.png")
  with pytest.raises(ValueError, match="a0001_1.jpg"):
    ihd.parse_composite_name("a0001_1.jpg")


def test_all_config_matches_the_files(tmp_path):
  builder = _build(tmp_path)
  assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {
      "train": 9, "test": 5}
  train = _by_name(builder, "train")
  test = _by_name(builder, "test")
  assert not set(train) & set(test)
  with open(os.path.join(DUMMY, "IHD_test.txt")) as f:
    assert sorted(test) == sorted(os.path.basename(l.strip()) for l in f if l.strip())
  ex = train["c101_1_2.jpg"]
  root = os.path.join(DUMMY, "HCOCO")
  # Stored as the original JPEG bytes: decoding gives exactly Pillow's decode of the file.
  np.testing.assert_array_equal(
      ex["composite"], _decode(os.path.join(root, "composite_images", "c101_1_2.jpg")))
  np.testing.assert_array_equal(ex["real"], _decode(os.path.join(root, "real_images", "c101.jpg")))
  mask = _decode(os.path.join(root, "masks", "c101_1.png"), "L")
  assert ex["mask"].shape == mask.shape + (1,)
  np.testing.assert_array_equal(ex["mask"][..., 0], mask)
  assert set(np.unique(ex["mask"])) == {0, 255}
  assert ex["subset"] == b"HCOCO" and ex["category"] == b""
  assert json.loads(ex["transfer"]) == {"method": "iharmony4"}
  assert {e["subset"] for e in train.values()} == {
      s.encode() for s in ihd.SUBSETS}


def test_hday2night_hyphenated_names(tmp_path):
  builder = _build(tmp_path, "hday2night")
  train = _by_name(builder, "train")
  assert sorted(train) == ["d00420-20130411-064512_2_3.jpg", "d21901-20130410-181833_1_9.jpg"]
  real = _decode(os.path.join(DUMMY, "Hday2night", "real_images", "d21901-20130410-181833.jpg"))
  np.testing.assert_array_equal(train["d21901-20130410-181833_1_9.jpg"]["real"], real)
  assert builder.info.splits["test"].num_examples == 1


def test_ihd_list_is_used_when_a_subset_list_is_missing(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(DUMMY, manual)
  for split in ("train", "test"):
    os.remove(manual / "HFlickr" / f"HFlickr_{split}.txt")
  builder = _build(tmp_path, "hflickr", manual)
  assert sorted(_by_name(builder, "train")) == ["f1001_1_1.jpg", "f1002_2_1.jpg"]
  assert sorted(_by_name(builder, "test")) == ["f1002_1_1.jpg"]


def test_missing_files_are_listed_with_their_count(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(DUMMY, manual)
  for name in os.listdir(manual / "HCOCO" / "masks"):
    os.remove(manual / "HCOCO" / "masks" / name)
  os.remove(manual / "HFlickr" / "real_images" / "f1002.jpg")
  with pytest.raises(FileNotFoundError) as err:
    _build(tmp_path, "all", manual)
  message = str(err.value)
  assert "5 file(s)" in message and " more" not in message
  assert "HCOCO/masks/c101_1.png" in message and "HFlickr/real_images/f1002.jpg" in message
  for name in os.listdir(manual / "HCOCO" / "real_images"):
    os.remove(manual / "HCOCO" / "real_images" / name)
  with pytest.raises(FileNotFoundError, match=r"7 file\(s\).* and 2 more"):
    _build(tmp_path, "all", manual)
  shutil.rmtree(manual / "HAdobe5k")
  with pytest.raises(FileNotFoundError, match=r"lacks the subset folder\(s\) \['HAdobe5k'\]"):
    _build(tmp_path, "hadobe5k", manual)


def test_manual_dir_one_level_up_is_accepted(tmp_path):
  # The official archive unpacks into a single folder.
  shutil.copytree(os.path.join(DUMMY, "Hday2night"),
                  tmp_path / "manual" / "Image_Harmonization_Dataset" / "Hday2night")
  builder = _build(tmp_path, "hday2night", tmp_path / "manual")
  assert builder.info.splits["train"].num_examples == 2


def test_resized_configs_bound_the_long_side():
  configs = {c.name: c for c in ihd.Builder.BUILDER_CONFIGS}
  assert {n: (c.subsets, c.max_size) for n, c in configs.items() if c.max_size} == {
      "all_1024": (ihd.SUBSETS, 1024), "hadobe5k_1024": (("HAdobe5k",), 1024),
      "hadobe5k_2048": (("HAdobe5k",), 2048)}


def test_max_size_resizes_long_side_and_keeps_binary_masks(tmp_path):
  config = ihd.BuilderConfig(name="hadobe5k_16", subsets=("HAdobe5k",), max_size=16)
  builder = _build(tmp_path, config)
  for ex in builder.as_data_source(split="train"):
    # a0001 is 40x28 (w x h): long side 40 -> 16, short side round(28 * 0.4) = 11.
    assert ex["composite"].shape == (11, 16, 3)
    assert ex["real"].shape == (11, 16, 3) and ex["mask"].shape == (11, 16, 1)
    assert set(np.unique(ex["mask"])) <= {0, 255}
  (test,) = builder.as_data_source(split="test")
  assert test["composite"].shape == (16, 11, 3)  # a0002 is portrait, 28x40.


def test_size_mismatch_names_the_files():
  buf = {}
  for key, size in (("composite", (8, 6)), ("real", (8, 6)), ("mask", (7, 6))):
    img = Image.new("L" if key == "mask" else "RGB", size)
    out = io.BytesIO()
    img.save(out, format="PNG" if key == "mask" else "JPEG")
    buf[key] = out.getvalue()
  ex = {"key": "HCOCO/x_1_1.jpg", "composite": "c.jpg", "real": "r.jpg", "mask": "m.png"}
  with pytest.raises(ihd.UnreadableExampleError,
                     match=r"HCOCO/x_1_1.jpg: sizes differ.*mask \(7, 6\) m.png"):
    ihd._prepare_images(ex, buf["composite"], buf["real"], buf["mask"], None)


def test_unreadable_files_are_skipped_counted_and_named(tmp_path, caplog):
  # A truncated JPEG opens (its header is whole) and used to build, then failed
  # at evaluation inside the data loader, naming no file.
  manual = tmp_path / "manual"
  shutil.copytree(DUMMY, manual)
  truncated = manual / "HFlickr" / "composite_images" / "f1001_1_1.jpg"
  data = truncated.read_bytes()
  truncated.write_bytes(data[:len(data) // 2])
  Image.open(truncated).size  # pylint: disable=expression-not-assigned
  (manual / "HCOCO" / "real_images" / "c202.jpg").write_text("<html>Not found</html>")
  # An empty mask would score fMSE 0: skipped too (a0002_1_4, test).
  empty = manual / "HAdobe5k" / "masks" / "a0002_1.png"
  Image.new("L", Image.open(empty).size).save(empty)
  with caplog.at_level(logging.WARNING):
    builder = _build(tmp_path, "all", manual)
  # c202.jpg is the real image of train c202_3_1 and test c202_4_1.
  assert {s: builder.info.splits[s].num_examples for s in ("train", "test")} == {
      "train": 7, "test": 3}
  assert "f1001_1_1.jpg" not in _by_name(builder, "train")
  assert "c202_4_1.jpg" not in _by_name(builder, "test")
  text = caplog.text
  assert f"composite {truncated} is not a readable image" in text
  assert "real image" in text and "HCOCO/real_images/c202.jpg" in text
  assert "skipped 2 of 9 examples" in text and "skipped 2 of 5 examples" in text
  assert f"mask {empty} has no foreground pixels" in text


def test_malformed_or_repeated_list_lines_name_the_list(tmp_path):
  from data_builders import datasets  # pylint: disable=g-import-not-at-top
  manual = tmp_path / "manual"
  shutil.copytree(DUMMY, manual)
  listing = manual / "HCOCO" / "HCOCO_train.txt"
  original = listing.read_text()
  listing.write_text(original + "README\n")
  with pytest.raises(datasets.BuildInputError, match=f"{listing}: line 'README': iHarmony4"):
    ihd.list_examples(manual, ("HCOCO",), "train")
  listing.write_text(original + original.splitlines()[0] + "\n")
  with pytest.raises(datasets.BuildInputError, match="c101_1_1.jpg is listed twice"):
    ihd.list_examples(manual, ("HCOCO",), "train")
