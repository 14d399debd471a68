"""harmonize() on arrays, files and folders; image_io's mode handling and refusals."""

import gc
import io
import json
import os
import struct
import zlib

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from harmonax import checkpoint
from harmonax import inference as harmonize_lib
from harmonax import image_io
import fake_family


@pytest.fixture(scope="module")
def model():
  fake_family.register()
  config = fake_family.get_config()
  networks = fake_family.create_networks(config, nnx.Rngs(0))
  for net in networks.values():
    net.eval()
  return config, networks


def _pair(h, w, seed=0):
  rng = np.random.default_rng(seed)
  composite = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
  mask = np.zeros((h, w), np.uint8)
  mask[h // 4:h // 4 + max(h // 2, 1), w // 3:w // 3 + max(w // 2, 1)] = 255
  return composite, mask


@pytest.mark.parametrize("h,w", [(17, 23), (40, 9), (64, 64)])
def test_any_size_keeps_background_bytes(model, h, w):
  config, networks = model
  composite, mask = _pair(h, w)
  out = harmonize_lib.harmonize(networks, composite, mask, config=config)
  assert out.dtype == np.uint8 and out.shape == composite.shape
  bg = mask == 0
  np.testing.assert_array_equal(out[bg], composite[bg])
  assert np.any(out[~bg] != composite[~bg])  # The foreground was harmonized.
  # The foreground is the family's prediction, quantized.
  want = fake_family.predict(
      config, networks, {"composite": jnp.asarray(composite[None] / 255.0, jnp.float32),
                         "mask": jnp.asarray((mask > 0)[None, ..., None], jnp.float32)})
  want = np.round(np.clip(np.asarray(want[0]), 0, 1) * 255)
  np.testing.assert_allclose(out[~bg], want[~bg], atol=1)


def test_float_batch_and_mask_conventions(model):
  config, networks = model
  composite, mask = _pair(16, 20, seed=1)
  comp01 = composite.astype(np.float32) / 255.0
  batch = np.stack([comp01, comp01[::-1]])
  masks = np.stack([mask, mask[::-1]])
  out = harmonize_lib.harmonize(networks, batch, masks / 255.0, config=config)
  assert out.dtype == np.float32 and out.shape == batch.shape
  bg = masks == 0
  np.testing.assert_array_equal(out[bg], batch[bg])
  # 0/1 integer, 0/255 integer, bool and [H,W,1] masks mean the same thing.
  ref = harmonize_lib.harmonize(networks, composite, mask, config=config)
  for other in ((mask > 0).astype(np.uint8), mask > 0, mask[..., None],
                mask.astype(np.uint16) * 257, mask.astype(np.float32)):
    np.testing.assert_array_equal(
        harmonize_lib.harmonize(networks, composite, other, config=config), ref)


def test_networks_are_split_once_and_their_new_values_used():
  # harmonize splits a set of networks once (nnx.split walks every Variable:
  # 145 ms a call for HRNet18 + iDIH256), sees values set into them afterwards,
  # and forgets them once they are garbage collected.
  fake_family.register()
  config = fake_family.get_config()
  networks = fake_family.create_networks(config, nnx.Rngs(1))
  fresh = fake_family.create_networks(config, nnx.Rngs(1))
  for net in [*networks.values(), *fresh.values()]:
    net.eval()
  composite, mask = _pair(24, 32)
  first = harmonize_lib.harmonize(networks, composite, mask, config=config)
  key = tuple(sorted((name, id(net)) for name, net in networks.items()))
  split = harmonize_lib._SPLITS[key]
  np.testing.assert_array_equal(harmonize_lib.harmonize(networks, composite, mask,
                                                        config=config), first)
  assert harmonize_lib._SPLITS[key] is split  # Not split again.
  params = nnx.state(networks, nnx.Param)
  nnx.update(networks, jax.tree.map(lambda p: p * 0.5, params))
  changed = harmonize_lib.harmonize(networks, composite, mask, config=config)
  nnx.update(fresh, jax.tree.map(lambda p: p * 0.5, nnx.state(fresh, nnx.Param)))
  assert np.any(changed != first)
  np.testing.assert_array_equal(changed, harmonize_lib.harmonize(fresh, composite, mask,
                                                                 config=config))
  del networks, params, split
  gc.collect()
  assert key not in harmonize_lib._SPLITS


def test_networks_of_one_structure_share_a_compilation():
  traces = []

  def fn(networks, x):
    traces.append(x.shape)  # Runs when jit traces, not when it reuses a compilation.
    return networks["net"](x)

  run = harmonize_lib.jit_networks(fn)
  x = np.ones((1, 2), np.float32)
  for seed in range(3):  # Other objects, other values, the same structure.
    networks = {"net": nnx.Linear(2, 3, rngs=nnx.Rngs(seed))}
    np.testing.assert_allclose(run(networks, x), networks["net"](x), rtol=1e-6)
  assert len(traces) == 1, traces


def test_size_mismatch_is_an_error(model):
  config, networks = model
  composite, mask = _pair(16, 16)
  with pytest.raises(ValueError, match=r"mask size does not match the composite: expected "
                                       r"\[H,W\] or \[H,W,1\] with \(H, W\) = \(16, 16\), "
                                       r"got mask shape \(16, 15\)"):
    harmonize_lib.harmonize(networks, composite, mask[:, :-1], config=config)


def test_composites_outside_their_range_are_refused_not_clipped(model):
  # A 0..255 float image, a 16-bit image or NaNs used to come back as garbage.
  config, networks = model
  composite, mask = _pair(16, 20)
  ref = harmonize_lib.harmonize(networks, composite, mask, config=config)
  # Integers holding 0..255 are uint8 images; the output is uint8 too.
  np.testing.assert_array_equal(
      harmonize_lib.harmonize(networks, composite.astype(np.int64), mask, config=config), ref)
  bad = {
      "float values 0..255": composite.astype(np.float32),
      "uint16 values": composite.astype(np.uint16) * 257,
      "uint16 values 0..": (composite // 2).astype(np.uint16),  # Dark: still 16-bit.
      "2 NaN or infinite": np.where(np.arange(16 * 20 * 3).reshape(16, 20, 3) < 2, np.nan,
                                    composite / 255.0),
      "empty image": np.zeros((0, 20, 3), np.uint8),
      "unsupported dtype complex": composite.astype(np.complex64),
  }
  for message, image in bad.items():
    with pytest.raises(ValueError, match=message):
      harmonize_lib.harmonize(networks, image, mask, config=config)
  with pytest.raises(ValueError, match="mask: holds NaN"):
    harmonize_lib.harmonize(networks, composite, np.full((16, 20), np.nan), config=config)


def test_masks_are_thresholded_per_image_and_one_mask_serves_a_batch(model):
  config, networks = model
  composite, mask = _pair(16, 20, seed=1)
  batch = np.stack([composite, composite[::-1]])
  ref = harmonize_lib.harmonize(networks, batch, np.stack([mask, mask[::-1]]), config=config)
  # A 0/1 mask batched with a 0/255 one: each read by its own maximum.
  mixed = np.stack([(mask > 0).astype(np.uint8), mask[::-1]])
  np.testing.assert_array_equal(harmonize_lib.harmonize(networks, batch, mixed, config=config),
                                ref)
  # A colour mask array reads by its brightest channel, as colour mask files do.
  np.testing.assert_array_equal(
      harmonize_lib.harmonize(networks, composite, np.stack([mask, 0 * mask, 0 * mask], -1),
                              config=config),
      harmonize_lib.harmonize(networks, composite, mask, config=config))
  # One [H,W] mask for every image of the batch.
  same = np.stack([composite, composite])
  np.testing.assert_array_equal(
      harmonize_lib.harmonize(networks, same, mask, config=config),
      harmonize_lib.harmonize(networks, same, np.stack([mask, mask]), config=config))
  with pytest.raises(ValueError, match=r"and B = 2, got mask shape \(3, 16, 20\)"):
    harmonize_lib.harmonize(networks, batch, np.stack([mask] * 3), config=config)


# --- image_io -----------------------------------------------------------------


def _forged_png(path, width, height):
  """A tiny PNG file whose header claims width x height (a decompression bomb)."""
  buf = io.BytesIO()
  Image.new("L", (1, 1)).save(buf, "PNG")
  data = bytearray(buf.getvalue())
  ihdr = 8 + 8  # signature, then IHDR length + type.
  data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
  crc = zlib.crc32(bytes(data[12:ihdr + 13]))
  data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
  path.write_bytes(bytes(data))


def test_image_io_refuses_bad_files(tmp_path):
  garbage = tmp_path / "garbage.png"
  garbage.write_bytes(b"not an image at all")
  with pytest.raises(image_io.ImageError, match="garbage.png: not a readable image"):
    image_io.read_image(garbage)
  good = tmp_path / "good.png"
  Image.new("RGB", (32, 32), (10, 20, 30)).save(good)
  truncated = tmp_path / "truncated.png"
  truncated.write_bytes(good.read_bytes()[:60])
  with pytest.raises(image_io.ImageError, match="truncated.png"):
    image_io.read_image(truncated)
  with pytest.raises(image_io.ImageError, match="missing.png: no such file"):
    image_io.read_mask(tmp_path / "missing.png")
  # Over our limit but under Pillow's hard limit: refused from the header.
  bomb = tmp_path / "bomb.png"
  _forged_png(bomb, 12_000, 12_000)
  with pytest.raises(image_io.ImageError, match=r"bomb.png: 12000x12000 = 144,000,000 pixels"):
    image_io.read_mask(bomb)
  # Over Pillow's hard limit: Pillow refuses at open; still our error type.
  huge = tmp_path / "huge.png"
  _forged_png(huge, 50_000, 50_000)
  with pytest.raises(image_io.ImageError, match="huge.png: refused as a decompression bomb"):
    image_io.read_image(huge)
  with pytest.raises(image_io.ImageError, match="good.png: 32x32 = 1,024 pixels exceeds"):
    image_io.read_image(good, max_pixels=1000)


def test_read_image_modes_and_exif(tmp_path):
  rgba = np.zeros((6, 8, 4), np.uint8)
  rgba[..., 0], rgba[..., 3] = 200, 17
  Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
  got = image_io.read_image(tmp_path / "a.png")
  assert got.shape == (6, 8, 3) and got.dtype == np.uint8 and got[0, 0, 0] == 200
  grey16 = np.full((5, 7), 40000, np.uint16)
  Image.fromarray(grey16).save(tmp_path / "g16.png")
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "g16.png"), 40000 >> 8)
  # EXIF orientation 6 (rotate 90 degrees clockwise to display): 8x6 stored
  # becomes 6x8 displayed.
  img = Image.new("RGB", (8, 6), (255, 0, 0))
  exif = Image.Exif()
  exif[0x0112] = 6
  img.save(tmp_path / "rot.jpg", exif=exif.tobytes())
  assert image_io.read_image(tmp_path / "rot.jpg").shape == (8, 6, 3)


