r"""CDTNet inference speed and peak memory on this machine, 1024 to 4K.

  python -m benchmarks.cdtnet_inference [--repeats=2] [--sizes=1024,2048,3840x2160] [--sim]

Full-size networks (2.74M parameters, random weights: speed does not depend on
their values), batch 1, `cdtnet.predict` under jit: base 256 at 1024, base 512
at 2048 and 4K (the released models), refinement in strips of
config.model.refine_rows rows. Every size runs in a fresh subprocess, whose
peak resident memory (`resource.getrusage(...).ru_maxrss`, which includes
XLA's buffers; tracemalloc does not see them) is reported next to the RSS
before compiling. Prints a markdown table and writes it to
benchmarks/results/cdtnet_inference.md.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "cdtnet_inference.md")


def _rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux.


def _networks(config):
  """Full-size networks filled from numpy (no per-shape random-op compilation)."""
  from harmonax import checkpoint  # pylint: disable=g-import-not-at-top
  from harmonax import variables  # pylint: disable=g-import-not-at-top
  from harmonax.models import cdtnet  # pylint: disable=g-import-not-at-top
  nets = nnx.eval_shape(lambda: cdtnet.create_networks(config, variables.rngs(0)))
  rng = np.random.default_rng(0)

  def fill(path, leaf):
    name = str(getattr(path[-1], "key", path[-1]))
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    return jnp.asarray(rng.normal(0, 0.02, leaf.shape), leaf.dtype)

  checkpoint.update_networks(nets, {k: jax.tree_util.tree_map_with_path(
      fill, nnx.state(n).to_pure_dict()) for k, n in nets.items()})
  for n in nets.values():
    n.eval()
  return nets


def child(h: int, w: int, sim: bool, repeats: int) -> dict:
  """One size in this process: compile, warm up, time `repeats` calls."""
  from configs import cdtnet as cdtnet_config  # pylint: disable=g-import-not-at-top
  from harmonax.models import cdtnet  # pylint: disable=g-import-not-at-top
  hr = max(h, w)
  config = cdtnet_config.get_config(f"hr={min(hr, 2048)}" + (",sim" if sim else ""))
  nets = _networks(config)
  graphdef, state = nnx.split(nets)

  @jax.jit
  def predict(state, composite, mask):
    return cdtnet.predict(config, nnx.merge(graphdef, state),
                          {"composite": composite, "mask": mask})

  rng = np.random.default_rng(0)
  composite = jnp.asarray(rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8))
  mask = np.zeros((1, h, w, 1), np.uint8)
  mask[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
  mask = jnp.asarray(mask)
  rss_before = _rss_mib()
  start = time.perf_counter()
  compiled = predict.lower(state, composite, mask).compile()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats + 1):  # The first call is a warm-up.
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, composite, mask))
    times.append(time.perf_counter() - start)
  return dict(size=f"{w}x{h}", base=config.model.base_size, compile_s=compile_s,
              best=min(times[1:]), median=float(np.median(times[1:])),
              rss_before=rss_before, peak_rss=_rss_mib(), load=os.getloadavg()[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--sizes", default="1024,2048,3840x2160")
  parser.add_argument("--repeats", type=int, default=2)
  parser.add_argument("--sim", action="store_true")
  parser.add_argument("--child", default="", help="internal: WxH to run in this process")
  args = parser.parse_args()
  if args.child:
    w, h = (int(v) for v in args.child.split("x"))
    print("RESULT " + json.dumps(child(h, w, args.sim, args.repeats)), flush=True)
    return
  rows = []
  for size in args.sizes.split(","):
    wh = size if "x" in size else f"{size}x{size}"
    cmd = [sys.executable, "-m", "benchmarks.cdtnet_inference", f"--child={wh}",
           f"--repeats={args.repeats}"] + (["--sim"] if args.sim else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    line = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")][-1]
    rows.append(json.loads(line[len("RESULT "):]))
    print(rows[-1], flush=True)
  name = "CDTNet(sim)" if args.sim else "CDTNet"
  lines = [
      f"### {name}: inference, batch 1 (`configs/cdtnet.py`{':sim' if args.sim else ''})",
      "",
      f"Machine: {os.cpu_count()}-core CPU ({platform.machine()}), no GPU, shared; "
      f"{datetime.date.today()}. jax {jax.__version__}. Best of {args.repeats} calls after a "
      "warm-up; peak RSS of a fresh process per size (ru_maxrss, XLA buffers included).",
      "",
      "| size (WxH) | base | compile s | best s | median s | RSS before compile MiB "
      "| peak RSS MiB | load avg |",
      "|---|---|---|---|---|---|---|---|"]
  lines += [f"| {r['size']} | {r['base']} | {r['compile_s']:.1f} | {r['best']:.2f} | "
            f"{r['median']:.2f} | {r['rss_before']:.0f} | {r['peak_rss']:.0f} | "
            f"{r['load']:.1f} |" for r in rows]
  table = "\n".join(lines) + "\n"
  print(table)
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS.replace(".md", "_sim.md") if args.sim else RESULTS, "w") as f:
    f.write(table)


if __name__ == "__main__":
  main()
