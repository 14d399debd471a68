"""Maps PyTorch state dicts onto Flax NNX modules and back.

The NNX module tree of an imported model is built so that the dotted path of
every layer equals the PyTorch key prefix of the same layer (list indices
included: `encoder.block0.block.0` is `net.encoder.block0.block[0]`). The
rules below then translate parameter names and layouts per layer type:

| layer | PyTorch | NNX |
|---|---|---|
| `nnx.Conv` | weight [O, I, kh, kw], bias | kernel [kh, kw, I, O], bias |
| `layers.ConvTranspose2d` | weight [I, O, kh, kw], bias | kernel [kh, kw, I, O], bias |
| `nnx.Linear` | weight [O, I], bias | kernel [I, O], bias |
| `nnx.BatchNorm` | weight, bias, running_mean, running_var | scale, bias, mean, var |
| `nnx.LayerNorm`, `nnx.GroupNorm`, `nnx.InstanceNorm` | weight, bias | scale, bias |
| `nnx.Embed` | weight | embedding |
| any other variable (buffers, lone parameters) | `<path>` | same name, same layout |

`num_batches_tracked` buffers are optional by default: skipped when the module
has no such variable, loaded when it has one (`layers.BatchNorm`), and not
required when the state dict lacks them.

Usage::

  from harmonax import torch_import
  state_dict = torch_import.load_state_dict("official.pth")  # {key: np.ndarray}
  net = MyNet(config, rngs=nnx.Rngs(0))
  torch_import.load_into(net, state_dict)  # raises StateDictMismatchError
  back = torch_import.to_state_dict(net)   # the same keys, PyTorch layouts

A family with a layer type of its own (a spectrally normalized conv, a partial
conv) registers its name/layout rules once with `register_rules(cls, rules)`.
"""

from collections.abc import Callable, Iterable, Mapping
import dataclasses
import os
import pickle
import re
import warnings
import zipfile

from flax import nnx
import jax.numpy as jnp
import numpy as np

from harmonax import variables

DEFAULT_IGNORE = ("num_batches_tracked",)


def _identity(x: np.ndarray) -> np.ndarray:
  return x


def _transpose(perm: tuple[int, ...]) -> Callable[[np.ndarray], np.ndarray]:
  return lambda x: np.transpose(x, perm)


# Layout converters, exported for families that reshape weights themselves.
conv_to_nnx = _transpose((2, 3, 1, 0))           # [O, I, kh, kw] -> [kh, kw, I, O]
conv_to_torch = _transpose((3, 2, 0, 1))         # [kh, kw, I, O] -> [O, I, kh, kw]
conv_transpose_to_nnx = _transpose((2, 3, 0, 1))  # [I, O, kh, kw] -> [kh, kw, I, O]
conv_transpose_to_torch = _transpose((2, 3, 0, 1))  # [kh, kw, I, O] -> [I, O, kh, kw]
linear_to_nnx = _transpose((1, 0))               # [O, I] -> [I, O]
linear_to_torch = _transpose((1, 0))


@dataclasses.dataclass(frozen=True)
class Rule:
  """One PyTorch tensor of a layer <-> one NNX variable attribute of it."""
  torch_name: str
  nnx_name: str
  to_nnx: Callable[[np.ndarray], np.ndarray] = _identity
  to_torch: Callable[[np.ndarray], np.ndarray] = _identity


_RULES: dict[type, tuple[Rule, ...]] = {}


def register_rules(cls: type, rules: Iterable[Rule]) -> None:
  """Declares how the variables of layer class `cls` map onto PyTorch keys."""
  _RULES[cls] = tuple(rules)


_AFFINE = (Rule("weight", "scale"), Rule("bias", "bias"))
register_rules(nnx.Conv, (Rule("weight", "kernel", conv_to_nnx, conv_to_torch),
                          Rule("bias", "bias")))
register_rules(nnx.Linear, (Rule("weight", "kernel", linear_to_nnx, linear_to_torch),
                            Rule("bias", "bias")))
register_rules(nnx.BatchNorm, _AFFINE + (Rule("running_mean", "mean"),
                                         Rule("running_var", "var")))
register_rules(nnx.LayerNorm, _AFFINE)
register_rules(nnx.GroupNorm, _AFFINE)
register_rules(nnx.InstanceNorm, _AFFINE)
register_rules(nnx.Embed, (Rule("weight", "embedding"),))


def _rules_for(module: nnx.Module) -> tuple[Rule, ...] | None:
  for cls in type(module).__mro__:
    if cls in _RULES:
      return _RULES[cls]
  return None


@dataclasses.dataclass(frozen=True)
class _Slot:
  variable: nnx.Variable
  to_nnx: Callable[[np.ndarray], np.ndarray]
  to_torch: Callable[[np.ndarray], np.ndarray]

  def torch_shape(self) -> tuple[int, ...]:
    # np.empty only reserves address space, so this is cheap for big kernels.
    return tuple(self.to_torch(np.empty(self.variable.shape, np.float32)).shape)