def test_read_mask_modes(tmp_path):
  fg = np.zeros((6, 8), bool)
  fg[1:4, 2:7] = True
  cases = {
      "l8.png": Image.fromarray(np.where(fg, 200, 100).astype(np.uint8)),
      "l16.png": Image.fromarray(np.where(fg, 50000, 30000).astype(np.uint16)),
      "one.png": Image.fromarray(fg),
      # 0/1 label masks (segmentation tools) used to read as empty.
      "labels8.png": Image.fromarray(fg.astype(np.uint8)),
      "labels16.png": Image.fromarray(fg.astype(np.uint16)),
      "red.png": Image.fromarray(np.stack([fg * 255, 0 * fg, 0 * fg], -1).astype(np.uint8)),
      "alpha.png": Image.fromarray(
          np.concatenate([np.full((6, 8, 3), 90, np.uint8), (fg * 255).astype(np.uint8)[..., None]],
                         -1), "RGBA"),
  }
  pal = Image.fromarray(fg.astype(np.uint8), "P")
  pal.putpalette([0, 0, 0, 255, 255, 255] + [0] * 762)
  cases["palette.png"] = pal
  for name, img in cases.items():
    img.save(tmp_path / name)
    got = image_io.read_mask(tmp_path / name)
    assert got.shape == (6, 8, 1) and got.dtype == np.float32, name
    np.testing.assert_array_equal(got[..., 0], fg.astype(np.float32), err_msg=name)


