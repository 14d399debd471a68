r"""Train-step speed and memory of a config's model on this machine's CPU.

  python benchmarks/train_step.py --config=configs/issam.py
  python benchmarks/train_step.py --config=configs/idih.py --batch_sizes=16,4 \
      --variants=default,onednn --steps=3

Each (variant, batch size) runs in a fresh process (so peak RSS and XLA flags
are its own) on one CPU device: the trainer's own update step
(`harmonax.train.make_train_fns`) on random 256x256 batches. Prints a markdown
table (compile time, median step time, images/s, peak RSS) and writes it to
benchmarks/results/train_step.md, one section per model and batch sizes.

`--alternate` keeps one process per variant alive and has them take turns,
one step each (A B A B ...), so that a shared machine's load hits every
variant alike; that is the way to compare XLA flags on a busy machine.
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import re
import resource
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "train_step.md")

# Settings tried against XLA's CPU defaults: (XLA_FLAGS, other environment).
ONEDNN = "--xla_cpu_use_onednn=true"
VARIANTS = {
    "default": ("", {}),
    "onednn": (ONEDNN, {}),
    "fast_math": ("--xla_cpu_enable_fast_math=true", {}),
    "no_thunks": ("--xla_cpu_use_thunk_runtime=false", {}),
    "onednn+fast_math": (ONEDNN + " --xla_cpu_enable_fast_math=true", {}),
    # bf16 inputs to convolutions/matmuls (f32 accumulation) where XLA honors it.
    "onednn+bf16_precision": (ONEDNN, {"JAX_DEFAULT_MATMUL_PRECISION": "bfloat16"}),
}


def describe(variant: str) -> str:
  flags, env = VARIANTS[variant]
  parts = ([f"XLA_FLAGS={flags}"] if flags else []) + [f"{k}={v}" for k, v in env.items()]
  return " ".join(parts) or "-"


def load_config(spec: str):
  """'configs/issam.py:runlocal' -> get_config('runlocal')."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("benchmark_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def child(args) -> None:
  """Measures one setting and prints a JSON line."""
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from harmonax import sharding  # pylint: disable=g-import-not-at-top
  from harmonax import train  # pylint: disable=g-import-not-at-top

  config = load_config(args.config)
  config.batch_size = args.batch_size
  config.data.image_size = args.image_size
  mesh = sharding.make_mesh()
  fns = train.make_train_fns(config, steps_per_epoch=1000)
  state = train.initial_state(fns, sharding.replicated(mesh))
  num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  rng = np.random.default_rng(0)
  b, s = args.batch_size, args.image_size
  mask = np.zeros((b, s, s, 1), np.float32)
  mask[:, s // 4:3 * s // 4, s // 4:3 * s // 4] = 1.0
  local = {"composite": rng.uniform(size=(b, s, s, 3)).astype(np.float32),
           "real": rng.uniform(size=(b, s, s, 3)).astype(np.float32), "mask": mask}
  batch = sharding.global_batch(local, mesh)

  with jax.set_mesh(mesh):
    started = time.perf_counter()
    step = jax.jit(fns.train_step, donate_argnums=(0,)).lower(state, batch).compile()
    compile_s = time.perf_counter() - started
    times = []
    if args.alternate:  # One step per 'step' line on stdin, then its time.
      print(f"READY {compile_s}", flush=True)
    for _ in range(args.steps + 1):  # The first call is a warm-up.
      if args.alternate and sys.stdin.readline().strip() != "step":
        break
      started = time.perf_counter()
      state, metrics = step(state, batch)[:2]
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - started)
      if args.alternate:
        print(f"TIME {times[-1]}", flush=True)
  step_s = float(np.median(times[1:]))
  print("RESULT " + json.dumps({
      "params": int(num_params), "compile_s": compile_s, "step_s": step_s,
      "images_per_s": b / step_s,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "loss": float(np.sum([float(v) for k, v in metrics.items()
                             if k.startswith("loss/")]))}))


