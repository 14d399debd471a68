r"""PCT-Net inference speed and peak memory on this machine, CPU, batch 1.

  python -m benchmarks.pctnet_inference [--variants=cnn,vit] [--repeats=3]

Full-size networks (random weights: speed does not depend on their values)
predict the 12-channel map from the 256 view and apply it at 1024x1024,
2048x2048 and 3840x2160 (uint8 inputs, as `harmonize` feeds them). Each
(variant, size) runs in a fresh subprocess so its peak RSS (ru_maxrss) is its
own: it includes the Python/JAX runtime, the compiled program and the inputs.
Prints a markdown table and writes it to benchmarks/results/pctnet_inference.md.
"""

import argparse
import datetime
import importlib
import json
import os
import resource
import subprocess
import sys
import time

SIZES = ((1024, 1024), (2048, 2048), (2160, 3840))  # (H, W)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "pctnet_inference.md")


def worker(variant: str, h: int, w: int, repeats: int) -> dict:
  """Times one size in this process; returns the row."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from harmonax import torch_import  # pylint: disable=g-import-not-at-top
  from harmonax import variables  # pylint: disable=g-import-not-at-top
  from harmonax.models import pctnet  # pylint: disable=g-import-not-at-top

  config = importlib.import_module(f"configs.pctnet_{variant}").get_config("")
  nets = nnx.eval_shape(lambda: pctnet.create_networks(config, variables.rngs(0)))
  rng = np.random.default_rng(0)
  shapes = torch_import.expected_shapes(nets["generator"])
  torch_import.load_into(nets["generator"], {
      k: (rng.uniform(0.5, 1.5, s) if k.endswith("running_var")
          else 0.05 * rng.standard_normal(s)).astype(np.float32) for k, s in shapes.items()})
  nets["generator"].eval()
  graphdef, state = nnx.split(nets)

  @jax.jit
  def predict(state, composite, mask):
    return pctnet.predict(config, nnx.merge(graphdef, state),
                          {"composite": composite, "mask": mask})

  composite = rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8)
  mask = np.zeros((1, h, w, 1), np.uint8)
  mask[:, h // 4:3 * h // 4, w // 4:3 * w // 4] = 255
  start = time.perf_counter()
  compiled = predict.lower(state, composite, mask).compile()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats + 1):  # The first call is a warm-up.
    start = time.perf_counter()
    jax.block_until_ready(compiled(state, composite, mask))
    times.append(time.perf_counter() - start)
  return dict(variant=variant, size=f"{w}x{h}", compile_s=compile_s, best=min(times[1:]),
              median=float(np.median(times[1:])),
              peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              load=os.getloadavg()[0])


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--variants", default="cnn,vit")
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--worker", default="")  # 'variant,h,w': internal.
  args = parser.parse_args()
  if args.worker:
    variant, h, w = args.worker.split(",")
    print(json.dumps(worker(variant, int(h), int(w), args.repeats)))
    return
  rows = []
  for variant in args.variants.split(","):
    for h, w in SIZES:
      out = subprocess.run(
          [sys.executable, "-m", "benchmarks.pctnet_inference", f"--worker={variant},{h},{w}",
           f"--repeats={args.repeats}"], capture_output=True, text=True, check=True)
      rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
      print(rows[-1], flush=True)
  lines = [f"PCT-Net inference, batch 1, uint8 input, {datetime.date.today()}, "
           f"{os.cpu_count()}-core CPU (shared; load average per row).", "",
           "| variant | size | compile s | best s | median s | peak RSS MiB | load |",
           "|---|---|---|---|---|---|---|"]
  lines += [f"| {r['variant']} | {r['size']} | {r['compile_s']:.1f} | {r['best']:.3f} | "
            f"{r['median']:.3f} | {r['peak_rss_mib']:.0f} | {r['load']:.1f} |" for r in rows]
  table = "\n".join(lines)
  print(table)
  os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
  with open(RESULTS, "w") as f:
    f.write(table + "\n")


if __name__ == "__main__":
  main()