def test_float_images_in_zero_one_are_read_as_such(tmp_path):
  grey = np.linspace(0, 1, 24, dtype=np.float32).reshape(4, 6)
  Image.fromarray(grey, "F").save(tmp_path / "f.tif")  # It read as black.
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "f.tif")[..., 0],
                                np.round(grey * 255).astype(np.uint8))


def test_label_masks_are_read_only_from_lossless_files(tmp_path):
  # A JPEG of a black mask with codec noise of 1 is not a 0/1 label mask: its
  # "foreground" would be harmonized and the background lost. (exif_transpose's
  # copy had no format, so every file read as lossless.)
  noise = np.zeros((32, 32), np.uint8)
  noise[4:14, 4:14] = 1
  Image.fromarray(noise).save(tmp_path / "noise.jpg", quality=100)
  Image.fromarray(noise).save(tmp_path / "labels.png")
  assert np.asarray(Image.open(tmp_path / "noise.jpg")).max() == 1
  assert image_io.read_mask(tmp_path / "noise.jpg").sum() == 0
  assert image_io.read_matte(tmp_path / "noise.jpg").max() < 0.01
  assert image_io.read_mask(tmp_path / "labels.png").sum() == 100
  assert image_io.read_matte(tmp_path / "labels.png").max() == 1.0