def _key(path: tuple) -> str:
  return ".".join(str(p) for p in path)


def _slots(module: nnx.Module) -> dict[str, _Slot]:
  """PyTorch key -> the NNX variable it fills, for every variable of `module`."""
  slots, covered = {}, set()
  for path, sub in nnx.iter_modules(module):
    rules = _rules_for(sub)
    if rules is None:
      continue
    for rule in rules:
      variable = getattr(sub, rule.nnx_name, None)
      if isinstance(variable, nnx.Variable):
        slots[_key(path + (rule.torch_name,))] = _Slot(variable, rule.to_nnx, rule.to_torch)
        covered.add(path + (rule.nnx_name,))
  for path, variable in nnx.to_flat_state(nnx.state(module, nnx.Variable)):
    if path in covered or isinstance(variable, nnx.RngState):
      continue
    # Buffers and lone parameters keep their PyTorch name and layout.
    real = _variable_at(module, path)
    slots[_key(path)] = _Slot(real, _identity, _identity)
  return slots


def _variable_at(module: nnx.Module, path: tuple) -> nnx.Variable:
  node = module
  for p in path:
    node = getattr(node, p) if isinstance(p, str) and hasattr(node, p) else node[p]
  return node


class StateDictMismatchError(ValueError):
  """A state dict does not match a module: lists every missing, unexpected and
  mis-shaped key."""

  def __init__(self, missing: list[str], unexpected: list[str],
               mismatched: list[tuple[str, tuple, tuple]], context: str = ""):
    self.missing, self.unexpected, self.mismatched = missing, unexpected, mismatched
    lines = [f"State dict does not match the model{' (' + context + ')' if context else ''}:"]
    if missing:
      lines.append(f"  missing keys ({len(missing)}): {', '.join(missing)}")
    if unexpected:
      lines.append(f"  unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
    for key, expected, got in mismatched:
      lines.append(f"  shape mismatch at {key}: expected {expected}, got {got}")
    super().__init__("\n".join(lines))


def _optional(key: str, ignore: tuple[str, ...]) -> bool:
  return key.rsplit(".", 1)[-1] in ignore


def expected_shapes(module: nnx.Module, *, ignore: Iterable[str] = DEFAULT_IGNORE
                    ) -> dict[str, tuple[int, ...]]:
  """PyTorch key -> PyTorch shape that `load_into(module, ...)` requires
  (optional keys, by their last dotted component in `ignore`, left out)."""
  ignore = tuple(ignore)
  return {k: s.torch_shape() for k, s in sorted(_slots(module).items())
          if not _optional(k, ignore)}


def load_into(module: nnx.Module, state_dict: Mapping[str, np.ndarray], *,
              ignore: Iterable[str] = DEFAULT_IGNORE, context: str = "") -> None:
  """Copies a PyTorch state dict into `module`'s variables, in place.

  Args:
    module: an NNX module whose paths equal the PyTorch key prefixes.
    state_dict: PyTorch key -> array in PyTorch layout.
    ignore: key suffixes (last dotted component) that are optional: skipped in
      `state_dict` when the module lacks them, kept at their value in the
      module when `state_dict` lacks them.
    context: named in the error message (e.g. the checkpoint file).

  Raises:
    StateDictMismatchError: if a key is missing, unexpected or has the wrong
      shape; nothing is copied then.
  """
  ignore = tuple(ignore)
  slots = _slots(module)
  missing = sorted(k for k in slots if k not in state_dict and not _optional(k, ignore))
  unexpected = sorted(k for k in state_dict if k not in slots and not _optional(k, ignore))
  mismatched, values = [], {}
  for key, slot in sorted(slots.items()):
    if key not in state_dict:
      continue
    value = np.asarray(state_dict[key])
    expected = slot.torch_shape()
    if value.shape != expected:
      mismatched.append((key, expected, value.shape))
      continue
    values[key] = slot.to_nnx(value)
  if missing or unexpected or mismatched:
    raise StateDictMismatchError(missing, unexpected, mismatched, context)
  for key, value in values.items():
    variable = slots[key].variable
    variable.value = jnp.asarray(value, dtype=variable.dtype)


def to_state_dict(module: nnx.Module) -> dict[str, np.ndarray]:
  """The module's variables as a PyTorch-layout state dict (numpy arrays)."""
  return {k: np.asarray(s.to_torch(np.asarray(s.variable.value)))
          for k, s in sorted(_slots(module).items())}


class CheckpointFileError(ValueError):
  """A weights file that cannot be read safely or holds no state dict; names the file."""


def _refuse_code(path: str, error: pickle.UnpicklingError) -> CheckpointFileError:
  """The error for a file the weights-only unpickler refused.

  torch's own message recommends the unsafe way out; it is not passed on, only
  the name of the offending object when torch gives one.
  """
  found = re.search(r"GLOBAL ([\w.]+)", str(error))
  what = f" ({found.group(1)})" if found else ""
  return CheckpointFileError(
      f"{path}: refused to load: the file contains pickled code objects{what}, not "
      "only tensors, and loading it could run arbitrary code. harmonax reads weights "
      "only: get a plain state dict (tensors only) or an .npz of the "
      "weights from a source you trust.")


# How the files start: .npz and torch.save's format since 1.6 are zip archives;
# older torch.save files are pickles (protocol 2 or later starts with 0x80).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_MAGIC = b"\x80"


def _check_magic(path: str) -> None:
  """Refuses a file that is neither a zip archive nor a pickle, saying what it starts with.

  A download that saved an error page or a git-lfs pointer would otherwise
  reach the unpickler and be reported as holding pickled code.
  """
  with open(path, "rb") as f:
    head = f.read(64)
  zip_only = path.endswith(".npz")
  if head.startswith(_ZIP_MAGIC) or (not zip_only and head.startswith(_PICKLE_MAGIC)):
    return
  kind = "an .npz (zip) archive" if zip_only else "a PyTorch checkpoint (zip or pickle)"
  text = head.decode("ascii", "replace")
  hint = ""
  if text.lstrip().lower().startswith(("<!doctype", "<html")):
    hint = ": it is an HTML page (a failed download?)"
  elif text.startswith("version https://git-lfs"):
    hint = ": it is a git-lfs pointer (run git lfs pull)"
  elif not head:
    hint = ": it is empty"
  raise CheckpointFileError(
      f"{path} is not {kind}{hint}; it starts with {head[:24]!r}")


def load_state_dict(path: str, *, strip_prefix: str = "module.") -> dict[str, np.ndarray]:
  """Reads a PyTorch checkpoint (`.pth`, `.pt`, `.bin`) or an `.npz` file.

  A checkpoint that wraps the state dict (`{'state_dict': ...}`, `{'model': ...}`,
  `{'net': ...}`) is unwrapped; `strip_prefix` (DataParallel's 'module.') is
  removed from keys that all carry it. torch is imported only here: it is the
  optional `convert` extra.

  The file is read with torch's weights-only unpickler: a file holding other
  pickled objects (code) is refused, never executed.

  Raises:
    FileNotFoundError: if `path` does not exist.
    CheckpointFileError (a ValueError): if the file is unreadable, holds pickled
      code, or holds no mapping of names to tensors.
  """
  if not os.path.exists(path):
    raise FileNotFoundError(f"Checkpoint file not found: {path}")
  _check_magic(path)
  if path.endswith(".npz"):
    with np.load(path, allow_pickle=False) as data:
      state = {k: data[k] for k in data.files}
  else:
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
          "Reading PyTorch checkpoints needs torch: pip install 'harmonax[convert]' "
          "(or convert to .npz elsewhere)") from e
    try:
      with warnings.catch_warnings():
        # Old pickle protocols make torch warn; the result is checked below.
        warnings.simplefilter("ignore", UserWarning)
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
      raise _refuse_code(path, e) from None
    except (RuntimeError, zipfile.BadZipFile, EOFError) as e:
      raise CheckpointFileError(f"{path} is not a readable PyTorch checkpoint: {e}") from e
    raw = _unwrap(raw, path)
    state = {k: v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
             for k, v in raw.items()}
  if strip_prefix and state and all(k.startswith(strip_prefix) for k in state):
    state = {k[len(strip_prefix):]: v for k, v in state.items()}
  return state


