r"""Boundary-band error of a trained deep_compositing model against the classical blends.

  python benchmarks/compositing_baselines.py --workdir=/tmp/dic_local [--split=test] \
      [--max_examples=N] [--feather_sigma=2]

Scores the workdir's model and the 'alpha', 'feathered' and 'laplacian' variants
(same data, mask and protocol: the workdir config's first evaluation set, every
example of the split unless --max_examples) with the `boundary` evaluator and
prints a markdown table (means over images).
"""

import time

from absl import app
from absl import flags

from harmonax import checkpoint
from harmonax import compositing
from harmonax import evaluation

_WORKDIR = flags.DEFINE_string("workdir", None, "A deep_compositing training workdir.")
_SPLIT = flags.DEFINE_string("split", None, "Default: the config's eval split.")
_MAX_EXAMPLES = flags.DEFINE_integer(
    "max_examples", -1, "-1: the whole split (a runlocal config's evaluation stops at 16).")
_FEATHER_SIGMA = flags.DEFINE_float("feather_sigma", None,
                                    "Feathered blending's sigma (default: the config's).")
_COLUMNS = ("boundary_mse", "boundary_psnr", "mse", "psnr", "ssim")


def main(argv):
  del argv
  config, networks = checkpoint.load_networks(_WORKDIR.value)
  data, split, _ = next(iter(evaluation.eval_sets(config).values()))
  split, max_examples = _SPLIT.value or split, _MAX_EXAMPLES.value
  rows = {}
  for variant in ("alpha", "feathered", "laplacian", "network"):
    if variant == "network":
      cfg, nets = config, networks
    else:
      fields = {} if _FEATHER_SIGMA.value is None else {"feather_sigma": _FEATHER_SIGMA.value}
      cfg, nets = compositing.baseline_config(variant, **fields), {}
      cfg.data, cfg.evals, cfg.eval = config.data, config.evals, config.eval
    started = time.monotonic()
    rows[variant] = evaluation.evaluate_networks(cfg, nets, data, split, max_examples)
    rows[variant]["seconds"] = time.monotonic() - started
    rows[variant]["sigma"] = cfg.model.feather_sigma
  print(f"{data.name} {split} ({max_examples if max_examples > 0 else 'all'} examples), "
        f"{data.image_size}x{data.image_size}, binary mask: "
        f"{data.get('binary_eval_mask', False)}, band k={config.eval.boundary_band}")
  print("| method | " + " | ".join(_COLUMNS) + " |")
  print("|---|" + "---|" * len(_COLUMNS))
  for variant, row in rows.items():
    name = {"network": f"deep_compositing ({_WORKDIR.value})",
            "feathered": f"feathered (sigma {rows[variant]['sigma']})"}.get(variant, variant)
    print(f"| {name} | " + " | ".join(f"{row[k]:.4f}" for k in _COLUMNS) + " |")


if __name__ == "__main__":
  flags.mark_flag_as_required("workdir")
  app.run(main)
