"""compositing_triplets: targets are alpha * fg + (1 - alpha) * bg, builds are byte-identical."""

import glob
import io
import os

import numpy as np
from PIL import Image
import pytest

from data_builders import datasets
from data_builders.compositing_triplets import compositing_triplets_dataset_builder as ctb
from data_builders.harmonization_composites.summary import Summary


def _decode(data: bytes) -> np.ndarray:
  a = np.asarray(Image.open(io.BytesIO(data)))
  return a[..., None] if a.ndim == 2 else a


def _check_target(example):
  fg, bg, real = (_decode(example[k]).astype(np.float64)
                  for k in ("foreground", "background", "real"))
  alpha, mask = _decode(example["alpha"]), _decode(example["mask"])
  assert fg.shape == bg.shape == real.shape and alpha.shape == mask.shape == fg.shape[:2] + (1,)
  a = alpha / 255.0
  np.testing.assert_array_equal(real, np.round(a * fg + (1 - a) * bg))
  np.testing.assert_array_equal(mask, np.where(alpha >= 128, 255, 0))
  assert 0 < mask.mean() < 255


def test_sample_examples_are_deterministic_and_targets_are_alpha_composites():
  summary = Summary()
  fgs, bgs = ctb._sample(summary)  # pylint: disable=protected-access
  assert fgs["test"] and fgs["train"] and not set(bgs["train"]) & set(bgs["test"])
  config = ctb.Builder.BUILDER_CONFIGS[0]
  fg = fgs["test"][0]
  bg = next(b for b in bgs["test"] if b != fg.photo)
  first = ctb.make_example(fg, bg, 0, config, "k", summary)
  again = ctb.make_example(fg, bg, 0, config, "k", summary)
  other = ctb.make_example(fg, bg, 1, config, "k1", summary)
  assert first == again and first["real"] != other["real"]
  _check_target(first)
  # A soft matte: the sample's polygons are blurred into fractional edges.
  alpha = _decode(first["alpha"])
  assert ((alpha > 0) & (alpha < 255)).any()


def _matting_folder(root):
  rng = np.random.default_rng(0)
  for sub in ("fg", "alpha", "bg"):
    os.makedirs(root / sub)
  for i in range(4):
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(
        root / "fg" / f"p{i}.png")
    matte = np.zeros((30, 40), np.uint8)
    matte[5:25, 8:30] = 255
    matte[5:25, 30:33] = 100  # A soft edge.
    Image.fromarray(matte).save(root / "alpha" / f"p{i}.png")
    Image.fromarray(rng.integers(0, 256, (50, 60, 3), dtype=np.uint8)).save(
        root / "bg" / f"b{i}.jpg")


def _records(data_dir):
  files = sorted(glob.glob(os.path.join(data_dir, "compositing_triplets", "folder", "*",
                                        "*.array_record*")))
  assert files
  return [open(f, "rb").read() for f in files]


def test_folder_build_is_byte_identical(tmp_path):
  _matting_folder(tmp_path / "manual")
  builds = []
  for name in ("a", "b"):
    summary = datasets.build("compositing_triplets/folder", os.fspath(tmp_path / name),
                          os.fspath(tmp_path / "manual"))
    assert summary.examples["train"] > 0 and summary.examples["test"] > 0
    builds.append(_records(os.fspath(tmp_path / name)))
  assert builds[0] == builds[1]


def test_folder_examples_follow_the_matte(tmp_path):
  _matting_folder(tmp_path)
  fgs, bgs = ctb._folder(tmp_path, ctb.Builder.BUILDER_CONFIGS[1], Summary())  # pylint: disable=protected-access
  example = ctb.make_example(fgs["train"][0], bgs["train"][0], 0,
                             ctb.Builder.BUILDER_CONFIGS[1], "k", Summary())
  _check_target(example)
  alpha = _decode(example["alpha"])
  assert ((alpha > 0) & (alpha < 255)).any()  # The matte's soft values survive.


def test_folder_without_alpha_names_it(tmp_path):
  (tmp_path / "fg").mkdir()
  (tmp_path / "bg").mkdir()
  with pytest.raises(FileNotFoundError, match="alpha/"):
    ctb._folder(tmp_path, ctb.Builder.BUILDER_CONFIGS[1], Summary())  # pylint: disable=protected-access


def test_folder_mattes_of_any_mode_bad_files_and_shared_stems(tmp_path):
  _matting_folder(tmp_path)
  matte = np.asarray(Image.open(tmp_path / "alpha" / "p0.png"))
  # 16-bit: convert("L") used to saturate it (the soft edge and the size grew).
  Image.fromarray(matte.astype(np.uint16) * 257).save(tmp_path / "alpha" / "p1.png")
  (tmp_path / "alpha" / "p2.png").write_text("<html>Not found</html>")  # Was a traceback.
  Image.fromarray(matte).save(tmp_path / "alpha" / "p3.tif")  # p3.png and p3.tif.
  summary = Summary()
  fgs, _ = ctb._folder(tmp_path, ctb.Builder.BUILDER_CONFIGS[1], summary)  # pylint: disable=protected-access
  by_name = {fg.name: fg for split in fgs.values() for fg in split}
  assert sorted(by_name) == ["p0", "p1", "p2"]
  assert {os.path.basename(f) for f in summary.files["duplicate_stem"]} == {"p3.png", "p3.tif"}
  shape = matte.shape
  np.testing.assert_array_equal(ctb._alpha(by_name["p1"], shape, summary), matte)  # pylint: disable=protected-access
  assert ctb._alpha(by_name["p2"], shape, summary) is None  # pylint: disable=protected-access
  assert {os.path.basename(f) for f in summary.files["unreadable"]} == {"p2.png"}
