"""benchmarks/device_suite.py at tiny sizes on CPU: every measurement runs and
the markdown table is written; chip peaks are looked up by device_kind."""

from benchmarks import device_suite


def test_chip_peak_by_device_kind():
  assert device_suite.chip_peak("NVIDIA H100 80GB HBM3", "bfloat16") == 989e12
  assert device_suite.chip_peak("NVIDIA H100 PCIe", "float32") == 378e12
  assert device_suite.chip_peak("NVIDIA H200", "float32") == 494e12
  assert device_suite.chip_peak("TPU v5 lite", "bfloat16") == 197e12
  assert device_suite.chip_peak("TPU v5", "bfloat16") == 459e12
  assert device_suite.chip_peak("cpu", "float32") is None


def test_tiny_run_writes_a_table(tmp_path):
  output = tmp_path / "suite.md"
  table = device_suite.main(["--tiny", "--models=idih", "--steps=2", "--budget_s=3600",
                             f"--output={output}"])
  assert output.read_text().startswith("# Device suite")
  lines = [l for l in table.splitlines() if l.startswith("| idih |")]
  train = [l for l in lines if "| train 64 |" in l and "| float32 |" in l]
  assert len(train) == 1 and "skipped" not in train[0] and "| unknown |" in train[0]
  inference = [l for l in lines if "| inference " in l]
  assert [l.split(" | ")[1] for l in inference] == [
      "inference 64x64", "inference 96x54", "inference 128x72"]
  assert not any("skipped" in l for l in inference)
  assert "images/s** on" in table  # The input pipeline's rate.