def test_write_image_round_trip_and_errors(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (5, 9, 3), dtype=np.uint8)
  image_io.write_image(tmp_path / "sub" / "x.png", image)
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "sub" / "x.png"), image)
  assert os.listdir(tmp_path / "sub") == ["x.png"]  # No temporary file left.
  with pytest.raises(ValueError, match="unknown image suffix"):
    image_io.write_image(tmp_path / "x.txt", image)
  with pytest.raises(ValueError, match=r"expected an \[H,W,3\] image"):
    image_io.write_image(tmp_path / "y.png", image[..., 0])


def test_written_images_follow_the_umask(tmp_path):
  image = np.zeros((4, 4, 3), np.uint8)
  previous = os.umask(0o027)
  try:
    image_io.write_image(tmp_path / "a.png", image)
  finally:
    os.umask(previous)
  assert os.stat(tmp_path / "a.png").st_mode & 0o777 == 0o640


# --- files, folders and the command line --------------------------------------


def _write_pair(directory, stem, h, w, seed, mask_suffix=".png"):
  composite, mask = _pair(h, w, seed)
  (directory / "comp").mkdir(exist_ok=True)
  (directory / "mask").mkdir(exist_ok=True)
  Image.fromarray(composite).save(directory / "comp" / f"{stem}.png")
  Image.fromarray(mask).save(directory / "mask" / f"{stem}{mask_suffix}")
  return composite, mask