def run_child(args, variant: str, batch_size: int) -> dict | None:
  flags, extra_env = VARIANTS[variant]
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, **extra_env)
  command = [sys.executable, os.path.abspath(__file__), "--child",
             f"--config={args.config}", f"--batch_sizes={batch_size}",
             f"--image_size={args.image_size}", f"--steps={args.steps}"]
  try:
    out = subprocess.run(command, env=env, capture_output=True, text=True,
                         timeout=args.timeout, check=False)
  except subprocess.TimeoutExpired:
    print(f"  {variant} b{batch_size}: over {args.timeout} s, skipped", file=sys.stderr)
    return None
  match = re.search(r"^RESULT (.*)$", out.stdout, re.M)
  if not match:
    print(f"  {variant} b{batch_size} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
    return None
  return json.loads(match.group(1))


def run_alternating(args, variants: list[str], batch_size: int) -> dict[str, dict]:
  """One worker process per variant; steps taken in turn. Returns results by variant."""
  workers = {}
  for variant in variants:
    flags, extra_env = VARIANTS[variant]
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=flags, **extra_env)
    command = [sys.executable, os.path.abspath(__file__), "--child", "--alternate",
               f"--config={args.config}", f"--batch_sizes={batch_size}",
               f"--image_size={args.image_size}", f"--steps={args.steps}"]
    workers[variant] = subprocess.Popen(command, env=env, stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, text=True)

  def read(worker, prefix):
    for line in worker.stdout:
      if line.startswith(prefix):
        return line
    raise RuntimeError(f"worker exited without {prefix!r}")
  for worker in workers.values():  # Compilation is not alternated.
    read(worker, "READY")
  for _ in range(args.steps + 1):
    for worker in workers.values():
      worker.stdin.write("step\n")
      worker.stdin.flush()
      read(worker, "TIME")
  results = {}
  for variant, worker in workers.items():
    worker.stdin.close()
    results[variant] = json.loads(read(worker, "RESULT")[len("RESULT "):])
    worker.wait()
  return results


def load_average() -> str:
  return f"{os.getloadavg()[0]:.1f}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch_sizes", default="16,4")
  parser.add_argument("--image_size", type=int, default=256)
  parser.add_argument("--steps", type=int, default=3, help="timed steps after 1 warm-up")
  parser.add_argument("--variants", default="default,onednn")
  parser.add_argument("--timeout", type=int, default=1800, help="seconds per setting")
  parser.add_argument("--alternate", action="store_true",
                      help="variants take turns step by step (one process each)")
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    args.batch_size = int(args.batch_sizes)
    child(args)
    return

  name = os.path.splitext(os.path.basename(args.config.partition(":")[0]))[0]
  load_before = load_average()
  rows, params = [], None
  for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
    variants = args.variants.split(",")
    alternated = run_alternating(args, variants, batch_size) if args.alternate else {}
    for variant in variants:
      result = alternated.get(variant) or (
          None if args.alternate else run_child(args, variant, batch_size))
      if result is None:
        continue
      params = result["params"]
      rows.append(
          f"| {variant} | `{describe(variant)}` | {batch_size} | "
          f"{result['compile_s']:.1f} | {result['step_s']:.2f} | "
          f"{result['images_per_s']:.2f} | {result['peak_rss_mib']:.0f} |")
      print(rows[-1], flush=True)

  section = "\n".join([
      f"## Train step: {name} (`{args.config}`), {args.image_size}x{args.image_size}, "
      f"batch {args.batch_sizes}",
      "",
      f"Machine: {os.cpu_count()}-core CPU ({platform.machine()}), no GPU, shared with "
      f"other jobs (1-min load average {load_before} before, {load_average()} after); "
      f"{datetime.date.today().isoformat()}. One CPU device, the trainer's update step "
      f"(forward, per-network pullbacks, optimizer), fp32, random weights and data, "
      f"{params if params is not None else '?'} parameters; median of {args.steps} steps "
      "after 1 warm-up, each row in a fresh process"
      + (", the variants' processes taking turns step by step." if args.alternate else "."),
      "",
      "| variant | environment | batch | compile s | step s | images/s | peak RSS MiB |",
      "|---|---|---|---|---|---|---|",
      *rows, ""])
  print(section)
  _write_section(section)


def _write_section(section: str) -> None:
  """Replaces (or appends) the section with this heading in the results file."""
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  text = open(RESULTS).read() if os.path.exists(RESULTS) else ""
  sections = [s for s in re.split(r"(?m)^(?=## )", text) if s.strip()]
  heading = section.split("\n", 1)[0]
  sections = [s for s in sections if s.split("\n", 1)[0] != heading]
  sections.append(section)
  with open(RESULTS, "w") as f:
    f.write("\n".join(s.rstrip() + "\n" for s in sections))


if __name__ == "__main__":
  main()
