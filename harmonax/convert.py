r"""Converts official PyTorch weights into a harmonax networks checkpoint.

  python -m harmonax.convert --model=idih --torch_checkpoint=idih256.pth --output=/tmp/idih_official
  python -m harmonax.convert --model=issam --torch_checkpoint=issam256.pth --output=/tmp/issam_official
  python -m harmonax.convert --model=dovenet --torch_checkpoint=generator=G.pth,discriminator=D.pth \
      --output=/tmp/dovenet_official [--config=configs/dovenet.py]

A single path is the role 'default'; `role=path` pairs serve families that save
each network in its own file. The family's `convert_torch(state_dicts, config)`
maps them onto its networks, which are written with
`harmonax.checkpoint.save_networks` and read back by `evaluate` / `harmonize`
(`checkpoint.load_networks(OUTPUT)`). `.npz` files work without torch.
"""

import importlib

from absl import app
from absl import flags
from absl import logging
from flax import nnx
import ml_collections
from ml_collections import config_flags

from harmonax import checkpoint
from harmonax import cli
from harmonax import metric_writers
from harmonax import models
from harmonax import torch_import



def parse_checkpoint_arg(arg: str) -> dict[str, str]:
  """'PATH' -> {'default': PATH}; 'g=A,d=B' -> {'g': A, 'd': B}.

  Raises:
    ValueError: on an empty argument, a repeated role, or pairs mixed with a bare path.
  """
  items = [s.strip() for s in arg.split(",") if s.strip()]
  if not items:
    raise ValueError("--torch_checkpoint is empty: give PATH or role=PATH[,role=PATH...]")
  if len(items) == 1 and "=" not in items[0]:
    return {"default": items[0]}
  result = {}
  for item in items:
    role, sep, path = item.partition("=")
    if not sep or not role or not path:
      raise ValueError(f"--torch_checkpoint item {item!r} is not role=PATH (in {arg!r})")
    if role in result:
      raise ValueError(f"--torch_checkpoint names role {role!r} twice (in {arg!r})")
    result[role] = path
  return result


def default_config(model: str) -> ml_collections.ConfigDict:
  """The full-size config of `configs/<model>.py`."""
  try:
    module = importlib.import_module(f"configs.{model}")
  except ModuleNotFoundError as e:
    raise ValueError(f"No configs/{model}.py; pass --config explicitly") from e
  return module.get_config("")


def convert(model: str, checkpoints: dict[str, str], output: str | None,
            config: ml_collections.ConfigDict | None = None) -> dict[str, nnx.Module]:
  """Loads the checkpoint files, maps them with the family's convert_torch and
  (if `output` is set) writes them with checkpoint.save_networks.

  Returns:
    The networks (eval mode), by name, as `create_networks` names them.

  Raises:
    ValueError: if the family has no convert_torch, or the config is for another model.
    torch_import.StateDictMismatchError: if a checkpoint does not fit the networks.
  """
  config = config if config is not None else default_config(model)
  if config.model.name != model:
    raise ValueError(f"--config is for model {config.model.name!r}, not --model={model!r}")
  family = models.get_family(model)
  if not hasattr(family, "convert_torch"):
    able = [n for n in models.available() if hasattr(models.get_family(n), "convert_torch")]
    raise ValueError(f"Model {model!r} has no convert_torch; models that convert: {able}")
  state_dicts = {role: torch_import.load_state_dict(path) for role, path in checkpoints.items()}
  converted = family.convert_torch(state_dicts, config)

  abstract = nnx.eval_shape(lambda: family.create_networks(config, nnx.Rngs(0)))
  missing = sorted(set(abstract) - set(converted))
  if missing:
    # The checkpoint must hold every network load_networks will rebuild; a
    # network without official weights (e.g. an unreleased discriminator)
    # keeps its random initialization.
    logging.warning("No weights for networks %s: they keep a random init", missing)
    fresh = family.create_networks(config, nnx.Rngs(config.get("seed", 0)))
  networks = {}
  for name in abstract:
    value = converted.get(name)
    if isinstance(value, nnx.Module):
      net = value
    elif value is not None:
      net = abstract[name]
      nnx.update(net, value)
    else:
      net = fresh[name]
    net.eval()
    networks[name] = net
  if output:
    checkpoint.save_networks(output, config, networks)
    logging.info("Wrote %s (networks: %s)", output, sorted(networks))
  return networks


def define_flags() -> None:
  """Defines this tool's flags (not at import: other tools define --config too)."""
  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file(
        "config", None, "Config file; default: configs/<model>.py at full size.",
        lock_config=False, allow_override=True)
  for name, help_text in [
      ("model", "Model family name (harmonax.models.<name>)."),
      ("torch_checkpoint", "PATH, or role=PATH pairs separated by commas."),
      ("output", "Directory to write (config.json + networks/).")]:
    if name not in flags.FLAGS:
      flags.DEFINE_string(name, None, help_text, allow_override=True)


def main(argv):
  f = flags.FLAGS
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  metric_writers.quiet_library_logs()
  for name in ("model", "torch_checkpoint", "output"):
    if not f[name].value:
      raise app.UsageError(f"--{name} is required")
  try:
    checkpoints = parse_checkpoint_arg(f.torch_checkpoint)
  except ValueError as e:
    raise app.UsageError(str(e)) from None
  convert(f.model, checkpoints, f.output, f.config)


if __name__ == "__main__":
  define_flags()
  # Missing file, pickled code, state dict of another model, unknown model: one
  # line (every ValueError here is about the inputs; --verbose for the traceback).
  cli.run(main, user_errors=(FileNotFoundError, ImportError, ValueError))
