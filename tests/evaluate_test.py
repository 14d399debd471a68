"""Evaluation: the table on synthetic records, and end to end on built iHarmony4 dummy data."""

import csv
import os
import sys
import types

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_builders.iharmony4 import iharmony4_dataset_builder as ihd
from harmonax import checkpoint
from harmonax import config_args
from harmonax import evaluation
from harmonax import image_io
from harmonax import input_pipeline
from harmonax import metrics
from harmonax import model_card
import fake_family

DUMMY = os.path.join(os.path.dirname(__file__), "..", "data_builders", "iharmony4",
                     "dummy_data")
# data_builders/iharmony4/dummy_data/IHD_test.txt: 2 HCOCO, 1 of each other subset.
TEST_COUNTS = {"HCOCO": 2, "HAdobe5k": 1, "HFlickr": 1, "Hday2night": 1, "All": 5}


def _record(subset, value, name="x"):
  rec = {"name": name, "subset": subset}
  rec.update({k: value for k in metrics.METRIC_NAMES})
  rec.update({evaluation.COMPOSITE_PREFIX + k: 2 * value for k in metrics.METRIC_NAMES})
  return rec


def test_summary_all_is_image_weighted_and_subsets_ordered():
  records = ([_record("HFlickr", 10.0)] + [_record("HCOCO", 1.0)] * 3
             + [_record("Zeta", 4.0), _record("", 7.0)])
  summary = evaluation.summarize(records)
  assert list(summary) == ["HCOCO", "HFlickr", "Zeta", "All"]
  assert summary["HCOCO"] == {"n": 3, **{k: 1.0 for k in metrics.METRIC_NAMES}}
  # Image-weighted: (10 + 3 + 4 + 7) / 6, not the mean of the subset means.
  assert summary["All"]["n"] == 6
  assert summary["All"]["mse"] == pytest.approx(24 / 6)
  table = evaluation.format_table(
      records, evaluation.Protocol("pred_range", "uniform7", "pasted"), title="t")
  assert "Background: pasted" in table
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
  result = evaluation.evaluate_networks(config, networks, config.data, "test")
  for key in metrics.METRIC_NAMES:
    np.testing.assert_allclose(result[key], result["composite_" + key], rtol=1e-5)
  # Independent numpy computation of the composite's MSE over the 5 examples.
  mses = []
  for batch in input_pipeline.make_eval_iterator(config.data, 4, "test"):
    assert batch["composite"].dtype == np.uint8  # Images cross to the device as uint8.
    diff = batch["composite"].astype(np.float64) - batch["real"].astype(np.float64)
    mses += list((diff**2).mean(axis=(1, 2, 3))[batch["valid"]])
  assert len(mses) == 5
  np.testing.assert_allclose(result["composite_mse"], np.mean(mses), rtol=1e-4)
  assert result["composite_mse"] > 1.0  # The dummy composites differ from the reals.
  # max_examples limits the count.
  two = evaluation.evaluate_networks(config, networks, config.data, "test", max_examples=2)
  np.testing.assert_allclose(two["composite_mse"], np.mean(mses[:2]), rtol=1e-4)


def test_evaluators_from_config_become_columns(dataset):
  config, networks = _identity_model(dataset)
  extra = types.ModuleType("harmonax.evaluators.fake_extra")
  extra.score = lambda config, nets, batch, pred, protocol: {
      "mean_mask": batch["mask"].mean(axis=(1, 2, 3)),
      "pred_minus_composite": jnp.abs(pred - batch["composite"]).max((1, 2, 3))}
  sys.modules["harmonax.evaluators.fake_extra"] = extra
  try:
    protocol = evaluation.Protocol("real_max", "gaussian7",
                                   metrics=("harmonization", "fake_extra"))
    records = list(evaluation.iterate_records(config, networks, config.data, "test", 4,
                                              protocol))
  finally:
    del sys.modules["harmonax.evaluators.fake_extra"]
  assert len(records) == 5
  assert all(0 < r["mean_mask"] < 1 for r in records)
  assert all(r["pred_minus_composite"] < 1e-6 for r in records)  # Identity model.
  table = evaluation.format_table(records, protocol, extra_keys=("mean_mask",))
  assert "| method | subset | MSE | PSNR | fMSE | fPSNR | SSIM | mean_mask | N |" in table
  with pytest.raises(ValueError, match="Unknown evaluator 'nope'.*harmonization"):
    evaluation.Protocol(metrics=("nope",))


def test_background_protocol_scores_raw_output_or_pasted(dataset):
  """A model that paints everything grey: 'output' scores the grey background,
  'pasted' puts the composite's back, so only the foreground differs."""
  config, networks = _identity_model(dataset)
  config.data.binary_eval_mask = True
  grey = types.ModuleType("harmonax.models.fake_grey")
  grey.__dict__.update(vars(fake_family))
  grey.predict = lambda config, nets, inputs: jnp.clip(inputs["composite"] + 0.1, 0, 1)
  sys.modules["harmonax.models.fake_grey"] = grey
  config.model.name = "fake_grey"
  try:
    raw = evaluation.evaluate_networks(config, networks, config.data, "test",
                                       protocol=evaluation.Protocol(background="output"))
    pasted = evaluation.evaluate_networks(config, networks, config.data, "test",
                                          protocol=evaluation.Protocol(background="pasted"))
  finally:
    del sys.modules["harmonax.models.fake_grey"]
  assert raw["mse"] > pasted["mse"] > 0
  # The foreground error is the same either way.
  np.testing.assert_allclose(raw["fmse"], pasted["fmse"], rtol=1e-5)


