r"""One command for whatever accelerator is present: train, inference and input speed.

  python benchmarks/device_suite.py                      # every model, < 6 minutes
  python benchmarks/device_suite.py --models=issam,harmonizer --batch_size=128
  python benchmarks/device_suite.py --tiny               # CPU smoke run (CI)

Per model, on one chip (`jax.devices()[0]`), with random weights and data:
- train step (the trainer's jitted update step: forward, gradients, Adam) in
  float32 and, where the config has `dtype`, bfloat16: step time, images/s,
  peak device memory (the allocator's peak; XLA's buffer estimate where the
  backend has no allocator stats), and MFU = the step's FLOPs from XLA's cost
  analysis / step time / the chip's peak (CHIP_PEAKS; 'unknown' for an
  unlisted chip, and on CPUs);
- inference latency of the family's jitted `predict`, batch 1, at 256x256,
  1920x1080 and 3840x2160;
- the input pipeline's images/s (grain: decode, random resized crop, flip,
  batch, on synthesized 640x480 JPEG composites) next to each step's images/s.

Each model runs in its own process on accelerators (so its peak memory is its
own); measurements still pending when `--budget_s` runs out are skipped and
marked, so the whole run stays under 6 minutes. Writes a markdown table to
benchmarks/results/device_suite.md (or --output). `--tiny` uses each config's
`runlocal` model at 64x64, batch 2, inference at 64x64/96x54/128x72, and an
8-image dataset.
"""

import argparse
import datetime
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "device_suite.md")
MODELS = ("idih", "issam", "harmonizer", "dovenet", "bargainnet")
SIZES = ((256, 256), (1920, 1080), (3840, 2160))  # (width, height)
TINY_SIZES = ((64, 64), (96, 54), (128, 72))

# Dense peak FLOP/s of one chip by device_kind (lower-case substring, first
# match wins): (bfloat16, float32 as XLA runs it by default). On NVIDIA GPUs
# from Ampere on, XLA runs float32 convolutions and matmuls on TF32 tensor
# cores at JAX's default precision, so float32 MFU is against the TF32 peak;
# TPUs run float32 matmuls as bfloat16 passes at default precision.
# Vendor datasheets (dense, no sparsity).
CHIP_PEAKS = (
    ("h100 pcie", 756e12, 378e12),
    ("h100", 989e12, 494e12),     # SXM.
    ("h200", 989e12, 494e12),
    ("gh200", 989e12, 494e12),
    ("b200", 2250e12, 1100e12),
    ("a100", 312e12, 156e12),
    ("l40s", 362e12, 181e12),
    ("a10g", 70e12, 35e12),
    ("l4", 121e12, 60e12),
    ("tpu v6 lite", 918e12, 918e12),
    ("tpu v5 lite", 197e12, 197e12),
    ("tpu v5e", 197e12, 197e12),
    ("tpu v5p", 459e12, 459e12),
    ("tpu v5", 459e12, 459e12),
    ("tpu v4", 275e12, 275e12),
)


def chip_peak(device_kind: str, dtype: str) -> float | None:
  """Peak FLOP/s of a chip for dtype, or None if the chip is not listed."""
  kind = device_kind.lower()
  for key, bf16, fp32 in CHIP_PEAKS:
    if key in kind:
      return bf16 if dtype == "bfloat16" else fp32
  return None


def load_config(name: str, tiny: bool):
  path = os.path.join(ROOT, "configs", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"suite_config_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("runlocal" if tiny else None)


def _flops(compiled) -> float | None:
  cost = compiled.cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per program.
    cost = cost[0] if cost else {}
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def _xla_bytes(compiled) -> int | None:
  try:
    m = compiled.memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes
               - m.alias_size_in_bytes)
  except (AttributeError, TypeError, ValueError):
    return None


