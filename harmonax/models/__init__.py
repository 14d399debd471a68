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

from harmonax import cli

# config.dtype: the compute dtype of the networks' layers (set_compute_dtype).
COMPUTE_DTYPES = ("float32", "bfloat16")

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


class UnknownModelError(cli.UserError, ValueError):
  """A config.model.name that names no model family."""


def get_family(name: str) -> ModuleType:
  """Returns the model family module `harmonax.models.<name>`.

  Raises:
    UnknownModelError: if no such family exists, listing the valid names.
  """
  try:
    module = importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise UnknownModelError(
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


def compute_dtype(config) -> str:
  """config.dtype ('float32' when absent, as in workdirs written before it existed).

  Raises:
    ValueError: not one of COMPUTE_DTYPES.
  """
  name = config.get("dtype", "float32") or "float32"
  if name not in COMPUTE_DTYPES:
    raise ValueError(f"config.dtype={name!r}; expected one of {COMPUTE_DTYPES}")
  return name


def set_compute_dtype(networks: dict, dtype: str) -> int:
  """Mixed precision: every layer with a computation dtype computes in `dtype`.

  Flax layers (nnx.Conv, ConvTranspose, Linear, BatchNorm, LayerNorm,
  MultiHeadAttention, ...) cast their inputs and parameters to `.dtype` and
  keep the parameters themselves in `.param_dtype` (float32); batch-norm
  statistics are computed in at least float32. Custom ops follow their inputs'
  dtype (layers.conv_transpose2d, depthwise_conv2d) or promote to float32 where
  they meet float32 arrays. Returns the number of layers set.
  """
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  dtype = jnp.dtype(dtype)
  if dtype == jnp.float32:
    return 0  # Layers left as built (dtype None: they follow their inputs).
  count = 0
  for net in networks.values():
    for _, module in nnx.iter_graph(net):
      if (isinstance(module, nnx.Module) and hasattr(module, "param_dtype")
          and hasattr(module, "dtype")):
        module.dtype = dtype
        count += 1
  return count
