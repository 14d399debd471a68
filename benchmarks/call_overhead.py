r"""What a `harmonize` call costs besides the network: nnx.jit against networks split once.

  python benchmarks/call_overhead.py [--recipes=hrnet_idih,issam,harmonizer] [--size=256]

`inference.harmonize` once jitted its function with nnx.jit, which walks every
Variable of the networks on each call (nnx.split); it now splits each set of
networks once (`inference.jit_networks`) and calls jax.jit with that state.
For each recipe (full size, random weights, eval mode) this times, in one
process and in turn (`vs_pytorch.alternate`, medians of --repeats after a
warm-up), the old call (nnx.jit of `harmonize_arrays`) and the new one
(`inference.jitted_harmonize`) on a uint8 photo of --size x --size, checks
that both give the same bytes, and times nnx.split of the networks alone.
Appends a table to benchmarks/results/call_overhead.md (--output).
"""

import argparse
import datetime
import functools
import os
import platform
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "call_overhead.md")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--recipes", default="hrnet_idih,issam,harmonizer")
  parser.add_argument("--size", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=11)
  parser.add_argument("--output", default=RESULTS)
  args = parser.parse_args()
  sys.path.insert(0, ROOT)
  from harmonax import xla_setup  # pylint: disable=g-import-not-at-top
  xla_setup.configure()  # The CLIs' XLA flags, before JAX starts.
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import vs_pytorch  # pylint: disable=g-import-not-at-top
  from harmonax import conversion  # pylint: disable=g-import-not-at-top
  from harmonax import inference  # pylint: disable=g-import-not-at-top
  from harmonax import models  # pylint: disable=g-import-not-at-top
  from harmonax import variables  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(0)
  composite = rng.integers(0, 256, (1, args.size, args.size, 3), dtype=np.uint8)
  mask = np.zeros((1, args.size, args.size, 1), np.uint8)
  mask[:, args.size // 4:3 * args.size // 4, args.size // 4:3 * args.size // 4] = 255
  load_before = os.getloadavg()[0]
  rows = []
  for recipe in args.recipes.split(","):
    config = conversion.default_config(recipe)
    networks = models.get_family(config.model.name).create_networks(config, variables.rngs(0))
    for net in networks.values():
      net.eval()
    old = nnx.jit(functools.partial(inference.harmonize_arrays, config))
    new = inference.jitted_harmonize(ml_collections.FrozenConfigDict(config))
    calls = {"nnx.jit": lambda old=old, networks=networks: jax.block_until_ready(
                 old(networks, composite, mask)),
             "split once": lambda new=new, networks=networks: jax.block_until_ready(
                 new(networks, composite, mask))}
    np.testing.assert_array_equal(np.asarray(calls["nnx.jit"]()),
                                  np.asarray(calls["split once"]()))
    t = vs_pytorch.alternate(calls, args.repeats)
    started = time.perf_counter()
    for _ in range(5):
      nnx.split(networks)
    split_s = (time.perf_counter() - started) / 5
    count = len(jax.tree.leaves(nnx.state(networks)))
    rows.append(f"| {recipe} | {count:,} | {1000 * t['nnx.jit']:.1f} | "
                f"{1000 * t['split once']:.1f} | **{t['nnx.jit'] / t['split once']:.2f}** | "
                f"{1000 * split_s:.1f} |")
    print(rows[-1], flush=True)
  lines = [f"\n### {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, "
           f"{os.cpu_count()} CPUs, jax {jax.__version__}, load {load_before:.1f}/"
           f"{os.getloadavg()[0]:.1f}; harmonize of a {args.size}x{args.size} uint8 photo, "
           f"batch 1, medians of {args.repeats}",
           "",
           "| recipe | arrays | nnx.jit ms | split once ms | ratio | nnx.split alone ms |",
           "|---|---|---|---|---|---|", *rows]
  table = "\n".join(lines)
  print(table)
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "a", encoding="utf-8") as f:
    f.write(table + "\n")


if __name__ == "__main__":
  main()
