r"""Boundary-band error of a trained deep_compositing model against the classical blends.

  python benchmarks/compositing_baselines.py --workdir=/tmp/dic_local [--split=test]

Scores the workdir's model and the 'alpha', 'feathered' and 'laplacian' variants
(same data, mask and protocol: the workdir config's first evaluation set) with
the `boundary` evaluator and prints a markdown table (means over images).
"""

import time

from absl import app
from absl import flags

from harmonax import checkpoint
from harmonax import compositing
from harmonax import evaluation

_WORKDIR = flags.DEFINE_string("workdir", None, "A deep_compositing training workdir.")
_SPLIT = flags.DEFINE_string("split", None, "Default: the config's eval split.")
_COLUMNS = ("boundary_mse", "boundary_psnr", "mse", "psnr", "ssim")


def main(argv):
  del argv
  config, networks = checkpoint.load_networks(_WORKDIR.value)
  data, split, max_examples = next(iter(evaluation.eval_sets(config).values()))
  split = _SPLIT.value or split
  rows = {}
  for variant in ("alpha", "feathered", "laplacian", "network"):
    if variant == "network":
      cfg, nets = config, networks
    else:
      cfg, nets = compositing.baseline_config(variant), {}
      cfg.data, cfg.evals, cfg.eval = config.data, config.evals, config.eval
    started = time.monotonic()
    rows[variant] = evaluation.evaluate_networks(cfg, nets, data, split, max_examples)
    rows[variant]["seconds"] = time.monotonic() - started
  print(f"{data.name} {split}, {data.image_size}x{data.image_size}, binary mask: "
        f"{data.get('binary_eval_mask', False)}, band k={config.eval.boundary_band}")
  print("| method | " + " | ".join(_COLUMNS) + " |")
  print("|---|" + "---|" * len(_COLUMNS))
  for variant, row in rows.items():
    name = f"deep_compositing ({_WORKDIR.value})" if variant == "network" else variant
    print(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in _COLUMNS) + " |")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
