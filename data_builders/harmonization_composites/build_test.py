"""Tests of `python -m data_builders.build` and its `build()` function (incl. the Beam path)."""

import io
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from data_builders import datasets as build_lib
from data_builders.harmonization_composites import harmonization_composites_dataset_builder as hcb

HERE = os.path.dirname(__file__)
DUMMY = os.path.join(HERE, "dummy_data")
REPO = os.path.dirname(os.path.dirname(HERE))
VERSION = str(hcb.Builder.VERSION)


def _examples(data_dir, name):
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder_from_directory(os.path.join(data_dir, name, VERSION))
  return {split: {ex["name"].decode(): ex for ex in builder.as_data_source(split=split)}
          for split in ("train", "test")}


def test_build_returns_summary_then_reuses_the_dataset(tmp_path):
  summary = build_lib.build("harmonization_composites/folder", os.fspath(tmp_path), DUMMY)
  assert dict(summary.examples) == {"train": 4, "test": 1}
  again = build_lib.build("harmonization_composites/folder", os.fspath(tmp_path), DUMMY)
  assert dict(again.examples) == {"train": 4, "test": 1}
  assert not again.files  # Nothing was read the second time.
  assert again.already_built and not summary.already_built


def test_a_build_where_nothing_survives_shows_why(tmp_path):
  manual = tmp_path / "manual"
  for sub in ("images", "masks"):
    (manual / sub).mkdir(parents=True)
  Image.new("RGB", (32, 24)).save(manual / "images" / "a.png")
  Image.new("L", (30, 24), 255).save(manual / "masks" / "a.png")  # Another size.
  # TFDS' "AssertionError: No examples were yielded", without the summary, before.
  with pytest.raises(build_lib.BuildInputError) as e:
    build_lib.build("harmonization_composites/folder", os.fspath(tmp_path / "d"),
                    os.fspath(manual))
  assert "no example survived" in str(e.value) and "size" in str(e.value)
  assert "a.png" in str(e.value)


