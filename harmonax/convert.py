r"""Converts official PyTorch weights into a harmonax networks checkpoint.

  python -m harmonax.convert --model=idih --torch_checkpoint=idih256.pth --output=/tmp/idih_official
  python -m harmonax.convert --model=issam --torch_checkpoint=issam256.pth --output=/tmp/issam_official
  python -m harmonax.convert --model=dovenet --torch_checkpoint=generator=G.pth,discriminator=D.pth \
      --output=/tmp/dovenet_official [--config=configs/dovenet.py]

--model names a recipe of configs/ (its full-size config). A single path is
the role 'default'; `role=path` pairs serve families that save each network in
its own file. The family's `convert_torch(state_dicts, config)` maps them onto
its networks, which are written with `harmonax.checkpoint.save_networks` and
read back by `evaluate` / `harmonize` (`checkpoint.load_networks(OUTPUT)`).
DoveNet's norm (batch or instance) is read from the generator file's keys.
`.npz` files work without torch. The library is harmonax.conversion.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from harmonax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file; default: configs/<model>.py at full size.", lock_config=False)
_MODEL = flags.DEFINE_string("model", None, "Recipe name: configs/<model>.py (e.g. issam, dovenet).")
_TORCH_CHECKPOINT = flags.DEFINE_string("torch_checkpoint", None,
                                        "PATH, or role=PATH pairs separated by commas.")
_OUTPUT = flags.DEFINE_string("output", None, "Directory to write (config.json + networks/).")
_SOURCE = flags.DEFINE_string("source", None, "REPOSITORY[@COMMIT] the files came from, for the "
                              "model card (default: the family's official repository).")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  for flag in (_TORCH_CHECKPOINT, _OUTPUT):
    if not flag.value:
      raise app.UsageError(f"--{flag.name} is required")
  if not (_MODEL.value or _CONFIG.value):
    raise app.UsageError("--model (or --config) is required")
  from harmonax import conversion  # pylint: disable=g-import-not-at-top
  try:
    checkpoints = conversion.parse_checkpoint_arg(_TORCH_CHECKPOINT.value)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  conversion.convert(_MODEL.value, checkpoints, _OUTPUT.value, _CONFIG.value, _SOURCE.value)


if __name__ == "__main__":
  # Missing file, pickled code, state dict of another model, unknown model: one
  # line (every ValueError here is about the inputs; --verbose for the traceback).
  cli.run(main, user_errors=(FileNotFoundError, ImportError, ValueError))
