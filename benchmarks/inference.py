"""Inference speed and memory of a model family's `predict` at 256, 1024 and 2048 pixels.

For each size (square, batch 1) a fresh subprocess builds the config's networks
(random weights: speed does not depend on their values), times XLA compilation
separately, runs `--warmup` untimed calls, then times `--repeats` calls. Memory is the
subprocess's peak resident set size (includes Python, JAX and the weights) and
XLA's own estimate of the program's buffers (arguments + outputs + temporaries).

  python -m benchmarks.inference --config=configs/issam.py [--sizes=256,1024,2048]
"""

import datetime
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import time

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmonax import models

_CONFIG = flags.DEFINE_string("config", None, "Config file, optionally with ':arg'.",
                              required=True)
_SIZES = flags.DEFINE_list("sizes", ["256", "1024", "2048"], "Square image sizes.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per size.")
_WARMUP = flags.DEFINE_integer("warmup", 1, "Untimed calls before timing (compile is separate).")
_ONE_SIZE = flags.DEFINE_integer("one_size", 0, "Internal: measure one size, print JSON.")
_OUTPUT = flags.DEFINE_string(
    "output", os.path.join(os.path.dirname(__file__), "results", "inference.md"),
    "Where the markdown table is written.")


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`configs/x.py[:arg]` -> get_config(arg)."""
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", path)
  if module_spec is None:
    raise FileNotFoundError(f"--config: no config file at {path!r}")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def measure(config: ml_collections.ConfigDict, size: int, repeats: int, warmup: int
            ) -> dict[str, float]:
  """Compile time, seconds per image and memory for one square size, batch 1."""
  family = models.get_family(config.model.name)
  networks = family.create_networks(config, nnx.Rngs(0))
  for net in networks.values():
    net.eval()
  graphdef, state = nnx.split(networks)
  params = sum(x.size for x in jax.tree.leaves(nnx.state(networks, nnx.Param)))

  @jax.jit
  def run(state, composite, mask):
    return family.predict(config, nnx.merge(graphdef, state),
                          {"composite": composite, "mask": mask})

  rng = np.random.default_rng(0)
  composite = jnp.asarray(rng.uniform(0, 1, (1, size, size, 3)), jnp.float32)
  mask = np.zeros((1, size, size, 1), np.float32)
  mask[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = 1.0
  mask = jnp.asarray(mask)

  start = time.perf_counter()
  compiled = run.lower(state, composite, mask).compile()
  compile_s = time.perf_counter() - start
  analysis = compiled.memory_analysis()
  xla_bytes = (analysis.argument_size_in_bytes + analysis.output_size_in_bytes
               + analysis.temp_size_in_bytes) if analysis is not None else float("nan")
  for _ in range(warmup):
    compiled(state, composite, mask).block_until_ready()
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    compiled(state, composite, mask).block_until_ready()
    times.append(time.perf_counter() - start)
  # ru_maxrss is in KiB on Linux.
  rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
  return {"size": size, "params": params, "compile_s": compile_s,
          "best_s": min(times), "median_s": float(np.median(times)),
          "rss_gib": rss / 2**30, "xla_gib": xla_bytes / 2**30,
          "load_avg": os.getloadavg()[0]}


def main(argv: list[str]) -> None:
  del argv
  if _ONE_SIZE.value:
    result = measure(load_config(_CONFIG.value), _ONE_SIZE.value, _REPEATS.value,
                     _WARMUP.value)
    print("RESULT " + json.dumps(result))
    return
  config = load_config(_CONFIG.value)
  rows = []
  params = 0
  for size in (int(s) for s in _SIZES.value):
    # A fresh process per size, so peak RSS belongs to that size alone.
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.inference", f"--config={_CONFIG.value}",
         f"--one_size={size}", f"--repeats={_REPEATS.value}",
         f"--warmup={_WARMUP.value}"],
        capture_output=True, text=True, check=False)
    line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
      print(f"size {size} failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
      rows.append(f"| {size}x{size} | failed (exit {proc.returncode}) | | | | | | |")
      continue
    r = json.loads(line[len("RESULT "):])
    params = r["params"]
    print(r)
    rows.append(f"| {size}x{size} | {r['compile_s']:.1f} | {1 / r['best_s']:.3g} | "
                f"{r['best_s']:.3g} | {r['median_s']:.3g} | {r['rss_gib']:.2f} | "
                f"{r['xla_gib']:.3f} | {r['load_avg']:.1f} |")
  table = "\n".join([
      f"## Inference: {config.model.name} (`{_CONFIG.value}`), batch 1",
      "",
      f"Machine: 2-core CPU ({platform.machine()}), no GPU, shared with other jobs; "
      f"{datetime.date.today().isoformat()}. jax {jax.__version__}, random weights, "
      f"{params / 1e6:.2f}M parameters; {_REPEATS.value} timed call(s) after "
      f"{_WARMUP.value} warm-up call(s), each size in a fresh process. images/s from the "
      "best call (the machine is shared: the load average column shows how busy it was). "
      "Peak RSS includes Python, JAX and the weights; XLA buffers = arguments + outputs + "
      "temporaries of the compiled program.",
      "",
      "| size | compile s | images/s | best s/image | median s/image | peak RSS GiB | "
      "XLA buffers GiB | load avg |",
      "|---|---|---|---|---|---|---|---|",
      *rows,
  ]) + "\n"
  print(table)
  os.makedirs(os.path.dirname(_OUTPUT.value), exist_ok=True)
  with open(_OUTPUT.value, "w", encoding="utf-8") as f:
    f.write(table)


if __name__ == "__main__":
  app.run(main)
