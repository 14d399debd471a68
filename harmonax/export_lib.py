"""Exports a model's inference function to ONNX or StableHLO, as a library.

The exported graph is `inference.harmonize_arrays` with the weights as
constants: mask binarization, normalization of uint8 or float [0, 1] inputs,
the family's padding or internal resizing, the network, clamping, rounding
(uint8) and background pasting, exactly as `harmonax.harmonize` runs it.
Inputs `composite` [B,H,W,3] and `mask` [B,H,W,1] of one dtype (uint8 or
float32), output `harmonized` [B,H,W,3] of that dtype. The command line is
`harmonax.export`.

StableHLO goes through `jax.export` (its serialization is guaranteed readable
by JAX releases for about six months: re-export after upgrading further);
ONNX through jax2onnx, checked with onnxruntime. A sidecar `<file>.json`
records versions, shapes and the model card's source and license.
"""

from collections.abc import Callable
import datetime
import json
import logging
import os
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from harmonax import checkpoint
from harmonax import cli
from harmonax import image_io
from harmonax import inference
from harmonax import model_card
from harmonax.models import layers

FORMATS = ("onnx", "stablehlo")
SUFFIXES = {"onnx": ".onnx", "stablehlo": ".stablehlo"}
INPUT_DTYPES = ("uint8", "float32")
INPUT_NAMES = inference.HARMONIZATION_INPUTS
OUTPUT_NAME = "harmonized"
STABLEHLO_COMPATIBILITY = ("jax.export serializations stay loadable for about 6 months of "
                           "JAX releases after jax_version; re-export after upgrading further")


class ExportArgumentError(cli.UserError, ValueError):
  """A format, size, dtype or output path that export cannot take."""


class ExportError(ValueError):
  """The model cannot be exported as asked (the message names the operation)."""


def inference_function(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module]
                       ) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """(composite, mask) -> harmonized, with the networks' state as constants."""
  if inference.inputs_of(config) != INPUT_NAMES:
    raise ExportError(f"{config.model.name} reads {inference.inputs_of(config)}; export "
                      f"supports families reading {INPUT_NAMES}")
  graphdef, state = nnx.split(networks)

  def harmonize(composite, mask):
    return inference.harmonize_arrays(config, nnx.merge(graphdef, state), composite, mask)

  return harmonize


def _specs(height: int | None, width: int | None, input_dtype: str) -> list:
  """Input ShapeDtypeStructs: a symbolic batch, and symbolic H, W when dynamic."""
  dims = ("B", height or "H", width or "W")
  symbols = jax.export.symbolic_shape(", ".join(d for d in dims if isinstance(d, str)))
  it = iter(symbols)
  shape = tuple(d if isinstance(d, int) else next(it) for d in dims)
  dtype = jnp.dtype(input_dtype)
  return [jax.ShapeDtypeStruct(shape + (3,), dtype), jax.ShapeDtypeStruct(shape + (1,), dtype)]


def _blocked(config, fmt: str, dynamic: bool, error: Exception) -> ExportError:
  what = "with dynamic height and width" if dynamic else "at this size"
  hint = " Export a fixed size instead: --height=H --width=W." if dynamic else ""
  return ExportError(f"{model_card.model_name(config)} cannot be exported to {fmt} {what}: "
                     f"{type(error).__name__}: {str(error).splitlines()[0][:400]}.{hint}")


def export_stablehlo(config, networks, height: int | None, width: int | None,
                     input_dtype: str = "float32") -> bytes:
  """The serialized jax.export.Exported; height/width None: dynamic."""
  fn = jax.jit(inference_function(config, networks))
  try:
    exported = jax.export.export(fn)(*_specs(height, width, input_dtype))
  except Exception as e:  # pylint: disable=broad-except
    raise _blocked(config, "stablehlo", height is None, e) from e
  return bytes(exported.serialize())


def export_onnx(config, networks, height: int | None, width: int | None,
                input_dtype: str = "float32"):
  """The onnx.ModelProto (jax2onnx); height/width None: dynamic."""
  try:
    import jax2onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("ONNX export needs jax2onnx: pip install -e .[export] && "
                      "pip install --no-deps jax2onnx==0.17.1 (README, Deploying)") from e
  fn = inference_function(config, networks)
  # onnx_ir warns once per value whose type it skips writing (dozens a graph;
  # the file loads and runs the same: tests/export_test.py).
  serde = logging.getLogger("onnx_ir.serde")
  level = serde.level
  serde.setLevel(logging.ERROR)
  try:
    with layers.portable_ops():
      proto = jax2onnx.to_onnx(fn, _specs(height, width, input_dtype),
                               model_name=model_card.model_name(config),
                               input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME])
  except Exception as e:  # pylint: disable=broad-except
    raise _blocked(config, "onnx", height is None, e) from e
  finally:
    serde.setLevel(level)
  # jax2onnx records the JAX (NHWC) shape of values it keeps in NCHW between
  # convolutions. onnxruntime then warns while loading ("Error merging shape
  # info"), and with a symbolic size refuses the file (HRNet: "Incompatible
  # dimensions"). The shapes of inner values are optional; onnxruntime infers them.
  del proto.graph.value_info[:]
  _drop_unused_initializers(proto.graph)
  return proto