def test_folder_run_skips_and_reports_bad_files(model, tmp_path):
  config, networks = model
  good = {"a": _write_pair(tmp_path, "a", 20, 30, 0),
          "b": _write_pair(tmp_path, "b", 33, 17, 1, mask_suffix=".bmp")}
  # iHarmony4 naming: composite <real>_<mask>_<k>, mask <real>_<mask>.
  comp, mask = _pair(24, 24, 2)
  Image.fromarray(comp).save(tmp_path / "comp" / "c0001_1_3.jpg", quality=100)
  Image.fromarray(mask).save(tmp_path / "mask" / "c0001_1.png")
  (tmp_path / "comp" / "corrupt.png").write_bytes(b"\x89PNG broken")
  (tmp_path / "mask" / "corrupt.png").write_bytes((tmp_path / "mask" / "a.png").read_bytes())
  _write_pair(tmp_path, "nomask", 8, 8, 3)
  os.remove(tmp_path / "mask" / "nomask.png")
  _write_pair(tmp_path, "mismatch", 16, 16, 4)
  Image.fromarray(_pair(16, 12)[1]).save(tmp_path / "mask" / "mismatch.png")
  _forged_png(tmp_path / "comp" / "bomb.png", 20_000, 20_000)
  (tmp_path / "mask" / "bomb.png").write_bytes((tmp_path / "mask" / "a.png").read_bytes())

  written, skipped = harmonize_lib.harmonize_folder(
      config, networks, str(tmp_path / "comp"), str(tmp_path / "mask"), str(tmp_path / "out"))
  assert sorted(os.path.basename(p) for p in written) == ["a.png", "b.png", "c0001_1_3.png"]
  reasons = {os.path.basename(p): r for p, r in skipped}
  assert set(reasons) == {"corrupt.png", "nomask.png", "mismatch.png", "bomb.png"}
  assert "decompression bomb" in reasons["bomb.png"] and "400000000 pixels" in reasons["bomb.png"]
  assert "not a readable image" in reasons["corrupt.png"]
  assert "no mask named nomask" in reasons["nomask.png"]
  assert "mask is 12x16 but composite" in reasons["mismatch.png"]
  for stem, (composite, mask) in good.items():
    out = image_io.read_image(tmp_path / "out" / f"{stem}.png")
    np.testing.assert_array_equal(out[mask == 0], composite[mask == 0])


def test_folder_runs_never_overwrite_inputs_or_each_other(model, tmp_path):
  config, networks = model
  _write_pair(tmp_path, "a", 20, 30, 0)
  _write_pair(tmp_path, "b", 20, 30, 1)
  # a.jpg would also be written to a.png: both are skipped, named.
  Image.fromarray(_pair(20, 30, 2)[0]).save(tmp_path / "comp" / "a.jpg", quality=95)
  written, skipped = harmonize_lib.harmonize_folder(
      config, networks, str(tmp_path / "comp"), str(tmp_path / "mask"), str(tmp_path / "out"))
  assert [os.path.basename(p) for p in written] == ["b.png"]
  reasons = {os.path.basename(p): r for p, r in skipped}
  assert reasons == {n: "a.jpg and a.png would both be written to a.png; rename one"
                     for n in ("a.jpg", "a.png")}
  before = (tmp_path / "comp" / "b.png").read_bytes()
  for folder, what in (("comp", "composite"), ("mask", "mask")):
    with pytest.raises(ValueError, match=f"is the {what} folder: its files would be overwritten"):
      harmonize_lib.harmonize_folder(config, networks, str(tmp_path / "comp"),
                                     str(tmp_path / "mask"), str(tmp_path / folder))
  assert (tmp_path / "comp" / "b.png").read_bytes() == before
  (tmp_path / "empty").mkdir()
  with pytest.raises(ValueError, match="empty holds no images"):
    harmonize_lib.harmonize_folder(config, networks, str(tmp_path / "empty"),
                                   str(tmp_path / "mask"), str(tmp_path / "out2"))
  # One mask file for every composite of the folder.
  written, skipped = harmonize_lib.harmonize_folder(
      config, networks, str(tmp_path / "comp"), str(tmp_path / "mask" / "b.png"),
      str(tmp_path / "one"))
  assert [os.path.basename(p) for p in written] == ["b.png"] and len(skipped) == 2
  np.testing.assert_array_equal(image_io.read_image(tmp_path / "one" / "b.png"),
                                image_io.read_image(tmp_path / "out" / "b.png"))
  # A file run never writes over its own composite or mask.
  for victim in ("comp", "mask"):
    before = (tmp_path / victim / "b.png").read_bytes()
    with pytest.raises(ValueError, match=f"is the {'composite' if victim == 'comp' else 'mask'} "
                       "file: it would be overwritten"):
      harmonize_lib.harmonize_file(config, networks, str(tmp_path / "comp" / "b.png"),
                                   str(tmp_path / "mask" / "b.png"),
                                   str(tmp_path / victim / "b.png"))
    assert (tmp_path / victim / "b.png").read_bytes() == before
  with pytest.raises(LookupError, match=r"^no mask named d\.\*$"):
    harmonize_lib.find_mask("d", {})


