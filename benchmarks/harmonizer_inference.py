r"""Harmonizer speed on this machine: inference at 256 up to 4K, and a train step.

  python -m benchmarks.harmonizer_inference [--repeats=3] [--train_batch=8]

The full-size model (EfficientNet-B0 backbone, 4.73M parameters, random
weights: speed does not depend on their values) predicts arguments from a
256x256 view and applies the six filters at full resolution. For each size
(batch 1) compilation is timed separately, then `--repeats` calls; the table
splits the best call into the argument prediction (backbone at 256, including
the resize) and the filters at full resolution. The train step is the
family's `compute_losses` under `jax.value_and_grad` plus Adam at 256x256.
Prints a markdown table and writes it to benchmarks/results/harmonizer_inference.md.
"""

import argparse
import datetime
import os
import platform
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from configs import harmonizer as harmonizer_config
from harmonax import filters
from harmonax.models import harmonizer

SIZES = ((256, 256), (1024, 1024), (2048, 2048), (2160, 3840))  # (H, W)
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "harmonizer_inference.md")


def _inputs(b: int, h: int, w: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  composite = jnp.asarray(rng.uniform(0, 1, (b, h, w, 3)), jnp.float32)
  mask = jnp.zeros((b, h, w, 1)).at[:, h // 4:3 * h // 4, w // 4:3 * w // 4].set(1.0)
  return composite, mask


def _time(fn, *args, repeats: int) -> tuple[float, float, list[float]]:
  """(compile seconds, first-call seconds, timed call seconds)."""
  start = time.perf_counter()
  compiled = fn.lower(*args).compile()
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(repeats + 1):  # The first call is a warm-up.
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - start)
  return compile_s, times[0], times[1:]


def bench_inference(config, networks, repeats: int) -> list[dict]:
  graphdef, state = nnx.split(networks)

  @jax.jit
  def predict(state, composite, mask):
    return harmonizer.predict(config, nnx.merge(graphdef, state),
                              {"composite": composite, "mask": mask})

  @jax.jit
  def arguments(state, composite, mask):
    return nnx.merge(graphdef, state)["harmonizer"](composite, mask)

  @jax.jit
  def apply(composite, mask, args):
    return filters.apply_filters(composite, mask, args)[0]

  rows = []
  for h, w in SIZES:
    composite, mask = _inputs(1, h, w)
    compile_s, _, times = _time(predict, state, composite, mask, repeats=repeats)
    _, _, arg_times = _time(arguments, state, composite, mask, repeats=repeats)
    args = arguments(state, composite, mask)
    _, _, filter_times = _time(apply, composite, mask, args, repeats=repeats)
    rows.append(dict(size=f"{w}x{h}", compile_s=compile_s, best=min(times),
                     median=float(np.median(times)), args=min(arg_times),
                     filters=min(filter_times), load=os.getloadavg()[0]))
    print(rows[-1], flush=True)
  return rows


def bench_train(config, networks, batch_size: int, repeats: int) -> dict:
  net = networks["harmonizer"]
  net.train()
  tx = harmonizer.make_optimizers(config, steps_per_epoch=1000)["harmonizer"]
  optimizer = nnx.Optimizer(net, tx, wrt=nnx.Param)

  @nnx.jit
  def step(net, optimizer, batch, key):
    def loss_fn(net):
      losses, _, _ = harmonizer.compute_losses(config, {"harmonizer": net}, batch, key)
      return losses["harmonizer"]
    loss, grads = nnx.value_and_grad(loss_fn)(net)
    optimizer.update(net, grads)
    return loss

  composite, mask = _inputs(batch_size, 256, 256)
  batch = {"composite": composite, "mask": mask, "real": composite}
  key = jax.random.key(0)
  times = []
  for i in range(repeats + 1):  # The first call compiles.
    start = time.perf_counter()
    jax.block_until_ready(step(net, optimizer, batch, jax.random.fold_in(key, i)))
    times.append(time.perf_counter() - start)
  best = min(times[1:])
  return dict(batch=batch_size, compile_s=times[0] - best, best=best,
              images_per_s=batch_size / best, load=os.getloadavg()[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--train_batch", type=int, default=8)
  parser.add_argument("--train_repeats", type=int, default=2)
  parser.add_argument("--output", default=RESULTS)
  args = parser.parse_args()

  config = harmonizer_config.get_config("")
  networks = harmonizer.create_networks(config, nnx.Rngs(0))
  num_params = sum(x.size for x in jax.tree.leaves(nnx.state(networks, nnx.Param)))
  networks["harmonizer"].eval()
  rows = bench_inference(config, networks, args.repeats)
  networks["harmonizer"].train()
  train = bench_train(config, networks, args.train_batch, args.train_repeats)
  print(train, flush=True)

  lines = [
      "## Harmonizer: inference at any resolution, and a train step",
      "",
      f"Machine: {os.cpu_count()}-core CPU ({platform.machine()}), no GPU, shared with "
      f"other jobs; {datetime.date.today().isoformat()}. jax {jax.__version__}, "
      f"`configs/harmonizer.py` at full size ({num_params / 1e6:.2f}M parameters, random "
      f"weights), batch 1. Arguments are predicted at 256x256 and the filters run at "
      f"full resolution; times are the best of {args.repeats} calls after a warm-up "
      "(the load average column shows how busy the shared machine was). 'arguments' "
      "and 'filters' time the two halves as separate programs.",
      "",
      "| size (WxH) | compile s | best s | median s | images/s | arguments s | filters s | load avg |",
      "|---|---|---|---|---|---|---|---|",
  ]
  for r in rows:
    lines.append(f"| {r['size']} | {r['compile_s']:.1f} | {r['best']:.3f} | "
                 f"{r['median']:.3f} | {1 / r['best']:.2f} | {r['args']:.3f} | "
                 f"{r['filters']:.3f} | {r['load']:.1f} |")
  lines += [
      "",
      f"Train step (compute_losses + gradients + Adam, 256x256, batch {train['batch']}): "
      f"compile ~{train['compile_s']:.1f} s (first step minus the best), best step {train['best']:.2f} s = "
      f"**{train['images_per_s']:.2f} images/s** (load avg {train['load']:.1f}).",
      "",
  ]
  table = "\n".join(lines)
  print(table)
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "w") as f:
    f.write(table)


if __name__ == "__main__":
  main()
