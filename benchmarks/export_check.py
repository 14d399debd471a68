r"""Full-size exports against `harmonize`: file size, conversion time, agreement.

  python -m benchmarks.export_check [--recipes=pctnet_vit,pctnet_cnn,cdtnet] [--size=1024]
      [--dynamic_sizes=1024x1024,720x1280] [--time=3]

For each recipe, the full-size network with random weights (seed 0: agreement
does not depend on their values) is saved and exported with uint8 inputs, to
ONNX and StableHLO, at --size x --size and with a dynamic height and width. Each
file runs (onnxruntime, `jax.export`) on a sample photo with an elliptic
foreground shifted in colour, and its image is compared with
`inference.harmonize`'s: the largest 8-bit difference and how many values
differ. `--time=N` also times the fixed-size ONNX file in onnxruntime against
`harmonize`, alternating, N calls each after a warm-up (medians).

  python -m benchmarks.export_check --memory=2160x3840

measures instead what the dynamic files cost at that size (H x W): each of
`harmonize`, the ONNX and StableHLO files exported at that size, and the dynamic
ONNX and StableHLO files runs the photo twice in a fresh process, which reports
the second call's seconds, its resident memory once the inputs are made and the
runtime is loaded, and the peak resident memory of the two calls (Linux's VmHWM,
reset by /proc/self/clear_refs after the set-up, so making the photo does not
count). A dynamic file computes its chunk loops as one piece,
`harmonize` and fixed-size files in chunks (README, exports). The tests
(`tests/export_test.py`) check the same at runlocal size; this is the full-size
check. Prints a markdown table and writes it to benchmarks/results/export_check.md
(--memory: appends to benchmarks/results/export_memory.md).
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image

from harmonax import checkpoint
from harmonax import conversion
from harmonax import export_lib
from harmonax import inference
from harmonax import models
from harmonax import variables

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "data_builders", "harmonization_composites", "sample", "coffee.jpg")


def photo(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """(composite uint8 [1,H,W,3], mask uint8 [1,H,W,1] 0/255)."""
  real = np.asarray(Image.open(SAMPLE).convert("RGB").resize((width, height), Image.BILINEAR),
                    np.float32) / 255.0
  y, x = np.mgrid[:height, :width]
  fg = ((y - height * 0.55) / (height * 0.3)) ** 2 + ((x - width * 0.45) / (width * 0.25)) ** 2 < 1
  composite = np.where(fg[..., None], np.clip(real * [1.2, 0.9, 0.7] + 0.05, 0, 1), real)
  return (np.round(composite * 255).astype(np.uint8)[None],
          (fg[..., None] * 255).astype(np.uint8)[None])


def _runner(fmt: str, path: str):
  if fmt == "stablehlo":
    return export_lib.load_stablehlo(path)
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  options = ort.SessionOptions()
  options.log_severity_level = 3  # Errors only.
  session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
  return lambda c, m: session.run(None, {"composite": c, "mask": m})[0]


def _measure(kind: str, path: str, height: int, width: int) -> None:
  """In a fresh process: runs `path` (a file, or a checkpoint for 'harmonize')
  twice on the photo; prints the second call's seconds and the peak RSS."""
  composite, mask = photo(height, width)
  if kind == "harmonize":
    config, networks = checkpoint.load_networks(path)
    run = lambda: inference.harmonize(networks, composite[0], mask[0], config=config)
  else:
    file_run = _runner(kind, path)
    run = lambda: np.asarray(file_run(composite, mask))
  with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # Resets VmHWM to the current resident memory.
  before = _status_mib("VmRSS")
  run()
  started = time.perf_counter()
  run()
  print("MEASURED " + json.dumps({"seconds": time.perf_counter() - started, "before_mib": before,
                                  "peak_mib": _status_mib("VmHWM")}), flush=True)


def _status_mib(field: str) -> float:
  with open("/proc/self/status", encoding="utf-8") as f:
    line = next(line for line in f if line.startswith(field + ":"))
  return int(line.split()[1]) / 1024  # kB.