def _unwrap(raw, path: str) -> Mapping:
  if isinstance(raw, Mapping) and raw and all(hasattr(v, "shape") for v in raw.values()):
    return raw
  if isinstance(raw, Mapping):
    for name in ("state_dict", "model", "net", "params"):
      if isinstance(raw.get(name), Mapping):
        return _unwrap(raw[name], path)
  raise CheckpointFileError(
      f"{path} holds no state dict (a mapping of names to tensors); top-level "
      f"keys: {sorted(raw)[:20] if isinstance(raw, Mapping) else type(raw).__name__}")


def convert_single(state_dicts: Mapping[str, Mapping[str, np.ndarray]], config,
                   create_networks: Callable, network: str) -> dict[str, nnx.State]:
  """The one-checkpoint case of a family's `convert_torch`.

  state_dicts holds one state dict under the role 'default' (harmonax.convert
  with a single file) or `network`; it is loaded into that network of
  `create_networks(config, ...)`, built abstractly (every variable must come
  from the file, which `load_into` enforces), and its state returned.
  """
  if len(state_dicts) != 1 or not set(state_dicts) <= {"default", network}:
    raise ValueError(f"{config.model.name} takes one checkpoint (role 'default' or "
                     f"{network!r}); got roles {sorted(state_dicts)}")
  (state_dict,) = state_dicts.values()
  net = nnx.eval_shape(lambda: create_networks(config, variables.rngs(0)))[network]
  load_into(net, state_dict, context=f"model {config.model.name}")
  return {network: nnx.state(net)}
