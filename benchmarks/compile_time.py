r"""Compile time of a recipe's runlocal update step under the test suite's XLA flags.

  python benchmarks/compile_time.py                         # harmonizer, every mode
  python benchmarks/compile_time.py --models=dovenet,issam --repeats=2

The suite's time is mostly XLA compiling small programs that then run a step or
two, so conftest.py compiles with flags that make compiling cheaper. For each
model and mode, a child process (XLA_FLAGS are read once, at import) builds the
trainer's functions for `configs/<model>.py:runlocal` on 8 CPU devices, as the
tests do, and times initialising the state and tracing, lowering and compiling
the update step (no persistent compilation cache; the initialiser always
compiles at LLVM level 0, train.initial_state). Modes:
  default    XLA's defaults;
  o0         --xla_backend_optimization_level=0 (LLVM's optimisation level 0);
  tests      o0 plus --xla_cpu_use_fusion_emitters=false and
             --xla_cpu_parallel_codegen_split_count=1 (conftest.py's flags);
  jemalloc   tests, with jemalloc preloaded instead of glibc's malloc, as
             tests/run.sh does where libjemalloc2 is installed;
  split      jemalloc without the last flag: XLA splits each program's LLVM
             module and compiles the parts on its thread pool.
Compiling is single-threaded, so this needs a quiet machine: the 1-minute load
average is recorded. Appends a table to benchmarks/results/compile_time.md.
"""

import argparse
import datetime
import glob
import json
import os
import platform
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "compile_time.md")
MODES = {
    "default": [],
    "o0": ["--xla_backend_optimization_level=0"],
    "tests": ["--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false",
              "--xla_cpu_parallel_codegen_split_count=1"],
}
MODES["jemalloc"] = MODES["tests"]
# conftest.py's flags before the last one (one LLVM module, not several compiled
# in parallel), with jemalloc: what that flag is measured against.
MODES["split"] = MODES["tests"][:2]
JEMALLOC = "/usr/lib/*/libjemalloc.so.2"
PRELOADED = {"jemalloc": JEMALLOC, "split": JEMALLOC}


def child(model: str) -> dict[str, float]:
  """Times one build of `model`'s runlocal train step in this process."""
  import time  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, ROOT)
  from harmonax import sharding  # pylint: disable=g-import-not-at-top
  from harmonax import train  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{model}").get_config("runlocal")
  fns = train.make_train_fns(config, steps_per_epoch=100)
  mesh = sharding.make_mesh()
  start = time.perf_counter()
  state = train.initial_state(fns, sharding.replicated(mesh))
  jax.block_until_ready(state)
  init = time.perf_counter() - start
  size, batch = config.data.image_size, config.batch_size
  rng = np.random.default_rng(0)
  local = {k: rng.integers(0, 256, (batch, size, size, 1 if k == "mask" else 3),
                           dtype=np.uint8) for k in ("composite", "real", "mask")}
  local["mask"] = (local["mask"] > 127).astype(np.uint8)
  with jax.set_mesh(mesh):
    global_batch = sharding.global_batch(local, mesh)
    start = time.perf_counter()
    lowered = jax.jit(fns.train_step).lower(state, global_batch)
    lower = time.perf_counter() - start
    start = time.perf_counter()
    lowered.compile()
    compile_s = time.perf_counter() - start
  return {"init": init, "trace_and_lower": lower, "compile": compile_s}


def run_child(model: str, mode: str) -> dict[str, float]:
  env = dict(os.environ)
  env["XLA_FLAGS"] = " ".join(["--xla_force_host_platform_device_count=8", *MODES[mode]])
  env["JAX_PLATFORMS"] = "cpu"
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  env["JAX_ENABLE_COMPILATION_CACHE"] = "false"
  env.pop("LD_PRELOAD", None)
  if mode in PRELOADED:
    found = glob.glob(PRELOADED[mode])
    if not found:
      raise SystemExit(f"mode {mode}: no {PRELOADED[mode]} (Debian/Ubuntu: apt install libjemalloc2)")
    env["LD_PRELOAD"] = found[0]
  out = subprocess.run([sys.executable, __file__, "--child", "--models", model],
                       env=env, capture_output=True, text=True, check=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="harmonizer")
  parser.add_argument("--modes", default=",".join(MODES))
  parser.add_argument("--repeats", type=int, default=1, help="children per model and mode")
  parser.add_argument("--output", default=RESULTS)
  parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    print(json.dumps(child(args.models)))
    return
  started = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
  loads = [os.getloadavg()[0]]
  lines = ["| model | mode | XLA flags | init s | trace + lower s | compile s |",
           "|---|---|---|---|---|---|"]
  for model in args.models.split(","):
    for mode in args.modes.split(","):
      runs = [run_child(model, mode) for _ in range(args.repeats)]
      median = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
      print(model, mode, json.dumps(median), flush=True)
      flags = " ".join(f"`{f}`" for f in MODES[mode]) or "none"
      if mode in PRELOADED:
        flags += ", jemalloc preloaded"
      lines.append(f"| {model} | {mode} | {flags} | {median['init']:.1f} | "
                   f"{median['trace_and_lower']:.1f} | {median['compile']:.1f} |")
  loads.append(os.getloadavg()[0])
  import jax  # pylint: disable=g-import-not-at-top
  table = (f"Measured {started} on {os.cpu_count()} CPU cores ({platform.machine()}), "
           f"jax {jax.__version__}, 8 fake CPU devices, median of {args.repeats} "
           f"process(es); 1-minute load average {loads[0]:.1f} at the start and "
           f"{loads[1]:.1f} at the end.\n\n" + "\n".join(lines) + "\n")
  print(table)
  if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
  from benchmarks import report  # pylint: disable=g-import-not-at-top
  report.append_table(args.output, "# Compile time of the runlocal update steps (test flags)",
                      table)


if __name__ == "__main__":
  main()