def _memory_rows(recipe: str, directory: str, tmp: str, height: int, width: int,
                 dynamic_files: dict[str, str]) -> list[str]:
  """Table rows: harmonize, a fixed-size StableHLO file and the dynamic files at HxW."""
  runs = [("harmonize", "harmonize", directory)]
  for fmt in sorted(dynamic_files):
    fixed, _ = export_lib.export(directory, fmt, os.path.join(tmp, "memory") + "/",
                                 height, width, input_dtype="uint8")
    runs += [(fmt, f"{fmt} (fixed size)", fixed), (fmt, f"{fmt} (dynamic)", dynamic_files[fmt])]
  rows = []
  for kind, label, path in runs:
    out = subprocess.run(
        [sys.executable, "-m", "benchmarks.export_check", f"--_measure={kind}",
         f"--_path={path}", f"--memory={height}x{width}"],
        capture_output=True, text=True, check=False,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    found = [line for line in out.stdout.splitlines() if line.startswith("MEASURED ")]
    if not found:  # E.g. killed for memory: say so in the table.
      reason = ("killed (out of memory?)" if out.returncode == -9 else
                (out.stderr.strip().splitlines() or [""])[-1][:120])
      rows.append(f"| {recipe} | {label} | {height}x{width} | failed, exit {out.returncode}: "
                  f"{reason} | | |")
    else:
      result = json.loads(found[0][len("MEASURED "):])
      rows.append(f"| {recipe} | {label} | {height}x{width} | {result['seconds']:.2f} | "
                  f"{result['before_mib']:,.0f} | {result['peak_mib']:,.0f} |")
    print(rows[-1], flush=True)
  return rows


def _size(text: str) -> tuple[int, int]:
  height, width = (int(v) for v in text.split("x"))
  return height, width


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--recipes", default="pctnet_vit,pctnet_cnn,cdtnet")
  parser.add_argument("--size", type=int, default=1024)
  parser.add_argument("--dynamic_sizes", default="1024x1024,720x1280")
  parser.add_argument("--time", type=int, default=0)
  parser.add_argument("--memory", default="",
                      help="HxW: peak memory and time of the dynamic files at that size")
  parser.add_argument("--_measure", default="", help=argparse.SUPPRESS)
  parser.add_argument("--_path", default="", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args._measure:  # pylint: disable=protected-access
    _measure(args._measure, args._path, *_size(args.memory))  # pylint: disable=protected-access
    return
  if args.memory:
    _memory_main(args)
    return
  dynamic_sizes = [tuple(int(v) for v in s.split("x")) for s in args.dynamic_sizes.split(",")]
  rows, timings = [], []
  with tempfile.TemporaryDirectory() as tmp:
    for recipe in args.recipes.split(","):
      config = conversion.default_config(recipe)
      networks = models.get_family(config.model.name).create_networks(config, variables.rngs(0))
      for net in networks.values():
        net.eval()
      directory = os.path.join(tmp, recipe)
      checkpoint.save_networks(directory, config, networks)
      for fmt in ("onnx", "stablehlo"):
        for dynamic in (False, True):
          size = None if dynamic else args.size
          started = time.perf_counter()
          path, _ = export_lib.export(directory, fmt, os.path.join(tmp, "out") + "/",
                                      size, size, input_dtype="uint8")
          seconds = time.perf_counter() - started
          run = _runner(fmt, path)
          for height, width in dynamic_sizes if dynamic else [(args.size, args.size)]:
            composite, mask = photo(height, width)
            want = inference.harmonize(networks, composite[0], mask[0], config=config)
            diff = np.abs(np.asarray(run(composite, mask))[0].astype(int) - want.astype(int))
            rows.append(f"| {os.path.basename(path)} | {os.path.getsize(path) / 1e6:.1f} | "
                        f"{seconds:.1f} | {height}x{width} | {diff.max()} | "
                        f"{int((diff > 0).sum())} of {diff.size:,} |")
            print(rows[-1], flush=True)
          if args.time and fmt == "onnx" and not dynamic:
            composite, mask = photo(args.size, args.size)
            calls = {"onnxruntime": lambda: run(composite, mask),
                     "harmonize": lambda: inference.harmonize(networks, composite[0], mask[0],
                                                              config=config)}
            spent = {k: [] for k in calls}
            for fn in calls.values():
              fn()  # Warm-up (and harmonize's compilation).
            for _ in range(args.time):
              for name, fn in calls.items():
                started = time.perf_counter()
                fn()
                spent[name].append(time.perf_counter() - started)
            timings.append(f"| {recipe} | {args.size}x{args.size} | "
                           f"{statistics.median(spent['onnxruntime']):.3f} | "
                           f"{statistics.median(spent['harmonize']):.3f} |")
            print(timings[-1], flush=True)
  lines = [f"Full-size exports, uint8, random weights ({datetime.datetime.now():%Y-%m-%d %H:%M}, "
           f"{platform.machine()}, {os.cpu_count()} CPUs, load average "
           f"{os.getloadavg()[0]:.1f}; `python -m benchmarks.export_check`)", "",
           "| file | MB | export s | size | max 8-bit diff | values differing |",
           "|---|---|---|---|---|---|", *rows]
  if timings:
    lines += ["", f"onnxruntime against harmonize, medians of {args.time} alternating calls (s):",
              "", "| recipe | size | onnxruntime | harmonize |", "|---|---|---|---|", *timings]
  table = "\n".join(lines)
  print(table)
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "export_check.md")
  with open(out, "w", encoding="utf-8") as f:
    f.write(table + "\n")


def _memory_main(args) -> None:
  height, width = _size(args.memory)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for recipe in args.recipes.split(","):
      config = conversion.default_config(recipe)
      networks = models.get_family(config.model.name).create_networks(config, variables.rngs(0))
      directory = os.path.join(tmp, recipe)
      checkpoint.save_networks(directory, config, networks)
      dynamic = {fmt: export_lib.export(directory, fmt, os.path.join(tmp, "dynamic") + "/",
                                        input_dtype="uint8")[0] for fmt in ("onnx", "stablehlo")}
      rows += _memory_rows(recipe, directory, tmp, height, width, dynamic)
  lines = [f"\n### {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, "
           f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}; "
           f"`python -m benchmarks.export_check --memory={args.memory}`", "",
           "| recipe | run | size | s (2nd call) | resident MiB before | peak MiB |",
           "|---|---|---|---|---|---|",
           *rows]
  table = "\n".join(lines)
  print(table)
  out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "export_memory.md")
  with open(out, "a", encoding="utf-8") as f:
    f.write(table + "\n")


if __name__ == "__main__":
  main()
