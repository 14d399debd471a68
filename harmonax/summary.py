r"""Parameter counts and inference FLOPs of a config's model, without training.

  python -m harmonax.summary --config=configs/idih.py
  python -m harmonax.summary --config=configs/issam.py:runlocal [--image_size=512]

Prints a markdown table: one row per network (`create_networks`) with its
trainable parameters (nnx.Param) and other state (batch statistics, buffers),
and the GFLOPs of the family's `predict` for one image at
config.data.image_size (or --image_size).

FLOPs come from XLA's cost analysis of the *lowered* (unoptimized) HLO of
`jax.jit(predict)`: no compilation and no memory for weights are needed, since
the networks are abstract (`nnx.eval_shape`). XLA counts a multiply-add as 2
FLOPs (FLOPs = 2 x MACs; taps that fall on zero padding are not counted) and
adds elementwise work (normalization, activations, blending).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from harmonax import cli

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/idih.py.",
                                          lock_config=False)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", None, "Default: config.data.image_size.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _CONFIG.value is None:
    raise app.UsageError("--config is required, e.g. --config=configs/idih.py")
  from harmonax import model_info  # pylint: disable=g-import-not-at-top
  print(model_info.format_table(model_info.summarize(_CONFIG.value, _IMAGE_SIZE.value)))


if __name__ == "__main__":
  cli.run(main)
