"""Evaluation: the table on synthetic records, and end to end on built iHarmony4 dummy data."""

import csv
import os
import sys
import types

from absl.testing import flagsaver
from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders.iharmony4 import iharmony4_dataset_builder as ihd
from harmonax import checkpoint
from harmonax import config_args
from harmonax import evaluate
from harmonax import image_io
from harmonax import input_pipeline
from harmonax import metrics
import fake_family

DUMMY = os.path.join(os.path.dirname(__file__), "..", "data_builders", "iharmony4",
                     "dummy_data")
# data_builders/iharmony4/dummy_data/IHD_test.txt: 2 HCOCO, 1 of each other subset.
TEST_COUNTS = {"HCOCO": 2, "HAdobe5k": 1, "HFlickr": 1, "Hday2night": 1, "All": 5}


def _record(subset, value, name="x"):
  rec = {"name": name, "subset": subset}
  rec.update({k: value for k in metrics.METRIC_NAMES})
  rec.update({evaluate.COMPOSITE_PREFIX + k: 2 * value for k in metrics.METRIC_NAMES})
  return rec


def test_summary_all_is_image_weighted_and_subsets_ordered():
  records = ([_record("HFlickr", 10.0)] + [_record("HCOCO", 1.0)] * 3
             + [_record("Zeta", 4.0), _record("", 7.0)])
  summary = evaluate.summarize(records)
  assert list(summary) == ["HCOCO", "HFlickr", "Zeta", "All"]
  assert summary["HCOCO"] == {"n": 3, **{k: 1.0 for k in metrics.METRIC_NAMES}}
  # Image-weighted: (10 + 3 + 4 + 7) / 6, not the mean of the subset means.
  assert summary["All"]["n"] == 6
  assert summary["All"]["mse"] == pytest.approx(24 / 6)
  table = evaluate.format_table(records, "pred_range", "uniform7", title="t")
  assert "pred_range (peak = pred.max() - pred.min()" in table
  assert "uniform7 (7x7 mean filter" in table
  assert "| model | All | 4.00 | 4.00 | 4.00 | 4.00 | 4.0000 | 6 |" in table
  assert "| composite | All | 8.00 | 8.00 | 8.00 | 8.00 | 8.0000 | 6 |" in table


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
  """iharmony4/all built from the repo's dummy data into a temporary data dir."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  builder = ihd.Builder(config="all", data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.path.abspath(DUMMY)))
  return data_dir


def _identity_model(data_dir, image_size=32):
  """The fake family with its residual zeroed: predict returns the composite."""
  fake_family.register()
  config = fake_family.get_config()
  config.data = config_args.data_config("iharmony4", image_size=image_size, data_dir=data_dir)
  config.data.num_workers = 0
  config.batch_size = 4  # 5 test examples: the last batch has 3 padding rows.
  networks = fake_family.create_networks(config, nnx.Rngs(0))
  gen = networks["generator"]
  gen.conv2.kernel.value = jnp.zeros_like(gen.conv2.kernel.value)
  gen.conv2.bias.value = jnp.zeros_like(gen.conv2.bias.value)
  return config, networks


def test_evaluate_networks_identity_equals_composite(dataset):
  config, networks = _identity_model(dataset)
  result = evaluate.evaluate_networks(config, networks, config.data, "test")
  for key in metrics.METRIC_NAMES:
    np.testing.assert_allclose(result[key], result["composite_" + key], rtol=1e-5)
  # Independent numpy computation of the composite's MSE over the 5 examples.
  mses = []
  for batch in input_pipeline.make_eval_iterator(config.data, 4, "test"):
    diff = (batch["composite"] - batch["real"]).astype(np.float64) * 255
    mses += list((diff**2).mean(axis=(1, 2, 3))[batch["valid"]])
  assert len(mses) == 5
  np.testing.assert_allclose(result["composite_mse"], np.mean(mses), rtol=1e-4)
  assert result["composite_mse"] > 1.0  # The dummy composites differ from the reals.
  # max_examples limits the count.
  two = evaluate.evaluate_networks(config, networks, config.data, "test", max_examples=2)
  np.testing.assert_allclose(two["composite_mse"], np.mean(mses[:2]), rtol=1e-4)


def test_extra_eval_metrics_become_columns(dataset):
  config, networks = _identity_model(dataset)
  extra = types.ModuleType("harmonax.models.fake_extra")
  extra.__dict__.update({k: getattr(fake_family, k) for k in
                         ("create_networks", "make_optimizers", "compute_losses", "predict")})
  extra.extra_eval_metrics = lambda nets, batch: {
      "mean_mask": batch["mask"].mean(axis=(1, 2, 3)),
      "pred_minus_composite": jnp.abs(batch["harmonized"] - batch["composite"]).max((1, 2, 3))}
  sys.modules["harmonax.models.fake_extra"] = extra
  try:
    config.model.name = "fake_extra"
    records = list(evaluate.iterate_records(config, networks, config.data, "test", 4,
                                            "real_max", "gaussian7"))
  finally:
    del sys.modules["harmonax.models.fake_extra"]
  assert len(records) == 5
  assert all(0 < r["mean_mask"] < 1 for r in records)
  assert all(r["pred_minus_composite"] < 1e-6 for r in records)  # Identity model.
  table = evaluate.format_table(records, "real_max", "gaussian7", extra_keys=("mean_mask",))
  assert "| method | subset | MSE | PSNR | fMSE | fPSNR | SSIM | mean_mask | N |" in table


def test_command_line_table_csv_and_images(dataset, tmp_path):
  config, networks = _identity_model(dataset)
  checkpoint.save_networks(tmp_path / "ckpt", config, networks)
  evaluate.define_flags()
  with flagsaver.flagsaver(checkpoint=str(tmp_path / "ckpt"), dataset="iharmony4/all",
                           data_dir=dataset, image_size=0, psnr_peak="255",
                           ssim="gaussian7", output_dir=str(tmp_path / "out"),
                           save_images=str(tmp_path / "images")):
    assert evaluate.main(["evaluate"]) == 0
  table = (tmp_path / "out" / "eval_iharmony4_all_test.md").read_text()
  assert "full resolution" in table and "255 (peak = 255" in table and "gaussian7" in table
  for subset, n in TEST_COUNTS.items():
    assert f"| model | {subset} |" in table and f"| composite | {subset} |" in table
    assert table.count(f"| {subset} |") == 2
    row = next(l for l in table.splitlines() if l.startswith(f"| model | {subset} |"))
    assert row.endswith(f"| {n} |")
  with open(tmp_path / "out" / "eval_iharmony4_all_test.csv", encoding="utf-8") as f:
    rows = list(csv.DictReader(f))
  assert sorted(r["subset"] for r in rows) == sorted(
      [s for s, n in TEST_COUNTS.items() if s != "All" for _ in range(n)])
  for row in rows:  # Identity model: every per-image value equals the composite's.
    for key in metrics.METRIC_NAMES:
      np.testing.assert_allclose(float(row[key]), float(row["composite_" + key]),
                                 rtol=1e-4, atol=1e-4)
  # Full-resolution outputs, named after the example, equal the composites.
  saved = image_io.read_image(tmp_path / "images" / "HAdobe5k" / "a0002_1_4.png")
  comp = image_io.read_image(os.path.join(DUMMY, "HAdobe5k", "composite_images", "a0002_1_4.jpg"))
  assert saved.shape == comp.shape
  assert np.abs(saved.astype(int) - comp.astype(int)).max() <= 1


def test_image_path_keeps_names_unique_and_inside():
  assert evaluate.image_path("/o", "c101_2_3.jpg", "HCOCO") == "/o/HCOCO/c101_2_3.png"
  assert evaluate.image_path("/o", "coffee/cup/v00") == "/o/coffee/cup/v00.png"
  assert evaluate.image_path("/o", "../../etc/x.jpg") == "/o/etc/x.png"
  with pytest.raises(ValueError, match="usable name"):
    evaluate.image_path("/o", "..")


def test_bad_settings_raise():
  config = fake_family.get_config()
  config.eval.psnr_peak = "max"
  with pytest.raises(ValueError, match="config.eval.psnr_peak='max'"):
    evaluate.eval_settings(config)