def _random_batch(b: int, h: int, w: int, seed: int = 0) -> dict:
  import numpy as np  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  mask = np.zeros((b, h, w, 1), np.float32)
  mask[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 1.0
  return {"composite": rng.uniform(size=(b, h, w, 3)).astype(np.float32),
          "real": rng.uniform(size=(b, h, w, 3)).astype(np.float32), "mask": mask}


def measure_model(name: str, args, deadline: float) -> list[dict]:
  """Train rows (per dtype) and inference rows of one model, in this process."""
  import inspect  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from harmonax import models, sharding, train  # pylint: disable=g-import-not-at-top
  device = jax.devices()[0]
  mesh = sharding.make_mesh([device])
  rows = []
  size = 64 if args.tiny else 256
  batch_size = args.batch_size or (2 if args.tiny else 32)
  for dtype in ("bfloat16", "float32"):  # bf16 first: the peak is a running maximum.
    row = {"model": name, "kind": "train", "dtype": dtype, "batch": batch_size, "size": size}
    rows.append(row)
    config = load_config(name, args.tiny)
    if dtype != "float32" and "dtype" not in config:
      row["skipped"] = "no config.dtype"
      continue
    if time.time() > deadline:
      row["skipped"] = "time budget"
      continue
    if "dtype" in config:
      config.dtype = dtype
    config.batch_size, config.data.image_size = batch_size, size
    fns = train.make_train_fns(config, steps_per_epoch=1000)
    state = train.initial_state(fns, sharding.replicated(mesh))
    with jax.set_mesh(mesh):
      batch = sharding.global_batch(_random_batch(batch_size, size, size), mesh)
      started = time.perf_counter()
      compiled = jax.jit(fns.train_step, donate_argnums=(0,)).lower(state, batch).compile()
      row["compile_s"] = time.perf_counter() - started
      row["flops"], row["xla_bytes"] = _flops(compiled), _xla_bytes(compiled)
      for _ in range(2):  # Warm-up.
        state = compiled(state, batch)[0]
      jax.block_until_ready(state)
      started = time.perf_counter()
      for _ in range(args.steps):
        state = compiled(state, batch)[0]
      jax.block_until_ready(state)
      row["step_s"] = (time.perf_counter() - started) / args.steps
    stats = device.memory_stats() or {}
    row["peak_bytes"] = stats.get("peak_bytes_in_use")
    peak = chip_peak(device.device_kind, dtype)
    if peak and row["flops"]:
      row["mfu"] = row["flops"] / row["step_s"] / peak
    del state, compiled

  config = load_config(name, args.tiny)
  family = models.get_family(config.model.name)
  nets = family.create_networks(config, nnx.Rngs(0))
  for net in nets.values():
    net.eval()
  if "config" in inspect.signature(family.predict).parameters:
    fn = lambda n, c, m: family.predict(config, n, {"composite": c, "mask": m})
  else:
    fn = family.predict
  predict = nnx.jit(fn)
  for w, h in (TINY_SIZES if args.tiny else SIZES):
    row = {"model": name, "kind": "inference", "dtype": "float32", "batch": 1,
           "size": f"{w}x{h}"}
    rows.append(row)
    if time.time() > deadline:
      row["skipped"] = "time budget"
      continue
    data = _random_batch(1, h, w)
    comp, mask = jax.device_put(data["composite"]), jax.device_put(data["mask"])
    started = time.perf_counter()
    jax.block_until_ready(predict(nets, comp, mask))
    row["compile_s"] = time.perf_counter() - started
    times = []
    for _ in range(args.steps):
      started = time.perf_counter()
      jax.block_until_ready(predict(nets, comp, mask))
      times.append(time.perf_counter() - started)
    row["latency_s"] = sorted(times)[len(times) // 2]
  return rows


def _write_hcoco(manual_dir: str, num_images: int, seed: int = 0) -> None:
  """An iHarmony4-layout HCOCO manual dir of 640x480 JPEG composites (smooth
  random photos, a recolored rectangle), as benchmarks/input_pipeline.py's."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  sub = os.path.join(manual_dir, "HCOCO")
  for d in ("composite_images", "masks", "real_images"):
    os.makedirs(os.path.join(sub, d), exist_ok=True)
  names = []
  for k in range(num_images):
    small = rng.uniform(0, 255, (6, 8, 3)).astype(np.uint8)
    real = np.asarray(Image.fromarray(small).resize((640, 480), Image.BICUBIC)).astype(
        np.float32) + rng.normal(0, 8, (480, 640, 3))
    real = np.clip(real, 0, 255).astype(np.uint8)
    mask = np.zeros((480, 640), np.uint8)
    h, w = rng.integers(80, 300), rng.integers(80, 400)
    y, x = rng.integers(0, 480 - h), rng.integers(0, 640 - w)
    mask[y:y + h, x:x + w] = 255
    composite = np.where(mask[..., None] > 0,
                         np.clip(real * rng.uniform(0.6, 1.4, 3), 0, 255), real)
    Image.fromarray(real).save(os.path.join(sub, "real_images", f"c{k}.jpg"), quality=90)
    Image.fromarray(composite.astype(np.uint8)).save(
        os.path.join(sub, "composite_images", f"c{k}_1_1.jpg"), quality=90)
    Image.fromarray(mask, mode="L").save(os.path.join(sub, "masks", f"c{k}_1.png"))
    names.append(f"c{k}_1_1.jpg")
  for split in ("train", "test"):
    with open(os.path.join(sub, f"HCOCO_{split}.txt"), "w") as f:
      f.write("\n".join(names))


def input_pipeline_rate(args) -> dict:
  """Training images/s of the grain pipeline on a synthesized iHarmony4 subset."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from data_builders.iharmony4 import iharmony4_dataset_builder as ihd  # pylint: disable=g-import-not-at-top
  from harmonax import config_args  # pylint: disable=g-import-not-at-top
  from harmonax import input_pipeline  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()  # Grain workers read absl flags.
  workdir = tempfile.mkdtemp(prefix="harmonax_suite_data_")
  try:
    _write_hcoco(os.path.join(workdir, "manual"), 8 if args.tiny else 64)
    builder = ihd.Builder(config="hcoco", data_dir=os.path.join(workdir, "tfds"),
                          file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=os.path.join(workdir, "manual")))
    config = config_args.data_config("iharmony4/hcoco", image_size=64 if args.tiny else 256,
                                     data_dir=os.path.join(workdir, "tfds"))
    config.num_workers = 0 if args.tiny else min(os.cpu_count() or 1, 8)
    batch, batches = (4, 3) if args.tiny else (32, 10)
    iterator = input_pipeline.make_train_iterator(config, batch, seed=0)
    for _ in range(2):  # Warm-up (worker start).
      next(iterator)
    started = time.perf_counter()
    for _ in range(batches):
      next(iterator)
    rate = batches * batch / (time.perf_counter() - started)
    if hasattr(iterator, "close"):
      iterator.close()
    return {"images_per_s": rate, "workers": config.num_workers, "batch": batch,
            "size": config.image_size}
  finally:
    shutil.rmtree(workdir, ignore_errors=True)


def _child(args) -> None:
  rows = measure_model(args.models, args, args.deadline)
  print("ROWS " + json.dumps(rows), flush=True)


def _run_isolated(name: str, args, deadline: float) -> list[dict]:
  command = [sys.executable, os.path.abspath(__file__), "--child", f"--models={name}",
             f"--deadline={deadline}", f"--steps={args.steps}",
             f"--batch_size={args.batch_size}"] + (["--tiny"] if args.tiny else [])
  env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
  try:
    out = subprocess.run(command, env=env, capture_output=True, text=True, check=False,
                         timeout=max(deadline - time.time(), 0) + 60)
  except subprocess.TimeoutExpired:
    return [{"model": name, "kind": "train", "skipped": "time budget (killed)"}]
  match = re.search(r"^ROWS (.*)$", out.stdout, re.M)
  if not match:
    tail = out.stderr.strip().splitlines()[-1:] or ["no output"]
    return [{"model": name, "kind": "train", "skipped": f"failed: {tail[0][:120]}"}]
  return json.loads(match.group(1))


def _fmt(value, spec: str, missing: str = "") -> str:
  return missing if value is None else format(value, spec)


def format_table(rows: list[dict], pipeline: dict | None, device, started: str,
                 elapsed: float) -> str:
  import jax  # pylint: disable=g-import-not-at-top
  peaks = {d: chip_peak(device.device_kind, d) for d in ("bfloat16", "float32")}
  peak_text = (", ".join(f"{d} {p / 1e12:.0f} TFLOP/s" for d, p in peaks.items() if p)
               or "unknown (not in CHIP_PEAKS: no MFU)")
  rate = pipeline["images_per_s"] if pipeline else None
  lines = [
      f"Device: {device.device_kind} ({device.platform}), {jax.device_count()} device(s), "
      f"one used; jax {jax.__version__}; {started}; the suite took {elapsed:.0f} s. "
      f"Chip peak: {peak_text}.",
      ("Input pipeline (grain, 640x480 JPEG composites -> "
       f"{pipeline['size']}x{pipeline['size']} crops, {pipeline['workers']} workers, batch "
       f"{pipeline['batch']}): **{rate:.0f} images/s** on {os.cpu_count()} host CPUs."
       if pipeline else "Input pipeline: not measured."),
      "",
      "| model | measurement | dtype | batch | step / latency s | images/s | "
      "input / step | MFU | peak memory GiB | GFLOP/step | compile s |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    what = (f"train {r.get('size')}" if r["kind"] == "train"
            else f"inference {r.get('size')}")
    if "skipped" in r:
      lines.append(f"| {r['model']} | {what} | {r.get('dtype', '')} | {r.get('batch', '')} | "
                   f"skipped: {r['skipped']} |  |  |  |  |  |  |")
      continue
    if r["kind"] == "train":
      ips = r["batch"] / r["step_s"]
      peak = r.get("peak_bytes") or r.get("xla_bytes")
      peak_note = "" if r.get("peak_bytes") else " (XLA est.)"
      mfu = f"{r['mfu']:.1%}" if r.get("mfu") is not None else "unknown"
      lines.append(
          f"| {r['model']} | {what} | {r['dtype']} | {r['batch']} | {r['step_s']:.4f} | "
          f"{ips:.1f} | {_fmt(rate and rate / ips, '.2f')} | {mfu} | "
          f"{_fmt(peak and peak / 2**30, '.2f')}{peak_note if peak else ''} | "
          f"{_fmt(r['flops'] and r['flops'] / 1e9, '.1f')} | {r['compile_s']:.1f} |")
    else:
      lines.append(
          f"| {r['model']} | {what} | {r['dtype']} | 1 | {r['latency_s']:.4f} | "
          f"{1 / r['latency_s']:.1f} |  |  |  |  | {r['compile_s']:.1f} |")
  return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(MODELS))
  parser.add_argument("--batch_size", type=int, default=0,
                      help="train batch (default 32; 2 with --tiny)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps / calls")
  parser.add_argument("--budget_s", type=float, default=330.0,
                      help="stop starting measurements after this many seconds")
  parser.add_argument("--tiny", action="store_true", help="runlocal models, CPU-sized")
  parser.add_argument("--isolate", choices=("auto", "yes", "no"), default="auto",
                      help="a process per model (auto: on accelerators)")
  parser.add_argument("--skip_input_pipeline", action="store_true")
  parser.add_argument("--output", default=RESULTS)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  parser.add_argument("--deadline", type=float, default=0.0, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  sys.path.insert(0, ROOT)
  if args.child:
    _child(args)
    return ""
  from harmonax import xla_setup  # pylint: disable=g-import-not-at-top
  xla_setup.configure()  # The CLIs' XLA flags (children inherit them).
  import jax  # pylint: disable=g-import-not-at-top
  start = time.time()
  deadline = start + args.budget_s
  started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  device = jax.devices()[0]
  isolate = (args.isolate == "yes" or
             (args.isolate == "auto" and device.platform != "cpu"))
  pipeline = None if args.skip_input_pipeline else input_pipeline_rate(args)
  rows = []
  for name in args.models.split(","):
    rows += (_run_isolated(name, args, deadline) if isolate
             else measure_model(name, args, deadline))
    print(f"{name}: done at {time.time() - start:.0f} s", file=sys.stderr, flush=True)
  table = format_table(rows, pipeline, device, started, time.time() - start)
  print(table)
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as f:
    f.write("# Device suite\n\n" + table)
  return table


if __name__ == "__main__":
  main()
