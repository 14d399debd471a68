"""Exports: every harmonization family to StableHLO and ONNX, re-run by its runtime
and compared with JAX's `harmonize` on a real photo at 256x256 and a non-square size
(Deep Image Compositing, which takes two photos, has no export)."""

import functools
import json
import os
import re
import sys

import fake_family
import numpy as np
from PIL import Image
import pytest

from harmonax import checkpoint
from harmonax import conversion
from harmonax import export_lib
from harmonax import inference
from harmonax import model_card
from harmonax import models
from dovenet_test import numpy_networks
import recipes

SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "data_builders", "harmonization_composites", "sample")
SIZES = ((256, 256), (160, 224))  # (H, W): square and non-square.
# The dynamic ONNX files of the families that pad to a multiple (2**4 to 2**6)
# also run at a size that is none: the padded size is computed in the graph
# there, by jax2onnx's division (XLA's for StableHLO: layers_test covers its pads).
PADDED = ("issam", "hrnet_idih", "dovenet", "bargainnet")
DYNAMIC_SIZES = SIZES + ((100, 130),)
TOLERANCE = 1e-3  # Max abs error on [0, 1] outputs.


def recipe_checkpoint(recipe: str, directory: str, **model) -> str:
  """A runlocal-size network of `recipe` with deterministic weights, saved with
  save_networks (and its model card) in `directory`; `model` overrides
  config.model fields."""
  config = _runlocal(recipe)
  config.model.update(model)
  family = models.get_family(config.model.name)
  networks = numpy_networks(family.create_networks, config)
  for net in networks.values():
    net.eval()
  checkpoint.save_networks(directory, config, networks)
  return directory


def _runlocal(recipe: str):
  return recipes.official_network(conversion.default_config(recipe, "runlocal"))


