"""Tests of the composite record layout: box crop stored, whole composite decoded."""

import io
import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from data_builders.harmonization_composites import color_transfer
from data_builders.harmonization_composites import harmonization_composites_dataset_builder as hcb
from data_builders.harmonization_composites import record

DUMMY = os.path.join(os.path.dirname(__file__), "dummy_data")


def test_mask_box_is_the_tight_bounding_box():
  mask = np.zeros((7, 9), bool)
  mask[2, 3] = mask[5, 6] = True
  assert record.mask_box(mask) == (2, 3, 4, 4)


def test_rebuild_composite_pastes_the_crop_inside_the_mask_only():
  rng = np.random.default_rng(0)
  real = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
  mask = np.zeros((6, 8), np.uint8)
  mask[1:4, 2:6] = 255
  mask[1, 2] = 100  # Soft value below the threshold: background.
  crop = rng.integers(0, 256, (3, 4, 3), dtype=np.uint8)
  out = record.rebuild_composite(real, crop, (1, 2, 3, 4), mask[..., None])
  fg = mask > 127
  np.testing.assert_array_equal(out[~fg], real[~fg])
  np.testing.assert_array_equal(out[fg], crop[fg[1:4, 2:6]])
  np.testing.assert_array_equal(record.rebuild_composite(real, crop, (1, 2, 3, 4), fg), out)
  with pytest.raises(ValueError, match="does not fit the 8x6 real image"):
    record.rebuild_composite(real, crop, (4, 2, 3, 4), mask)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
  builder = hcb.Builder(config="coco", data_dir=os.fspath(tmp_path_factory.mktemp("coco")),
                        file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=DUMMY))
  return builder


def test_records_store_the_box_and_the_photo_bytes(coco):
  skip = {k: tfds.decode.SkipDecoding() for k in (record.CROP, "real", "mask")}
  for ex in coco.as_data_source(split="train", decoders=skip):
    # Decoding skipped: the stored fields come back as they are.
    assert "composite" not in ex
    mask = np.asarray(Image.open(io.BytesIO(ex["mask"])))
    top, left, h, w = ex[record.BOX].tolist()
    assert (top, left, h, w) == record.mask_box(mask > 127)
    assert Image.open(io.BytesIO(ex[record.CROP])).size == (w, h)
    # The COCO photos are 8-bit RGB JPEGs: stored as they are, no re-encoding.
    photo = ex["name"].decode().split("/")[1] + ".jpg"
    with open(os.path.join(DUMMY, "train2017", photo), "rb") as f:
      assert ex["real"] == f.read()


def test_decoded_composites_mean_what_they_did(coco):
  for ex in coco.as_data_source(split="train"):
    assert set(ex) == {"composite", "real", "mask", "name", "transfer", "category"}
    fg = ex["mask"][..., 0] > 127
    np.testing.assert_array_equal(ex["composite"][~fg], ex["real"][~fg])
    # The recorded foreground MSE is that of the decoded composite.
    fmse = color_transfer.foreground_mse(ex["composite"], ex["real"], fg)
    assert json.loads(ex["transfer"])["fmse"] == pytest.approx(fmse, abs=0.006)


def test_tensorflow_decoding_rebuilds_the_same_composite(coco, tmp_path):
  pytest.importorskip("tensorflow")
  # as_dataset (TF decoding) reads TFRecord files: the same build in that format.
  builder = hcb.Builder(config="coco", data_dir=os.fspath(tmp_path), file_format="tfrecord")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=DUMMY))
  numpy_decoded = {ex["name"]: ex for ex in coco.as_data_source(split="train")}
  tf_decoded = list(tfds.as_numpy(builder.as_dataset(split="train")))
  assert len(tf_decoded) == len(numpy_decoded)
  for ex in tf_decoded:
    assert "composite_crop" not in ex
    pillow = numpy_decoded[ex["name"]]
    fg = ex["mask"][..., 0] > 127
    # TF's JPEG decoder reads `real` (the photo's JPEG bytes) a few levels off
    # Pillow's; the background follows whichever decoder read `real`, exactly ...
    np.testing.assert_array_equal(ex["composite"][~fg], ex["real"][~fg])
    assert np.abs(ex["real"].astype(int) - pillow["real"]).max() <= 8
    # ... and the stored foreground is the same for every reader.
    np.testing.assert_array_equal(ex["composite"][fg], pillow["composite"][fg])
