r"""Where a train step's CPU time goes: per-HLO-op time from a JAX profile.

  python benchmarks/profile_step.py --config=configs/issam.py --batch_size=4
  python benchmarks/profile_step.py --config=configs/idih.py:runlocal --image_size=64

Compiles the trainer's update step (`harmonax.train.make_train_fns`) on random
data, runs `--steps` steps under `jax.profiler.trace`, reads the Perfetto trace,
and sums the time of each compiled op (convolution, fusion, oneDNN custom call,
...) over the steps. Each op is labelled from the HLO metadata with its kind
(forward, or backward = 'transpose(jvp(...))'), its JAX primitive and shapes,
then grouped; the top rows are printed as a markdown table.
"""

import argparse
import collections
import glob
import gzip
import importlib.util
import json
import os
import re
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec: str):
  path, _, arg = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("profiled_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


_INSTR = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (\S+) (\w[\w\-]*)\((.*)$")


def op_labels(hlo_text: str) -> dict[str, str]:
  """Instruction name -> 'direction kind:primitive -> shape' for the compiled
  module's instructions (the profile's events carry these names).

  direction is 'bwd' for ops from a transpose (VJP), 'fwd' for the rest and
  '?' where XLA made the op without metadata (e.g. rewritten gradient
  convolutions); convolutions also show their window (size, stride, dilation).
  """
  labels = {}
  for line in hlo_text.splitlines():
    m = _INSTR.match(line)
    if not m:
      continue
    name, shape, opcode = m.group(1), m.group(2), m.group(3)
    op_name = re.search(r'op_name="([^"]*)"', line)
    op_name = op_name.group(1) if op_name else ""
    direction = "bwd" if "transpose(" in op_name else ("fwd" if op_name else "?")
    prim = op_name.rsplit("/", 1)[-1] if op_name else opcode
    target = re.search(r'custom_call_target="([^"]*)"', line)
    kind = target.group(1) if target else opcode
    if opcode == "convolution":
      window = re.search(r"window=\{([^}]*)\}", line)
      window = re.sub(r"pad=\S+ ?", "", window.group(1)).strip() if window else ""
      kind = f"convolution[{window}]"
    labels[name] = f"{direction} {kind}:{prim} -> {shape.split('{')[0]}"
  return labels


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True)
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--image_size", type=int, default=256)
  parser.add_argument("--steps", type=int, default=2)
  parser.add_argument("--top", type=int, default=25)
  args = parser.parse_args()
  sys.path.insert(0, ROOT)
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from harmonax import sharding, train  # pylint: disable=g-import-not-at-top

  config = load_config(args.config)
  config.batch_size, config.data.image_size = args.batch_size, args.image_size
  mesh = sharding.make_mesh()
  fns = train.make_train_fns(config, steps_per_epoch=1000)
  state = train.initial_state(fns, sharding.replicated(mesh))
  b, s = args.batch_size, args.image_size
  rng = np.random.default_rng(0)
  mask = np.zeros((b, s, s, 1), np.float32)
  mask[:, s // 4:3 * s // 4, s // 4:3 * s // 4] = 1.0
  local = {"composite": rng.uniform(size=(b, s, s, 3)).astype(np.float32),
           "real": rng.uniform(size=(b, s, s, 3)).astype(np.float32), "mask": mask}
  with jax.set_mesh(mesh):
    batch = sharding.global_batch(local, mesh)
    compiled = jax.jit(fns.train_step, donate_argnums=(0,)).lower(state, batch).compile()
    labels = op_labels(compiled.as_text())
    state = compiled(state, batch)[0]
    jax.block_until_ready(state)
    logdir = tempfile.mkdtemp(prefix="harmonax_profile_")
    started = time.perf_counter()
    with jax.profiler.trace(logdir, create_perfetto_trace=True):
      for _ in range(args.steps):
        state = compiled(state, batch)[0]
      jax.block_until_ready(state)
    wall = (time.perf_counter() - started) / args.steps
  (path,) = glob.glob(os.path.join(logdir, "**", "*.trace.json.gz"), recursive=True)
  with gzip.open(path) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_op = collections.Counter()
  for e in events:
    if e.get("ph") == "X" and e.get("name") in labels:
      per_op[e["name"]] += e.get("dur", 0) / 1e6 / args.steps
  grouped = collections.Counter()
  for name, seconds in per_op.items():
    grouped[labels[name]] += seconds
  total = sum(per_op.values())
  by_kind = collections.Counter()
  for label, seconds in grouped.items():
    direction, rest = label.split(" ", 1)
    by_kind[f"{direction} {rest.split(':', 1)[0]}"] += seconds
  print(f"{args.config} batch {b} at {s}: {wall:.2f} s a step (wall, under the profiler); "
        f"{total:.2f} s in compiled ops (summed over threads), load {os.getloadavg()[0]:.1f}\n")
  print("| direction and op kind | s/step | share |\n|---|---|---|")
  for label, seconds in by_kind.most_common(12):
    print(f"| {label} | {seconds:.3f} | {seconds / total:.0%} |")
  print("\n| op (direction kind:primitive -> output shape) | s/step | share |\n|---|---|---|")
  for label, seconds in grouped.most_common(args.top):
    print(f"| {label} | {seconds:.3f} | {seconds / total:.0%} |")


if __name__ == "__main__":
  main()