def test_full_resolution_buckets_score_as_exact_shapes(dataset):
  """Padding to size buckets with a valid-pixel mask gives the per-shape scores."""
  config, networks = _identity_model(dataset)
  config.data.image_size = None
  protocol = evaluation.Protocol("pred_range", "gaussian7")
  exact = list(evaluation.iterate_records(config, networks, config.data, "test", 1, protocol))
  bucketed = list(evaluation.iterate_records(config, networks, config.data, "test", 1,
                                             protocol, bucket=64))
  assert [r["name"] for r in exact] == [r["name"] for r in bucketed]
  for a, b in zip(exact, bucketed):
    for key in metrics.METRIC_NAMES:
      np.testing.assert_allclose(a["composite_" + key], b["composite_" + key],
                                 rtol=2e-4, err_msg=f"{a['name']} {key}")


def test_valid_pixel_metrics_equal_the_unpadded_image():
  rng = np.random.default_rng(0)
  pred = rng.uniform(0, 255, (2, 20, 27, 3)).astype(np.float32)
  real = rng.uniform(0, 255, (2, 20, 27, 3)).astype(np.float32)
  mask = (rng.uniform(size=(2, 20, 27, 1)) > 0.5).astype(np.float32)
  pad = ((0, 0), (0, 12), (0, 5), (0, 0))
  valid = np.pad(np.ones_like(mask), pad)
  for peak in metrics.PSNR_PEAKS:
    want = metrics.compute_all(pred, real, mask, peak, "gaussian7")
    got = metrics.compute_all(np.pad(pred, pad, constant_values=255.0), np.pad(real, pad),
                              np.pad(mask, pad), peak, "gaussian7", valid=valid)
    for key in metrics.METRIC_NAMES:
      np.testing.assert_allclose(got[key], want[key], rtol=1e-5, err_msg=f"{peak} {key}")


def test_command_line_table_csv_and_images(dataset, tmp_path):
  config, networks = _identity_model(dataset)
  config.model.variant = "zeroed"  # The heading names the model: family_variant.
  checkpoint.save_networks(tmp_path / "ckpt", config, networks)
  result = fake_family.run_cli("evaluate", [
      f"--checkpoint={tmp_path / 'ckpt'}", "--dataset=iharmony4/all", f"--data_dir={dataset}",
      "--image_size=0", "--psnr_peak=255", "--ssim=gaussian7",
      f"--output_dir={tmp_path / 'out'}", f"--save_images={tmp_path / 'images'}"])
  assert result.returncode == 0, result.stderr[-3000:]
  table = (tmp_path / "out" / "eval_iharmony4_all_test_full_peak-255_ssim-gaussian7.md").read_text()
  assert table.startswith(f"### fake_zeroed ({tmp_path / 'ckpt'}) on iharmony4/all test, full")
  assert "full resolution" in table and "255 (peak = 255" in table and "gaussian7" in table
  assert "Background: model output" in table
  for subset, n in TEST_COUNTS.items():
    assert f"| model | {subset} |" in table and f"| composite | {subset} |" in table
    assert table.count(f"| {subset} |") == 2
    row = next(l for l in table.splitlines() if l.startswith(f"| model | {subset} |"))
    assert row.endswith(f"| {n} |")
  with open(tmp_path / "out" / "eval_iharmony4_all_test_full_peak-255_ssim-gaussian7.csv", encoding="utf-8") as f:
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

  # Another protocol on part of the split: its own files and card entry; the
  # full run's are kept.
  result = fake_family.run_cli("evaluate", [
      f"--checkpoint={tmp_path / 'ckpt'}", "--dataset=iharmony4/all", f"--data_dir={dataset}",
      "--image_size=0", "--background=pasted", "--max_examples=2", "--bucket=8",
      f"--output_dir={tmp_path / 'out'}"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert sorted(os.listdir(tmp_path / "out")) == [
      f"eval_iharmony4_all_test_full{q}.{ext}"
      for q in ("_bg-pasted_first2_bucket8", "_peak-255_ssim-gaussian7")
      for ext in ("csv", "md")]
  metrics_of = model_card.read(tmp_path / "ckpt")["metrics"]
  assert sorted(metrics_of) == [
      "iharmony4/all test full resolution (PSNR peak 255, SSIM gaussian7)",
      "iharmony4/all test full resolution (background pasted, first 2 examples, padded to "
      "multiples of 8)"]

  # An output dir that cannot be written is an error before anything runs.
  (tmp_path / "file").write_text("")
  result = fake_family.run_cli("evaluate", [
      f"--checkpoint={tmp_path / 'ckpt'}", f"--output_dir={tmp_path / 'file' / 'out'}"])
  assert result.returncode == 1
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: cannot write the results to {tmp_path / 'file' / 'out'}")
  assert "loading the networks" not in result.stderr
  # A mistyped workdir: its error, and no folder left behind.
  result = fake_family.run_cli("evaluate", [f"--workdir={tmp_path / 'typo'}"])
  assert result.returncode == 1 and "config.json not found" in result.stderr
  assert not (tmp_path / "typo").exists()


def test_image_path_keeps_names_unique_and_inside():
  assert evaluation.image_path("/o", "c101_2_3.jpg", "HCOCO") == "/o/HCOCO/c101_2_3.png"
  assert evaluation.image_path("/o", "coffee/cup/v00") == "/o/coffee/cup/v00.png"
  assert evaluation.image_path("/o", "../../etc/x.jpg") == "/o/etc/x.png"
  with pytest.raises(ValueError, match="usable name"):
    evaluation.image_path("/o", "..")


def test_bad_settings_raise():
  config = fake_family.get_config()
  config.eval.psnr_peak = "max"
  with pytest.raises(ValueError, match="psnr_peak='max'"):
    evaluation.protocol_of(config)
  with pytest.raises(ValueError, match="background='none'"):
    evaluation.protocol_of(fake_family.get_config(), background="none")
