r"""Align-corners resizes gathered or as dense products: a recipe's predict, side by side.

  python benchmarks/dense_resize.py --models=hrnet_idih,issam --sizes=256,1024

`layers.resize_bilinear_align_corners` gathers each axis's two taps, or, for an
axis of at most `dense_max` rows, multiplies by the dense weight matrix; HRNet
passes `hrnet.DENSE_RESIZE_MAX` for its branches' upsampling (BENCHMARKS.md).
For each recipe (full size, random weights, batch 1, a square mask) and size,
one process compiles the family's jitted predict three ways and alternates them
(`vs_pytorch.alternate`, medians of --repeats):
  as is     the code's own choice;
  gathered  every align-corners resize gathered (dense_max 0);
  dense     every one with at most --dense rows (columns) as a product.
Prints seconds and each variant's largest difference from `as is`.
"""

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="hrnet_idih,issam")
  parser.add_argument("--sizes", default="256,1024")
  parser.add_argument("--dense", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  args = parser.parse_args()
  sys.path.insert(0, ROOT)
  from harmonax import xla_setup  # pylint: disable=g-import-not-at-top
  xla_setup.configure()  # The CLIs' XLA flags, before JAX starts.
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import vs_pytorch  # pylint: disable=g-import-not-at-top
  from harmonax import models  # pylint: disable=g-import-not-at-top
  from harmonax.models import layers  # pylint: disable=g-import-not-at-top

  resize = layers.resize_bilinear_align_corners
  rules = {"as is": lambda dense_max: dense_max, "gathered": lambda dense_max: 0,
           "dense": lambda dense_max: max(dense_max, args.dense)}
  print(f"load average {os.getloadavg()[0]:.1f}")
  for name in args.models.split(","):
    config = vs_pytorch.load_config(name)
    family = models.get_family(config.model.name)
    nets, _ = vs_pytorch.eval_pair(config, _NoTwin)
    rng = np.random.default_rng(0)
    for size in [int(s) for s in args.sizes.split(",")]:
      composite = rng.uniform(size=(1, size, size, 3)).astype(np.float32)
      mask = np.zeros((1, size, size, 1), np.float32)
      mask[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = 1.0
      calls, outputs = {}, {}
      for label, rule in rules.items():
        layers.resize_bilinear_align_corners = (
            lambda x, s, dense_max=0, rule=rule: resize(x, s, rule(dense_max)))
        predict = nnx.jit(vs_pytorch.predict_fn(family, config))
        outputs[label] = np.asarray(predict(nets, composite, mask))  # Traced with this rule.
        calls[label] = lambda p=predict: jax.block_until_ready(p(nets, composite, mask))
      layers.resize_bilinear_align_corners = resize
      seconds = vs_pytorch.alternate(calls, args.repeats)
      print(f"{name} {size}: " + ", ".join(
          f"{label} {seconds[label]:.3f} s (max diff "
          f"{np.abs(outputs[label] - outputs['as is']).max():.1e})" for label in rules),
          flush=True)
  print(f"load average {os.getloadavg()[0]:.1f}")


class _NoTwin:
  """vs_pytorch.eval_pair without a PyTorch model."""

  @staticmethod
  def build(config):
    del config
    return _NoTwin()

  @staticmethod
  def load(model, nets):
    del model, nets

  def eval(self):
    return self


if __name__ == "__main__":
  main()