def photo(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """(composite float32 [1,H,W,3] in [0, 1], mask float32 [1,H,W,1] 0/1): a
  sample photo resized, with an elliptic foreground shifted in color."""
  image = Image.open(os.path.join(SAMPLE, "coffee.jpg")).convert("RGB")
  real = np.asarray(image.resize((width, height), Image.BILINEAR), np.float32) / 255.0
  y, x = np.mgrid[:height, :width]
  fg = ((y - height * 0.55) / (height * 0.3)) ** 2 + ((x - width * 0.45) / (width * 0.25)) ** 2 < 1
  composite = np.where(fg[..., None], np.clip(real * [1.2, 0.9, 0.7] + 0.05, 0, 1), real)
  mask = fg[..., None].astype(np.float32)
  return composite[None].astype(np.float32), mask[None]


# Small chunks, so that the exports go through the loops a 4K image takes:
# PCT-Net's rows of the fused upsample-and-apply and the ViT's blocks of queries
# (a 128 view: 1,024 tokens, 2 blocks), CDTNet's LUT chunks (and its refinement
# strips, runlocal's 48 rows); unrolled in fixed-size ONNX files
# (`layers.portable_ops`). Dynamic files take as many chunks as 3840x2160 would
# (`layers.symbolic_chunks`).
CHUNKS = {"pctnet_cnn": dict(chunk_pixels=24576),  # 3 chunks at 256x256, 2 at 160x224.
          "pctnet_vit": dict(chunk_pixels=24576, low_res=128),
          "cdtnet": dict(lut_chunk=32768)}


@pytest.fixture(scope="module", params=["idih", "issam", "hrnet_idih", "dovenet", "bargainnet",
                                        "harmonizer", "pctnet_cnn", "pctnet_vit", "cdtnet"])
def recipe_dir(request, tmp_path_factory):
  directory = str(tmp_path_factory.mktemp(request.param))
  return request.param, recipe_checkpoint(request.param, directory,
                                          **CHUNKS.get(request.param, {}))


def _harmonized(directory: str, composite, mask) -> np.ndarray:
  config, networks = checkpoint.load_networks(directory)
  return inference.harmonize(networks, composite, mask, config=config)


@functools.lru_cache(maxsize=None)
def _reference(directory: str, height: int, width: int) -> np.ndarray:
  """JAX's `harmonize` of photo(height, width): computed once for both formats."""
  return _harmonized(directory, *photo(height, width))


def _check(run, directory, height, width):
  composite, mask = photo(height, width)
  got = np.asarray(run(composite, mask))
  want = _reference(directory, height, width)
  assert got.shape == want.shape == (1, height, width, 3)
  assert np.abs(got - want).max() <= TOLERANCE


# Families whose dynamic-size export works: every one, in both formats. A
# dynamic file of PCT-Net or CDTNet loops over a fixed count of chunks
# (`layers.row_chunks`), a fixed-size one unrolls its chunks, so both are checked.
DYNAMIC = {"stablehlo": ("idih", "issam", "hrnet_idih", "dovenet", "bargainnet", "harmonizer",
                         "pctnet_cnn", "pctnet_vit", "cdtnet"),
           "onnx": ("issam", "hrnet_idih", "dovenet", "bargainnet", "harmonizer",
                    "pctnet_cnn", "pctnet_vit", "cdtnet")}
# jax2onnx takes 5-12 s a size for these graphs: fixed-size ONNX at the
# non-square size only (the dynamic file runs at both).
ONNX_ONE_SIZE = ("hrnet_idih",) + DYNAMIC["onnx"]


def test_stablehlo_matches_jax(recipe_dir, tmp_path):
  recipe, directory = recipe_dir
  name = model_card.model_name(checkpoint.load_config(directory))  # 'pctnet_vit', 'hrnet4_idih'.
  if recipe in DYNAMIC["stablehlo"]:
    path, sidecar = export_lib.export(directory, "stablehlo", str(tmp_path) + "/")
    assert os.path.basename(path) == f"{name}_dynamic_float32.stablehlo"
    for height, width in SIZES:
      _check(export_lib.load_stablehlo(path), directory, height, width)
  else:
    for height, width in SIZES:
      path, sidecar = export_lib.export(directory, "stablehlo", str(tmp_path) + "/",
                                        height, width)
      assert os.path.basename(path) == f"{name}_{height}x{width}_float32.stablehlo"
      _check(export_lib.load_stablehlo(path), directory, height, width)
  meta = json.loads(open(sidecar, encoding="utf-8").read())
  assert meta["versions"]["jax"] and "6 months" in meta["compatibility"]


# The chunk loops a dynamic ONNX file keeps (`layers.row_chunks`): PCT-Net's rows
# of the fused upsample-and-apply, CDTNet's LUT chunks and refinement strips.
# Fixed-size files unroll theirs (`layers.portable_ops`).
LOOPS = {"pctnet_cnn": 1, "pctnet_vit": 1, "cdtnet": 2}


def test_onnx_matches_jax(recipe_dir, tmp_path, capfd):
  onnx = pytest.importorskip("onnx")
  pytest.importorskip("jax2onnx")
  ort = pytest.importorskip("onnxruntime")
  recipe, directory = recipe_dir
  if recipe == "idih":
    pytest.skip("the dih family is covered by issam (same layers but attention)")
  checks = [((height, width), (height, width))
            for height, width in (SIZES[1:] if recipe in ONNX_ONE_SIZE else SIZES)]
  if recipe in DYNAMIC["onnx"]:
    checks.append(((None, None), DYNAMIC_SIZES if recipe in PADDED else SIZES))
  for (height, width), sizes in checks:
    path, _ = export_lib.export(directory, "onnx", str(tmp_path) + "/", height, width)
    assert ("_dynamic_" in path) == (height is None)
    # A dynamic file computes its chunks in loops, not the whole image at once.
    assert [node.op_type for node in onnx.load(path).graph.node].count("Loop") == (
        LOOPS.get(recipe, 0) if height is None else 0)
    capfd.readouterr()
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    # onnxruntime loads the file without a warning (jax2onnx's loop bodies hold
    # constants that no node reads, which export_lib removes).
    assert "[W:onnxruntime" not in capfd.readouterr().err

    def run(composite, mask, session=session):
      return session.run(None, {"composite": composite, "mask": mask})[0]

    for size in [sizes] if height else sizes:
      _check(run, directory, *size)


def test_blocked_dynamic_export_names_the_operation(tmp_path, monkeypatch):
  pytest.importorskip("jax2onnx")
  directory = recipe_checkpoint("dovenet", str(tmp_path / "ckpt"))

  def needs_known_size(config, networks):  # Every family exports; a stand-in that cannot.
    del config, networks
    return lambda composite, mask: composite * int(composite.shape[1])

  monkeypatch.setattr(export_lib, "inference_function", needs_known_size)
  for fmt in export_lib.FORMATS:
    with pytest.raises(export_lib.ExportError, match=f"dovenet cannot be exported to {fmt} "
                       "with dynamic height and width: InconclusiveDimensionOperation: "
                       "Symbolic dimension 'H'.*--height=H --width=W"):
      export_lib.export(directory, fmt, str(tmp_path) + "/")


def test_cli_uint8_stablehlo_and_usage_errors(tmp_path):
  directory = recipe_checkpoint("issam", str(tmp_path / "ckpt"))
  output = str(tmp_path / "issam.stablehlo")
  result = fake_family.run_cli("export", [f"--checkpoint={directory}", "--format=stablehlo",
                                          f"--output={output}", "--height=64", "--width=48",
                                          "--input_dtype=uint8"], register_fake=False)
  assert result.returncode == 0, result.stderr[-2000:]
  composite, mask = photo(64, 48)
  composite = np.round(composite * 255).astype(np.uint8)
  mask = (mask * 255).astype(np.uint8)
  got = np.asarray(export_lib.load_stablehlo(output)(composite, mask))
  assert got.dtype == np.uint8
  np.testing.assert_array_equal(got, _harmonized(directory, composite, mask))
  result = fake_family.run_cli("export", [f"--checkpoint={directory}", "--format=onnx",
                                          f"--output={output}", "--height=64"],
                               register_fake=False)
  assert result.returncode != 0 and "--dynamic" in result.stderr
  result = fake_family.run_cli("export", [f"--checkpoint={tmp_path / 'nowhere'}",
                                          "--format=stablehlo", f"--output={output}",
                                          "--dynamic"], register_fake=False)
  assert result.returncode == 1 and "Traceback" not in result.stderr
  assert result.stderr.strip().splitlines()[-1].startswith(
      f"error: {tmp_path / 'nowhere' / 'config.json'} not found")
  # No INFO chatter of JAX or orbax (cli.run): absl's INFO lines start 'I<MMDD> '.
  assert not re.search(r"^I\d{4} ", result.stderr, re.MULTILINE), result.stderr


def test_onnx_without_jax2onnx_says_how_to_install_it(tmp_path, monkeypatch):
  directory = recipe_checkpoint("issam", str(tmp_path / "ckpt"))
  monkeypatch.setitem(sys.modules, "jax2onnx", None)  # `import jax2onnx` raises ImportError.
  with pytest.raises(ImportError, match=r"pip install --no-deps jax2onnx==0\.17\.1"):
    export_lib.export(directory, "onnx", str(tmp_path) + "/", 64, 64)


def test_export_inputs_are_checked(tmp_path):
  directory = recipe_checkpoint("issam", str(tmp_path / "ckpt"))
  with pytest.raises(ValueError, match="both height and width"):
    export_lib.export(directory, "stablehlo", str(tmp_path) + "/", 64, None)
  with pytest.raises(ValueError, match="format"):
    export_lib.export(directory, "tflite", str(tmp_path) + "/", 64, 64)
  with pytest.raises(ValueError, match="height and width must be positive, got 0x64"):
    export_lib.export(directory, "stablehlo", str(tmp_path) + "/", 0, 64)
  for name in ("x.onnx", "photo.png", "config.json"):  # Never over another kind of file.
    with pytest.raises(ValueError, match=r"a stablehlo file is named \*.stablehlo, not \*\."):
      export_lib.export(directory, "stablehlo", str(tmp_path / name), 64, 64)
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="is a file, not a folder"):
    export_lib.export(directory, "stablehlo", str(tmp_path / "file" / "x.stablehlo"), 64, 64)
  assert not (tmp_path / "x.onnx").exists()
