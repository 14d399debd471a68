"""harmonax.load / model(composite, mask) and the model cards written with checkpoints."""

import hashlib
import subprocess
import sys

from convert_test import _official_state_dict
from export_test import photo
from export_test import recipe_checkpoint
import numpy as np
from PIL import Image
import pytest

import harmonax
from harmonax import checkpoint
from harmonax import conversion
from harmonax import inference
from harmonax import model_card


def test_convert_writes_a_card_with_provenance_and_load_reads_it(tmp_path):
  path = tmp_path / "issam256.npz"
  np.savez(path, **_official_state_dict("issam", 0))
  out = str(tmp_path / "issam_official")
  conversion.convert("issam", {"default": str(path)}, out,
                     source="https://github.com/SamsungLabs/image_harmonization@abc123")
  model = harmonax.load(out)
  info = model.info
  assert (info["model"], info["family"], info["variant"]) == ("issam", "dih", "issam")
  assert info["config_name"] == "issam"
  assert 2_000_000 < info["parameters"] < 2_400_000  # iS2AM: 2.19M.
  assert info["license"] == "MPL-2.0"
  source = info["source"]
  assert source["repository"] == "https://github.com/SamsungLabs/image_harmonization"
  assert source["commit"] == "abc123"
  assert source["files"]["default"] == {
      "name": "issam256.npz", "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
  assert (tmp_path / "issam_official" / "README.md").read_text().startswith("---\n")


def test_model_call_on_arrays_pil_images_batches_and_lists(tmp_path):
  directory = recipe_checkpoint("issam", str(tmp_path / "ckpt"))
  model = harmonax.load(directory)
  assert model.info["source"]["kind"] == "trained with harmonax"
  assert harmonax.load(directory, dtype="bfloat16").info == model.info  # As README shows.
  composite, mask = photo(40, 56)
  want = inference.harmonize(model.networks, composite[0], mask[0], config=model.config)
  np.testing.assert_array_equal(model(composite[0], mask[0]), want)  # float [0, 1]
  u8 = np.round(composite[0] * 255).astype(np.uint8)
  m8 = (mask[0, ..., 0] * 255).astype(np.uint8)
  out = model(Image.fromarray(u8), Image.fromarray(m8))
  assert isinstance(out, Image.Image) and out.size == (56, 40)
  np.testing.assert_array_equal(np.asarray(out), model(u8, m8))
  batch = model(np.stack([u8, u8]), np.stack([m8, m8]))
  assert batch.shape == (2, 40, 56, 3) and batch.dtype == np.uint8
  small = np.zeros((24, 32, 3), np.uint8)
  outs = model([u8, small], [m8, np.ones((24, 32), bool)])
  assert [o.shape for o in outs] == [(40, 56, 3), (24, 32, 3)]

  # PIL masks and images of any mode read as `harmonize` reads files (a red or
  # cut-out mask used to read as empty through convert("L")).
  want = model(u8, m8)
  red = Image.fromarray(np.stack([m8, 0 * m8, 0 * m8], -1))
  cutout = Image.fromarray(np.concatenate([np.full((40, 56, 3), 90, np.uint8), m8[..., None]],
                                          -1), "RGBA")
  labels = Image.fromarray((m8 > 0).astype(np.uint8))
  for pil_mask in (red, cutout, labels):
    np.testing.assert_array_equal(np.asarray(model(Image.fromarray(u8), pil_mask)), want)
  grey16 = Image.fromarray(u8[..., 1].astype(np.uint16) * 257)
  np.testing.assert_array_equal(
      np.asarray(model(grey16, Image.fromarray(m8))),
      model(np.repeat(u8[..., 1:2], 3, axis=-1), m8))
  # A phone photo stored sideways with an EXIF orientation: upright, as its mask.
  sideways = tmp_path / "sideways.jpg"
  exif = Image.Exif()
  exif[0x0112] = 6  # Rotate 90 degrees clockwise to display.
  Image.fromarray(np.ascontiguousarray(np.rot90(u8, 1))).save(sideways, exif=exif, quality=95)
  out = model(Image.open(sideways), Image.fromarray(m8))
  assert out.size == (56, 40)
  # The JPEG round trip moves values a little: compare with the upright decode.
  upright = np.asarray(Image.open(sideways).transpose(Image.Transpose.ROTATE_270))
  np.testing.assert_array_equal(np.asarray(out), model(upright, m8))
  with pytest.raises(ValueError, match="EXIF orientation 6 and the other an array"):
    model(Image.open(sideways), m8)


def test_a_compositing_model_called_like_a_harmonizer_says_what_to_call(tmp_path):
  model = harmonax.load(recipe_checkpoint("deep_compositing", str(tmp_path / "dc")))
  with pytest.raises(ValueError, match=r"'deep_compositing' reads \('foreground', 'background', "
                     r"'mask'\), not a composite and its mask: use harmonax.compositing.compose"):
    model(np.zeros((32, 32, 3), np.uint8), np.zeros((32, 32), np.uint8))


def test_cards_of_trained_runs_licenses_and_metrics(tmp_path):
  config = conversion.default_config("harmonizer")
  (tmp_path / "h.pth").write_bytes(b"weights")
  card = model_card.make_card(config, source_files={"default": str(tmp_path / "h.pth")})
  assert card["license"] == "CC-BY-NC-SA-4.0"
  assert card["source"]["repository"] == "https://github.com/ZHKKKe/Harmonizer"

  workdir = tmp_path / "workdir"
  checkpoint.save_config(workdir, conversion.default_config("dovenet"))  # As the trainer does.
  assert model_card.read(workdir)["source"]["kind"] == "trained with harmonax"
  model_card.update_metrics(workdir, "iharmony4/all test 256",
                            {"PSNR": 34.123456, "MSE": 52.0, "step": 800})
  checkpoint.save_config(workdir, conversion.default_config("dovenet"))  # A resumed run.
  card = model_card.read(workdir)
  assert card["metrics"] == {"iharmony4/all test 256": {"PSNR": 34.1235, "MSE": 52.0,
                                                       "step": 800}}
  assert isinstance(card["metrics"]["iharmony4/all test 256"]["step"], int)
  assert model_card.read(tmp_path / "nowhere") is None


def test_every_family_that_imports_weights_names_its_source_and_license(tmp_path):
  from harmonax import models  # pylint: disable=g-import-not-at-top
  converting = [n for n in models.available() if hasattr(models.get_family(n), "convert_torch")]
  assert {"dih", "pctnet", "cdtnet"} <= set(converting)
  for name in converting:
    official = model_card.OFFICIAL.get(name, {})
    assert official.get("repository", "").startswith("https://github.com/"), name
    assert official.get("license"), name
  (tmp_path / "PCTNet_ViT.pth").write_bytes(b"weights")
  card = model_card.make_card(conversion.default_config("pctnet_vit"),
                              source_files={"default": str(tmp_path / "PCTNet_ViT.pth")})
  assert card["license"] == "MPL-2.0"
  assert card["source"]["repository"].endswith("rakutentech/PCT-Net-Image-Harmonization")


def test_import_harmonax_is_light():
  code = "import sys, harmonax; assert 'jax' not in sys.modules and 'flax' not in sys.modules"
  subprocess.run([sys.executable, "-c", code], check=True)
