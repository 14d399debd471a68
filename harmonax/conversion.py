"""Import of official PyTorch weights into harmonax networks, as a library.

The command line is `harmonax.convert`. A single path is the role 'default';
`role=path` pairs serve families that save each network in its own file. The
family's `convert_torch(state_dicts, config)` maps them onto its networks,
which are written with `harmonax.checkpoint.save_networks` and read back by
`evaluate` / `harmonize` (`checkpoint.load_networks(OUTPUT)`).
"""

import importlib.util
import os

from absl import logging
from flax import nnx
import ml_collections

from harmonax import checkpoint
from harmonax import model_card
from harmonax import models
from harmonax import torch_import
from harmonax import variables


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


def configs_dir() -> str:
  """The recipes folder `configs/` (next to the harmonax package, also when installed)."""
  return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")


def default_config(model: str, arg: str = "") -> ml_collections.ConfigDict:
  """The config of the recipe `configs/<model>.py` (full size, or `get_config(arg)`
  for an argument such as 'runlocal'), read by path (the library never imports
  the top-level configs package)."""
  path = os.path.join(configs_dir(), f"{model}.py")
  if not os.path.exists(path):
    known = sorted(os.path.splitext(f)[0] for f in os.listdir(configs_dir())
                   if f.endswith(".py") and not f.startswith("_"))
    raise ValueError(f"No recipe configs/{model}.py; valid --model values: {known} "
                     "(or pass --config=FILE)")
  spec = importlib.util.spec_from_file_location(f"_harmonax_recipe_{model}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg)


def convert(model: str, checkpoints: dict[str, str], output: str | None,
            config: ml_collections.ConfigDict | None = None, source: str | None = None
            ) -> tuple[ml_collections.ConfigDict, dict[str, nnx.Module]]:
  """Loads the checkpoint files, maps them with the family's convert_torch and
  (if `output` is set) writes them with checkpoint.save_networks.

  model: a recipe of configs/ (e.g. 'issam', whose family is 'dih') unless
  `config` is given. A family's optional `adapt_config(config, state_dicts)`
  fixes settings the files determine (DoveNet's norm). `source`:
  'REPOSITORY[@COMMIT]' the files came from, recorded in the model card
  (default: the family's official repository, model_card.OFFICIAL).

  Returns:
    (config, networks in eval mode by name, as `create_networks` names them).

  Raises:
    ValueError: if the family has no convert_torch, or the config is for another model.
    torch_import.StateDictMismatchError: if a checkpoint does not fit the networks.
  """
  config = config if config is not None else default_config(model)
  family = models.get_family(config.model.name)
  if not hasattr(family, "convert_torch"):
    able = [n for n in models.available() if hasattr(models.get_family(n), "convert_torch")]
    raise ValueError(f"Model {config.model.name!r} has no convert_torch; model families "
                     f"that convert: {able}")
  state_dicts = {role: torch_import.load_state_dict(path) for role, path in checkpoints.items()}
  if config.model.get("identity_init", False):
    # A runlocal start, and for DoveNet/BargainNet a residual output that the
    # papers' generators do not have: imported weights are the papers' networks.
    logging.info("Imported weights: config.model.identity_init=False (was True)")
    config = ml_collections.ConfigDict(config.to_dict())
    config.model.identity_init = False
  if hasattr(family, "adapt_config"):
    adapted = family.adapt_config(config, state_dicts)
    for key, value in adapted.model.items():
      if config.model.get(key) != value:
        logging.info("The checkpoint sets config.model.%s=%r (was %r)", key, value,
                     config.model.get(key))
    config = adapted
  converted = family.convert_torch(state_dicts, config)

  abstract = nnx.eval_shape(lambda: family.create_networks(config, variables.rngs(0)))
  missing = sorted(set(abstract) - set(converted))
  if missing:
    # The checkpoint must hold every network load_networks will rebuild; a
    # network without official weights (e.g. an unreleased discriminator)
    # keeps its random initialization.
    logging.warning("No weights for networks %s: they keep a random init", missing)
    fresh = family.create_networks(config, variables.rngs(config.get("seed", 0)))
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
    repository, _, commit = (source or "").partition("@")
    card = model_card.make_card(config, config_name=model, source_files=checkpoints,
                                repository=repository or None, commit=commit or None)
    checkpoint.save_networks(output, config, networks, card)
    logging.info("Wrote %s (networks: %s)", output, sorted(networks))
  return config, networks