def test_output_paths_that_cannot_be_written_are_named(tmp_path):
  (tmp_path / "file").write_text("")
  for path, folder in ((tmp_path / "file" / "x.png", False), (tmp_path / "file", True),
                       (tmp_path / "file" / "sub" / "x.png", False)):
    with pytest.raises(image_io.OutputPathError, match=f"{tmp_path / 'file'} is a file"):
      image_io.check_output_path(path, folder=folder)
  with pytest.raises(image_io.OutputPathError, match="it is a folder"):
    image_io.check_output_path(tmp_path, folder=False)
  image_io.check_output_path(tmp_path / "new" / "deeper" / "x.png")  # Creatable: fine.
  assert not (tmp_path / "new").exists()
  with pytest.raises(image_io.OutputPathError, match="cannot create the output folder"):
    image_io.write_image(tmp_path / "file" / "x.png", np.zeros((2, 2, 3), np.uint8))


def test_command_line_single_file_and_folder(model, tmp_path):
  config, networks = model
  checkpoint.save_networks(tmp_path / "ckpt", config, networks)
  composite, mask = _write_pair(tmp_path, "x", 21, 19, 5)
  ckpt = f"--checkpoint={tmp_path / 'ckpt'}"
  result = fake_family.run_cli("harmonize", [
      ckpt, f"--composite={tmp_path / 'comp' / 'x.png'}", f"--mask={tmp_path / 'mask' / 'x.png'}",
      f"--output={tmp_path / 'x_out.png'}"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "demo model" not in result.stderr
  out = image_io.read_image(tmp_path / "x_out.png")
  np.testing.assert_array_equal(
      out, harmonize_lib.harmonize(networks, composite, mask, config=config))
  (tmp_path / "comp" / "bad.png").write_bytes(b"junk")
  result = fake_family.run_cli("harmonize", [
      ckpt, f"--composite={tmp_path / 'comp'}", f"--mask={tmp_path / 'mask'}",
      f"--output={tmp_path / 'out'}"])
  assert result.returncode == 1, result.stderr[-3000:]  # One file skipped.
  assert "skipped" in result.stdout and "bad.png" in result.stdout
  assert os.listdir(tmp_path / "out") == ["x.png"]
  # One image into an existing folder: <folder>/<stem>.png; a file in the
  # output's path: one line, before the model loads.
  os.remove(tmp_path / "out" / "x.png")
  (tmp_path / "file").write_text("")
  for output, code in ((tmp_path / "out", 0), (tmp_path / "file" / "x.png", 1)):
    result = fake_family.run_cli("harmonize", [
        ckpt, f"--composite={tmp_path / 'comp' / 'x.png'}",
        f"--mask={tmp_path / 'mask' / 'x.png'}", f"--output={output}"])
    assert result.returncode == code, result.stderr[-3000:]
  assert os.listdir(tmp_path / "out") == ["x.png"]
  assert f"error: cannot write {tmp_path / 'file' / 'x.png'}: {tmp_path / 'file'} is a file" in (
      result.stderr)
  assert "Traceback" not in result.stderr and "loading" not in result.stderr


def test_demo_models_are_named_as_such(model, tmp_path):
  config, networks = model
  assert harmonize_lib.demo_warning(config) is None
  demo = config.copy_and_resolve_references()
  demo.demo_model = True  # What a runlocal or demo recipe records.
  assert "demo model" in harmonize_lib.demo_warning(demo)
  checkpoint.save_networks(tmp_path / "demo", demo, networks)
  _write_pair(tmp_path, "x", 8, 8, 1)
  result = fake_family.run_cli("harmonize", [
      f"--checkpoint={tmp_path / 'demo'}", f"--composite={tmp_path / 'comp' / 'x.png'}",
      f"--mask={tmp_path / 'mask' / 'x.png'}", f"--output={tmp_path / 'x_out.png'}"])
  assert result.returncode == 0, result.stderr[-3000:]
  assert "warning: this is a demo model (fake" in result.stderr


def test_all_background_or_all_foreground_masks_warn(model, tmp_path, caplog):
  config, networks = model
  composite, _ = _write_pair(tmp_path, "x", 12, 10, 6)
  for name, value in (("black", 0), ("white", 255)):
    Image.fromarray(np.full((12, 10), value, np.uint8)).save(tmp_path / f"{name}.png")
    with caplog.at_level("WARNING"):
      harmonize_lib.harmonize_file(config, networks, str(tmp_path / "comp" / "x.png"),
                                   str(tmp_path / f"{name}.png"), str(tmp_path / "o.png"))
  assert f"{tmp_path / 'black.png'}: the mask is all background" in caplog.text
  assert f"{tmp_path / 'white.png'}: the mask is all foreground" in caplog.text


def test_command_line_bad_file_and_video_dispatch(model, tmp_path):
  config, networks = model
  checkpoint.save_networks(tmp_path / "ckpt", config, networks)
  _write_pair(tmp_path, "x", 21, 19, 5)
  (tmp_path / "comp" / "bad.png").write_bytes(b"junk")
  ckpt = f"--checkpoint={tmp_path / 'ckpt'}"
  result = fake_family.run_cli("harmonize", [
      ckpt, f"--composite={tmp_path / 'comp' / 'bad.png'}",
      f"--mask={tmp_path / 'mask' / 'x.png'}", f"--output={tmp_path / 'bad_out.png'}"])
  assert result.returncode == 1 and "not a readable image" in result.stderr
  assert not (tmp_path / "bad_out.png").exists()
  # --frames/--video go to harmonax.video (replaced here by a recorder).
  prelude = ("import types, json, harmonax\n"
             "video = types.ModuleType('harmonax.video')\n"
             "def _record(cfg, nets, **kw):\n"
             "  print('VIDEO', json.dumps([cfg.model.name, sorted(nets), kw]))\n"
             "  return 0\n"
             "video.harmonize_video = _record\n"
             "sys.modules['harmonax.video'] = video\n"
             "harmonax.video = video\n")
  result = fake_family.run_cli("harmonize", [
      ckpt, f"--frames={tmp_path / 'frames'}", f"--mask={tmp_path / 'masks'}",
      f"--output={tmp_path / 'out'}"], prelude=prelude)
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("VIDEO "))
  name, nets, kwargs = json.loads(line[len("VIDEO "):])
  assert name == "fake" and nets == ["generator"]
  assert kwargs == {"video": None, "frames": str(tmp_path / "frames"),
                    "mask": str(tmp_path / "masks"), "output": str(tmp_path / "out"),
                    "max_pixels": image_io.DEFAULT_MAX_PIXELS}
