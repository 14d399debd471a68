"""Tests of harmonax.input_pipeline on tiny iHarmony4-layout datasets built in a tmp dir."""

import io
import multiprocessing
import os
import shutil
import signal
import time

import grain
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from data_builders import datasets
from data_builders.harmonization_composites import (
    harmonization_composites_dataset_builder as hcb)
from data_builders.iharmony4 import iharmony4_dataset_builder as ihd
from harmonax import config_args
from harmonax import input_pipeline

DUMMY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                     "data_builders", "iharmony4", "dummy_data")
# Pattern dataset: R encodes x, G encodes y, B identifies the example; real = 255 - composite;
# the mask is the bottom-right quarter.
_W, _H, _N = 96, 64, 7
_IDS = [20 + 30 * k for k in range(_N)]
_MASK_EDGE = (_W // 2 / (_W - 1) + _H // 2 / (_H - 1)) / 2  # ~0.507 in R and in G.


def _build(data_dir, config, manual_dir):
  builder = ihd.Builder(config=config, data_dir=os.fspath(data_dir), file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))


def _write_pattern_manual_dir(root):
  sub = root / "HFlickr"
  for d in ("composite_images", "masks", "real_images"):
    os.makedirs(sub / d)
  x = np.linspace(0, 255, _W)[None, :].repeat(_H, 0)
  y = np.linspace(0, 255, _H)[:, None].repeat(_W, 1)
  mask = np.zeros((_H, _W), np.uint8)
  mask[_H // 2:, _W // 2:] = 255
  names = []
  for k, value in enumerate(_IDS):
    pattern = np.stack([x, y, np.full_like(x, value)], -1).round().astype(np.uint8)
    Image.fromarray(pattern).save(sub / "composite_images" / f"f{k}_1_1.jpg", quality=95)
    Image.fromarray(255 - pattern).save(sub / "real_images" / f"f{k}.jpg", quality=95)
    Image.fromarray(mask, mode="L").save(sub / "masks" / f"f{k}_1.png")
    names.append(f"f{k}_1_1.jpg")
  (sub / "HFlickr_train.txt").write_text("\n".join(names))
  (sub / "HFlickr_test.txt").write_text(names[0])


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """A data dir with iharmony4/all (dummy data) and iharmony4/hflickr (the pattern set)."""
  root = tmp_path_factory.mktemp("tfds")
  _build(root, "all", DUMMY)
  manual = tmp_path_factory.mktemp("pattern")
  _write_pattern_manual_dir(manual)
  _build(root, "hflickr", manual)
  return os.fspath(root)


def _config(data_dir, name="iharmony4/all", image_size=32, **overrides):
  config = config_args.data_config(name, image_size=image_size, data_dir=data_dir)
  config.num_workers = 0
  config.update(overrides)
  return config


def _ids(batch):
  """The example id of each row, from the constant B channel of the pattern set."""
  blue = batch["composite"][..., 2].astype(np.float64).mean(axis=(1, 2))  # uint8 batches.
  return [_IDS[int(np.argmin(np.abs(np.array(_IDS) - b)))] for b in blue]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_resolve_data_dir(monkeypatch):
  monkeypatch.setenv("TFDS_DATA_DIR", "/env/dir")
  assert input_pipeline.resolve_data_dir("/flag/dir") == "/flag/dir"
  assert input_pipeline.resolve_data_dir(None) == "/env/dir"
  monkeypatch.delenv("TFDS_DATA_DIR")
  assert input_pipeline.resolve_data_dir(None) == os.path.expanduser("~/tensorflow_datasets")


def test_num_examples(data_dir):
  config = _config(data_dir)
  assert input_pipeline.num_examples(config, "train") == 9
  assert input_pipeline.num_examples(config, "test") == 5
  assert input_pipeline.num_examples(config, "train[:3]") == 3


def test_train_batch_contract(data_dir):
  it = input_pipeline.make_train_iterator(_config(data_dir), 8, seed=0,
                                          process_index=1, process_count=2)
  for _ in range(3):  # More rows than this host's 4 examples: the data repeats.
    batch = next(it)
    assert sorted(batch) == ["composite", "mask", "real"]
    assert batch["composite"].shape == batch["real"].shape == (4, 32, 32, 3)
    assert batch["mask"].shape == (4, 32, 32, 1)
    for value in batch.values():  # uint8 to the device; families convert there.
      assert value.dtype == np.uint8
  with pytest.raises(ValueError, match="global batch size 6 .* process count 4"):
    input_pipeline.make_train_iterator(_config(data_dir), 6, seed=0,
                                       process_index=0, process_count=4)


@pytest.mark.parametrize("hflip,image_size", [(True, 32), (False, 12)])
def test_crops_align_composite_real_and_mask(data_dir, hflip, image_size):
  # At 12x12 most crops are decoded from the JPEGs at 1/2 or 1/4 scale.
  config = _config(data_dir, "iharmony4/hflickr", image_size, crop_scale=(0.3, 1.0),
                   hflip=hflip)
  it = input_pipeline.make_train_iterator(config, 8, seed=3)
  directions = []
  for _ in range(2):
    batch = input_pipeline._to_float(next(it))  # pylint: disable=protected-access
    comp, real, mask = batch["composite"], batch["real"], batch["mask"][..., 0]
    # The real image is the negative of the composite: same crop, same flip.
    np.testing.assert_allclose(comp + real, 1.0, atol=0.08)
    assert np.abs(comp + real - 1).mean() < 0.01
    inside = (comp[..., 0] > _MASK_EDGE + 0.08) & (comp[..., 1] > _MASK_EDGE + 0.08)
    outside = (comp[..., 0] < _MASK_EDGE - 0.08) | (comp[..., 1] < _MASK_EDGE - 0.08)
    assert inside.any() and outside.any()
    assert mask[inside].min() > 0.95 and mask[outside].max() < 0.05
    # The R channel encodes x: it increases left to right unless the crop was flipped.
    directions += list(np.sign(comp[:, :, -1, 0].mean(1) - comp[:, :, 0, 0].mean(1)))
  assert set(directions) == ({-1, 1} if hflip else {1})


def _encode(array, fmt="PNG"):
  out = io.BytesIO()
  Image.fromarray(array).save(out, format=fmt, quality=95)
  return out.getvalue()


def test_empty_mask_crops_are_redrawn():
  image = _encode(np.zeros((64, 64, 3), np.uint8))
  mask = np.zeros((64, 64), np.uint8)
  mask[:16, :16] = 255  # Crops of 25-30% of the area often miss this corner.
  example = {"composite": image, "real": image, "mask": _encode(mask)}

  def nonempty_fraction(keep_prob):
    transform = input_pipeline.TrainTransform(16, (0.25, 0.3), True, keep_prob)
    hits = [transform(example, np.random.default_rng(s))["mask"].max() > 0 for s in range(200)]
    return np.mean(hits)

  assert nonempty_fraction(0.0) > 0.9
  assert nonempty_fraction(1.0) < 0.5
  # A mask with no foreground at all still gives a crop.
  empty = dict(example, mask=_encode(np.zeros_like(mask)))
  out = input_pipeline.TrainTransform(16)(empty, np.random.default_rng(0))
  assert out["mask"].shape == (16, 16, 1) and out["mask"].max() == 0


def test_reduced_scale_jpeg_decoding_keeps_the_crop():
  # A smooth 400x300 pattern: the crop to 24x24 decodes the JPEG at 1/4 or 1/8 scale.
  x = np.linspace(0, 255, 400)[None, :].repeat(300, 0)
  y = np.linspace(0, 255, 300)[:, None].repeat(400, 1)
  pattern = np.stack([x, y, (x + y) / 2], -1).round().astype(np.uint8)
  mask = _encode((x > 200).astype(np.uint8) * 255)
  jpeg = {"composite": _encode(pattern, "JPEG"), "real": _encode(pattern, "JPEG"), "mask": mask}
  png = {"composite": _encode(pattern), "real": _encode(pattern), "mask": mask}
  transform = input_pipeline.TrainTransform(24, (0.3, 1.0))
  for seed in range(10):
    fast = transform(jpeg, np.random.default_rng(seed))
    full = transform(png, np.random.default_rng(seed))  # PNG: always full resolution.
    assert fast["composite"].dtype == np.uint8 and fast["composite"].shape == (24, 24, 3)
    np.testing.assert_array_equal(fast["mask"], full["mask"])
    np.testing.assert_allclose(fast["composite"] / 255, full["composite"] / 255, atol=0.03)
  mismatched = dict(png, mask=_encode(np.zeros((30, 40), np.uint8)))
  with pytest.raises(ValueError, match="composite is 400x300 but the mask is 40x30"):
    transform(mismatched, np.random.default_rng(0))


def test_random_box_respects_scale_and_ratio():
  rng = np.random.default_rng(0)
  for _ in range(200):
    top, left, h, w = input_pipeline._random_box(rng, 60, 90, (0.5, 1.0))
    assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 90
    assert 0.5 - 0.03 <= h * w / (60 * 90) <= 1.0
    assert 3 / 4 - 0.05 <= w / h <= 4 / 3 + 0.05
  # Too thin for the ratio range: the fallback is a centered crop of the allowed ratio.
  assert input_pipeline._random_box(rng, 10, 100, (0.99, 1.0)) == (0, 43, 10, 13)


def test_same_seed_same_batches_and_workers_do_not_change_them(data_dir):
  config = _config(data_dir, "iharmony4/hflickr")
  a = input_pipeline.make_train_iterator(config, 4, seed=1)
  b = input_pipeline.make_train_iterator(config, 4, seed=1)
  c = input_pipeline.make_train_iterator(config, 4, seed=2)
  first = [next(a) for _ in range(2)]
  for batch in first:
    _assert_batches_equal(batch, next(b))
  assert not np.array_equal(first[0]["composite"], next(c)["composite"])
  config.num_workers = 1
  with_worker = input_pipeline.make_train_iterator(config, 4, seed=1)
  _assert_batches_equal(first[0], next(with_worker))
  state = with_worker.get_state()
  _assert_batches_equal(first[1], next(with_worker))
  with_worker.set_state(state)
  _assert_batches_equal(first[1], next(with_worker))
  # A SIGTERM to the whole process group (timeout, Ctrl-C, launchers) must not
  # kill the workers: the trainer handles it and needs batches until it saves.
  workers = multiprocessing.active_children()
  assert workers
  for worker in workers:
    os.kill(worker.pid, signal.SIGTERM)
  time.sleep(1.0)
  assert all(worker.is_alive() for worker in workers)
  assert next(with_worker)["composite"].shape[0] == 4
  with_worker.close()


def test_iterator_state_restores_the_next_batch(data_dir, tmp_path):
  config = _config(data_dir, "iharmony4/hflickr")
  it = input_pipeline.make_train_iterator(config, 4, seed=0)
  next(it)
  state = it.get_state()
  checkpointer = ocp.Checkpointer(grain.checkpoint.CheckpointHandler())
  checkpointer.save(tmp_path / "data_iter", args=grain.checkpoint.CheckpointSave(it))
  expected = [next(it) for _ in range(3)]  # Crosses the epoch boundary (7 examples).

  restored = input_pipeline.make_train_iterator(config, 4, seed=0)
  restored.set_state(state)
  from_orbax = input_pipeline.make_train_iterator(config, 4, seed=0)
  checkpointer.restore(tmp_path / "data_iter",
                       args=grain.checkpoint.CheckpointRestore(from_orbax))
  for batch in expected:
    _assert_batches_equal(batch, next(restored))
    _assert_batches_equal(batch, next(from_orbax))


def test_host_shards_are_disjoint_and_cover_the_data(data_dir):
  config = _config(data_dir, "iharmony4/hflickr")
  seen = []
  for index in range(3):
    it = input_pipeline.make_train_iterator(config, 3, seed=0,
                                            process_index=index, process_count=3)
    shard_size = len(range(index, _N, 3))
    epoch = _ids(next(it)) + _ids(next(it)) + _ids(next(it))
    # One epoch of this host: its examples, each once; then the next epoch starts.
    assert len(set(epoch[:shard_size])) == shard_size
    assert set(epoch) == set(epoch[:shard_size])
    seen.append(set(epoch[:shard_size]))
  assert sum(len(s) for s in seen) == _N and set().union(*seen) == set(_IDS)


def _eval_names(batches):
  names, subsets = [], []
  for batch in batches:
    names += list(batch["name"][batch["valid"]])
    subsets += list(batch["subset"][batch["valid"]])
  return names, subsets


def test_eval_counts_every_example_once_with_padding(data_dir):
  config = _config(data_dir)
  batches = list(input_pipeline.make_eval_iterator(config, 4))
  assert [b["valid"].tolist() for b in batches] == [[True] * 4, [True] + [False] * 3]
  last = batches[-1]
  assert last["composite"].shape == (4, 32, 32, 3) and last["mask"].shape == (4, 32, 32, 1)
  assert not last["composite"][1:].any() and list(last["name"][1:]) == ["", "", ""]
  assert last["name"].dtype == object and last["subset"].dtype == object
  names, subsets = _eval_names(batches)
  with open(os.path.join(DUMMY, "IHD_test.txt")) as f:
    expected = sorted(os.path.basename(l.strip()) for l in f if l.strip())
  assert sorted(names) == expected
  assert sorted(set(subsets)) == sorted(ihd.SUBSETS)

  # Two hosts: the same number of batches each, disjoint, together everything.
  per_host = [list(input_pipeline.make_eval_iterator(config, 4, process_index=i,
                                                     process_count=2)) for i in range(2)]
  assert [len(h) for h in per_host] == [2, 2]
  assert all(b["composite"].shape[0] == 2 for h in per_host for b in h)
  host_names = [_eval_names(h)[0] for h in per_host]
  assert not set(host_names[0]) & set(host_names[1])
  assert sorted(host_names[0] + host_names[1]) == expected

  config.max_eval_examples = 3
  assert len(_eval_names(input_pipeline.make_eval_iterator(config, 2))[0]) == 3


def test_eval_resize_masks_and_full_resolution(data_dir):
  soft = next(input_pipeline.make_eval_iterator(_config(data_dir, image_size=16), 4))
  values = np.unique(soft["mask"])
  assert ((values > 0) & (values < 1)).any()  # Bilinear resizing makes soft edges.
  binary = next(input_pipeline.make_eval_iterator(
      _config(data_dir, image_size=16, binary_eval_mask=True), 4))
  assert set(np.unique(binary["mask"])) <= {0.0, 1.0}
  np.testing.assert_array_equal(binary["mask"], (soft["mask"] >= 0.5).astype(np.float32))
  np.testing.assert_array_equal(binary["composite"], soft["composite"])

  full = list(input_pipeline.make_eval_iterator(_config(data_dir, image_size=None), 4))
  assert len(full) == 5 and all(b["valid"].tolist() == [True] for b in full)
  for batch in full:
    subset, name = batch["subset"][0], batch["name"][0]
    path = os.path.join(DUMMY, subset, "composite_images", name)
    original = np.asarray(Image.open(path).convert("RGB"))
    np.testing.assert_array_equal(batch["composite"][0], original)


def test_unknown_or_unbuilt_datasets_say_what_to_do(data_dir, tmp_path):
  with pytest.raises(ValueError, match=r"Unknown dataset 'nope/x'.*'iharmony4'"):
    input_pipeline.get_builder("nope/x", data_dir)
  with pytest.raises(ValueError, match=r"Unknown config 'bogus'.*'hadobe5k_1024'"):
    input_pipeline.get_builder("iharmony4/bogus", data_dir)
  missing = os.fspath(tmp_path / "no_such_dir")
  with pytest.raises(FileNotFoundError, match="does not exist") as err:
    input_pipeline.get_builder("iharmony4/hcoco", missing)
  assert (f"python -m data_builders.build iharmony4/hcoco --data_dir={missing} "
          "--manual_dir=") in str(err.value)
  with pytest.raises(FileNotFoundError, match=r"'iharmony4/hcoco' is not built in") as err:
    input_pipeline.get_builder("iharmony4/hcoco", data_dir)
  assert f"--data_dir={data_dir}" in str(err.value)
  assert "\n" not in str(err.value)  # One line, the fix included.
  with pytest.raises(FileNotFoundError, match="is not built"):
    input_pipeline.make_train_iterator(_config(data_dir, "iharmony4/hcoco"), 4, seed=0)
  assert input_pipeline.get_builder("iharmony4/all", data_dir).info.splits["test"].num_examples == 5


def test_sample_is_built_on_first_use(data_dir, tmp_path, monkeypatch):
  calls = []
  version = str(hcb.Builder.VERSION)

  def fake_build(name, target_dir):
    # Stands in for data_builders.datasets.build: puts a built dataset where TFDS would.
    calls.append((name, target_dir))
    shutil.copytree(os.path.join(data_dir, "iharmony4", "hflickr", "1.0.0"),
                    os.path.join(target_dir, "harmonization_composites", "sample", version))

  monkeypatch.setattr(datasets, "build", fake_build)
  target = os.fspath(tmp_path / "fresh")
  builder = input_pipeline.get_builder("harmonization_composites/sample", target)
  assert calls == [("harmonization_composites/sample", target)]
  assert builder.info.splits["train"].num_examples == _N
  input_pipeline.get_builder("harmonization_composites/sample", target)
  assert len(calls) == 1  # Built once, then found.
  # A sample built by an older builder version is rebuilt, not reused.
  old = tmp_path / "old"
  shutil.copytree(os.path.join(data_dir, "iharmony4", "hflickr", "1.0.0"),
                  os.path.join(old, "harmonization_composites", "sample", "0.9.0"))
  input_pipeline.get_builder("harmonization_composites/sample", os.fspath(old))
  assert calls[-1] == ("harmonization_composites/sample", os.fspath(old))


@pytest.fixture(scope="module")
def composites_dir(tmp_path_factory):
  """harmonization_composites/folder from its dummy data: composites stored as boxes."""
  root = tmp_path_factory.mktemp("composites")
  manual = os.path.join(os.path.dirname(DUMMY), "..", "harmonization_composites", "dummy_data")
  datasets.build("harmonization_composites/folder", os.fspath(root), manual)
  return os.fspath(root)


def test_composites_stored_as_boxes_are_rebuilt_for_every_reader(composites_dir):
  name = "harmonization_composites/folder"
  builder = tfds.builder_from_directory(datasets.find_built(name, composites_dir))
  assert "composite_crop" in builder.info.features  # Stored as the foreground's box ...
  decoded = {ex["name"].decode(): ex for ex in builder.as_data_source(split="test")}
  config = _config(composites_dir, name, image_size=None)
  batches = list(input_pipeline.make_eval_iterator(config, 4, "test"))
  assert len(batches) == len(decoded) == 1
  for batch in batches:
    ex = decoded[batch["name"][0]]
    assert "composite_crop" not in ex  # ... and decoded by TFDS as the whole composite.
    np.testing.assert_array_equal(batch["composite"][0], ex["composite"])
    np.testing.assert_array_equal(batch["real"][0], ex["real"])
    background = ex["mask"][..., 0] == 0
    np.testing.assert_array_equal(ex["composite"][background], ex["real"][background])
    assert np.any(ex["composite"][~background] != ex["real"][~background])


def test_train_crops_of_rebuilt_composites_keep_the_background(composites_dir):
  config = _config(composites_dir, "harmonization_composites/folder", image_size=24,
                   crop_scale=(0.5, 1.0))
  batch = next(input_pipeline.make_train_iterator(config, 4, seed=0))
  assert batch["composite"].shape == (4, 24, 24, 3)
  background = batch["mask"][..., 0] == 0
  assert background.any() and (~background).any()
  np.testing.assert_array_equal(batch["composite"][background], batch["real"][background])
  assert np.any(batch["composite"] != batch["real"])


def test_a_dataset_of_the_other_kind_is_named_not_a_key_error():
  triplet = {"foreground": b"", "background": b"", "alpha": b"", "mask": b"", "real": b"",
             "name": b"x"}
  config = ml_collections.ConfigDict({"name": "compositing_triplets/sample"})
  with pytest.raises(ValueError, match="compositing_triplets/sample 'test': its examples have "
                     "no composite \\(they hold alpha, background, foreground, mask, real\\)"):
    input_pipeline.check_keys(config, "test", triplet)
  config.image_keys = ("foreground", "background", "real")
  input_pipeline.check_keys(config, "test", triplet)
  # A composite stored as its foreground's box is a composite.
  del config.image_keys
  input_pipeline.check_keys(config, "train", {"composite_crop": b"", "composite_box": b"",
                                              "real": b"", "mask": b""})
