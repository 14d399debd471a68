"""Model families, found by module name: `harmonax.models.<config.model.name>`.

Every family module exports the contract described in docs/architecture.md:
`INPUTS`, `PRESERVES_BACKGROUND`, `create_networks`, `make_optimizers`,
`compute_losses` and `predict`; optionally `load_pretrained`, `convert_torch`
and `adapt_config`.
"""

from collections.abc import Iterable
import importlib
import pkgutil
from types import ModuleType

_CONTRACT = ("INPUTS", "PRESERVES_BACKGROUND", "create_networks", "make_optimizers",
             "compute_losses", "predict")


def available() -> list[str]:
  """Names of the model family modules that implement the full contract."""
  names = []
  for info in pkgutil.iter_modules(__path__):
    if info.name.startswith("_"):
      continue
    try:
      module = importlib.import_module(f"{__name__}.{info.name}")
    except Exception:  # pylint: disable=broad-except
      continue  # Only used to list valid names in errors; get_family raises.
    if all(hasattr(module, fn) for fn in _CONTRACT):
      names.append(info.name)
  return sorted(names)


def get_family(name: str) -> ModuleType:
  """Returns the model family module `harmonax.models.<name>`.

  Raises:
    ValueError: if no such family exists, listing the valid names.
  """
  try:
    module = importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise ValueError(
        f"Unknown model {name!r}; valid model names: {', '.join(available())}"
    ) from None
  missing = [fn for fn in _CONTRACT if not hasattr(module, fn)]
  if missing:
    raise ValueError(
        f"harmonax.models.{name} is not a model family: it lacks {missing}; "
        f"valid model names: {', '.join(available())}")
  return module


def set_modes(networks: dict, trained: Iterable[str] = ()) -> None:
  """Train mode for the `trained` networks, eval mode for every other one.

  The trainer and evaluation decide modes; families never switch them, so
  frozen networks (e.g. a pretrained base) run in eval mode while the rest
  trains.
  """
  trained = set(trained)
  for name, net in networks.items():
    if name in trained:
      net.train()
    else:
      net.eval()