def _graphs(graph) -> list:
  """graph and every subgraph (loop bodies) within it."""
  found = [graph]
  for node in graph.node:
    for attribute in node.attribute:
      for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
        found += _graphs(sub)
  return found


def _drop_unused_initializers(graph) -> None:
  """Removes constants that no node reads: jax2onnx leaves some in loop bodies
  (`layers.row_chunks`), and onnxruntime warns about each while loading."""
  graphs = _graphs(graph)
  used = {name for g in graphs for node in g.node for name in node.input}
  used |= {out.name for g in graphs for out in g.output}
  for g in graphs:
    keep = [init for init in g.initializer if init.name in used]
    if len(keep) < len(g.initializer):
      del g.initializer[:]
      g.initializer.extend(keep)


def artifact_name(config, fmt: str, height: int | None, width: int | None,
                  input_dtype: str) -> str:
  """'issam_256x256_uint8.onnx', 'issam_dynamic_float32.stablehlo'."""
  size = f"{height}x{width}" if height else "dynamic"
  return f"{model_card.model_name(config)}_{size}_{input_dtype}{SUFFIXES[fmt]}"


def _versions(fmt: str) -> dict[str, str]:
  from harmonax import __version__  # pylint: disable=g-import-not-at-top
  versions = {"harmonax": __version__, "jax": jax.__version__,
              "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else ""}
  if fmt == "onnx":
    from importlib import metadata  # pylint: disable=g-import-not-at-top
    versions["jax2onnx"] = metadata.version("jax2onnx")
  return versions


def export(checkpoint_dir: str, fmt: str, output: str, height: int | None = None,
           width: int | None = None, input_dtype: str = "float32") -> tuple[str, str]:
  """Exports the model of `checkpoint_dir` to `output` (a file, or an existing
  directory / a path ending in '/' to get `artifact_name`); height/width None
  exports dynamic sizes. Writes `<file>.json` beside it.

  Returns:
    (artifact path, sidecar path).

  Raises:
    ExportArgumentError: a bad format, dtype, size or output file name.
    image_io.OutputPathError: a file where the output's folder must be.
    ExportError: the format cannot express an operation of the model (or
      dynamic sizes); the message names it.
  """
  if fmt not in FORMATS:
    raise ExportArgumentError(f"format {fmt!r}: expected one of {FORMATS}")
  if input_dtype not in INPUT_DTYPES:
    raise ExportArgumentError(f"input_dtype {input_dtype!r}: expected one of {INPUT_DTYPES}")
  if (height is None) != (width is None):
    raise ExportArgumentError("give both height and width, or neither (dynamic)")
  if height is not None and (height < 1 or width < 1):
    raise ExportArgumentError(f"height and width must be positive, got {height}x{width}")
  to_folder = output.endswith("/") or os.path.isdir(output)
  suffix = os.path.splitext(output)[1].lower()
  if not to_folder and suffix != SUFFIXES[fmt]:  # Never over an image or a config.json.
    raise ExportArgumentError(
        f"output {output}: a {fmt} file is named *{SUFFIXES[fmt]}"
        + (f", not *{suffix}" if suffix else "") + " (or give a folder)")
  image_io.check_output_path(output, folder=to_folder)  # Before the minutes of exporting.
  config, networks = checkpoint.load_networks(checkpoint_dir)
  if to_folder:
    output = os.path.join(output, artifact_name(config, fmt, height, width, input_dtype))
  image_io.make_output_dir(os.path.dirname(os.path.abspath(output)))
  card = model_card.read(checkpoint_dir) or {}
  if fmt == "stablehlo":
    with open(output, "wb") as f:
      f.write(export_stablehlo(config, networks, height, width, input_dtype))
  else:
    proto = export_onnx(config, networks, height, width, input_dtype)
    for key in ("license", "model"):
      entry = proto.metadata_props.add()
      entry.key, entry.value = key, str(card.get(key, model_card.model_name(config)
                                                 if key == "model" else "unknown"))
    with open(output, "wb") as f:
      f.write(proto.SerializeToString())
  shape = ["B", height or "H", width or "W"]
  sidecar: dict[str, Any] = {
      "format": fmt, "file": os.path.basename(output), "checkpoint": checkpoint_dir,
      "model": model_card.model_name(config), "family": config.model.name,
      "inputs": {"composite": shape + [3], "mask": shape + [1]}, "input_dtype": input_dtype,
      "output": {OUTPUT_NAME: shape + [3]}, "versions": _versions(fmt),
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "license": card.get("license", "unknown"), "source": card.get("source"),
  }
  if fmt == "stablehlo":
    sidecar["compatibility"] = STABLEHLO_COMPATIBILITY
  with open(output + ".json", "w", encoding="utf-8") as f:
    json.dump(sidecar, f, indent=2)
  return output, output + ".json"


def load_stablehlo(path: str) -> Callable[[Any, Any], jax.Array]:
  """The exported function of a .stablehlo file: (composite, mask) -> harmonized."""
  with open(path, "rb") as f:
    exported = jax.export.deserialize(bytearray(f.read()))
  return exported.call