def test_data_dir_defaults_to_tfds_data_dir(tmp_path, monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", os.fspath(tmp_path))
  build_lib.build("harmonization_composites/folder", None, DUMMY)
  assert (tmp_path / "harmonization_composites" / "folder" / VERSION /
          "dataset_info.json").exists()


def test_unknown_dataset_and_config_name_the_valid_ones(tmp_path):
  with pytest.raises(ValueError, match="Unknown dataset 'nope'.*harmonization_composites"):
    build_lib.build("nope/x", os.fspath(tmp_path))
  with pytest.raises(ValueError, match="Unknown config 'bogus'.*'sample', 'coco', 'folder'"):
    build_lib.build("harmonization_composites/bogus", os.fspath(tmp_path))


def test_only_the_embedded_samples_build_without_a_manual_dir():
  assert not build_lib.needs_manual_dir("harmonization_composites/sample")
  assert not build_lib.needs_manual_dir("compositing_triplets/sample")
  assert build_lib.needs_manual_dir("harmonization_composites/folder")
  assert build_lib.needs_manual_dir("compositing_triplets/folder")


def test_beam_without_apache_beam_says_how_to_install(tmp_path):
  try:
    import apache_beam  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
    pytest.skip("apache_beam is installed")
  except ImportError:
    pass
  with pytest.raises(ImportError, match=r"pip install -e \.\[beam\]"):
    build_lib.build("harmonization_composites/folder", os.fspath(tmp_path), DUMMY, beam=True)


def test_iharmony4_builds_through_the_same_command(tmp_path):
  manual = os.path.join(REPO, "data_builders", "iharmony4", "dummy_data")
  if not os.path.isdir(manual):
    pytest.skip("iharmony4 dummy data not there")
  summary = build_lib.build("iharmony4/all", os.fspath(tmp_path), manual)
  assert summary.examples["train"] > 0 and summary.examples["test"] > 0


def test_cli_shows_progress_and_prints_the_summary(tmp_path):
  result = subprocess.run(
      [sys.executable, "-m", "data_builders.build", "harmonization_composites/coco",
       f"--data_dir={tmp_path}", f"--manual_dir={DUMMY}"],
      cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "examples: test=3, train=8" in result.stdout
  assert "skipped crowd (COCO crowd annotation): 2: 000000000001.jpg#104" in result.stdout
  # tqdm's bar: count/total, elapsed<remaining (the ETA) and the rate.
  assert "Building train: 100%" in result.stderr or "Building train:" in result.stderr
  assert "<" in result.stderr and "examples/s" in result.stderr


def _manual_with_truncated_photo(tmp_path):
  manual = tmp_path / "manual"
  shutil.copytree(DUMMY, manual)
  jpeg = io.BytesIO()
  Image.fromarray(np.random.default_rng(0).integers(0, 255, (96, 128, 3), np.uint8)).save(
      jpeg, format="JPEG")
  (manual / "images" / "broken.jpg").write_bytes(jpeg.getvalue()[: len(jpeg.getvalue()) * 2 // 3])
  mask = np.zeros((96, 128), np.uint8)
  mask[20:60, 30:90] = 255
  Image.fromarray(mask).save(manual / "masks" / "broken.png")
  return manual


def test_beam_build_equals_the_plain_build(tmp_path):
  pytest.importorskip("apache_beam")
  manual = _manual_with_truncated_photo(tmp_path)
  plain = build_lib.build("harmonization_composites/folder", os.fspath(tmp_path / "plain"),
                          os.fspath(manual))
  beam = build_lib.build("harmonization_composites/folder", os.fspath(tmp_path / "beam"),
                         os.fspath(manual), beam=True, beam_workers=2)
  assert dict(beam.examples) == dict(plain.examples) == {"train": 4, "test": 1}
  # The truncated photo is found on a worker; its report reaches the summary.
  assert {os.path.basename(f) for f in beam.files["truncated"]} == {"broken.jpg"}
  a = _examples(tmp_path / "plain", "harmonization_composites/folder")
  b = _examples(tmp_path / "beam", "harmonization_composites/folder")
  for split in ("train", "test"):
    assert a[split].keys() == b[split].keys()
    for name, ex in a[split].items():
      for key in ("composite", "real", "mask"):
        np.testing.assert_array_equal(ex[key], b[split][name][key])
      assert ex["transfer"] == b[split][name]["transfer"]
  assert not list((tmp_path / "beam").glob(".issues_*"))  # Cleaned up.
  # Byte-identical records, whatever the runner and the number of workers.
  def records(root):
    folder = root / "harmonization_composites" / "folder" / VERSION
    return {p.name: p.read_bytes() for p in folder.iterdir() if ".array_record" in p.name}
  assert records(tmp_path / "plain") == records(tmp_path / "beam")


def test_build_says_what_it_builds_in_one_line_and_the_summary_once(tmp_path, caplog, capsys):
  caplog.set_level(logging.INFO)
  build_lib.build("harmonization_composites/folder", os.fspath(tmp_path), DUMMY)
  out = capsys.readouterr()
  logged = "\n".join(r.getMessage() for r in caplog.records)
  text = out.out + out.err + logged
  # TFDS' "Downloading and preparing dataset Unknown size ..." and its chatter are gone.
  assert "Downloading" not in text and "Unknown size" not in text
  assert "downloaded and prepared" not in text and "Generating dataset" not in text
  assert text.count(f"Building harmonization_composites/folder from {DUMMY} into") == 1
  assert text.count("examples: test=1, train=4") == 1


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "data_builders.build", *args], cwd=REPO,
                        capture_output=True, text=True, timeout=300, check=False)


def _last_line(text):
  return text.strip().splitlines()[-1]


def test_cli_user_errors_are_one_line_with_the_fix_and_exit_code_1(tmp_path):
  data_dir = f"--data_dir={tmp_path / 'data'}"
  result = _cli("iharmony4/all", data_dir)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert _last_line(result.stderr).startswith("error: Cannot build iharmony4/all: it needs "
                                              "--manual_dir. Download iHarmony4 from")
  result = _cli("harmonization_composites/coco", data_dir, f"--manual_dir={tmp_path / 'nope'}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert "does not exist" in _last_line(result.stderr)
  result = _cli("harmonization_composites/bogus", data_dir)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert _last_line(result.stderr) == (
      "error: Unknown config 'bogus' of dataset 'harmonization_composites'; "
      "valid: ['sample', 'coco', 'folder']")
  manual = tmp_path / "iHarmony4"
  shutil.copytree(os.path.join(REPO, "data_builders", "iharmony4", "dummy_data"), manual)
  os.remove(manual / "HCOCO" / "masks" / "c101_1.png")
  result = _cli("iharmony4/all", data_dir, f"--manual_dir={manual}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  line = _last_line(result.stderr)
  assert "is incomplete: 1 file(s)" in line and "HCOCO/masks/c101_1.png" in line
  assert "Unpack the complete download there" in line
  listing = manual / "HCOCO" / "HCOCO_train.txt"
  shutil.copy(os.path.join(REPO, "data_builders", "iharmony4", "dummy_data", "HCOCO", "masks",
                           "c101_1.png"), manual / "HCOCO" / "masks")
  listing.write_text(listing.read_text() + "c101_1_1.jpg\n")  # Listed twice.
  result = _cli("iharmony4/all", data_dir, f"--manual_dir={manual}")
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert "c101_1_1.jpg is listed twice" in _last_line(result.stderr)
  assert "tensorflow" not in result.stderr.lower()
  listing.write_text(listing.read_text().replace("c101_1_1.jpg\n", "", 1))
  os.remove(manual / "HCOCO" / "masks" / "c101_1.png")
  # --verbose: the same line, after the traceback.
  result = _cli("iharmony4/all", data_dir, f"--manual_dir={manual}", "--verbose")
  assert result.returncode == 1 and "Traceback" in result.stderr
  assert _last_line(result.stderr) == line
