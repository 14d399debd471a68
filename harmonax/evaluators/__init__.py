"""Evaluators, found by module name: `harmonax.evaluators.<name>`.

`config.eval.metrics` names the evaluators that score every evaluation set.
Each module exports

  score(config, networks, batch, pred, protocol) -> dict[str, jax.Array]

called inside jit once per batch: `batch` holds the family's inputs and `real`
as float [0, 1] arrays, `pred` the model's clipped prediction [B,H,W,3] (with
the background pasted if the protocol says so), and `protocol` the
`evaluation.Protocol` (PSNR peak, SSIM window, background). It returns one
value per image ([B]) for each of its columns; `COLUMNS` (optional) lists the
paper-table columns it fills, everything else becomes an extra column.
"""

import importlib
import pkgutil
from types import ModuleType


def available() -> list[str]:
  """Names of the evaluator modules."""
  return sorted(info.name for info in pkgutil.iter_modules(__path__)
                if not info.name.startswith("_"))


def get(name: str) -> ModuleType:
  """The evaluator module `harmonax.evaluators.<name>`.

  Raises:
    ValueError: if there is none, listing the valid names.
  """
  try:
    module = importlib.import_module(f"{__name__}.{name}")
  except ModuleNotFoundError as e:
    if e.name != f"{__name__}.{name}":
      raise
    raise ValueError(f"Unknown evaluator {name!r}; valid: {', '.join(available())}") from None
  if not hasattr(module, "score"):
    raise ValueError(f"harmonax.evaluators.{name} has no score(); valid: "
                     f"{', '.join(available())}")
  return module
