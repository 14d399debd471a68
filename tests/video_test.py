"""harmonax.video: argument EMA, frame folders, masks, video files."""

import importlib.util
import os
import warnings

from flax import nnx
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from configs import harmonizer as harmonizer_config
from export_test import recipe_checkpoint
from harmonax import checkpoint
from harmonax import filters
from harmonax import inference
from harmonax import video
from harmonax.models import harmonizer
import recipes


def test_ema_on_hand_values_averages_before_clamping():
  # fps 4: weight 0.75 on the previous average.
  out = video.smooth_arguments([np.zeros(6), np.ones(6), np.ones(6)], fps=4)
  np.testing.assert_allclose([o[0] for o in out], [0.0, 0.25, 0.4375])
  out = video.smooth_arguments([np.full(6, 3.0), np.zeros(6), np.zeros(6)], fps=4)
  # Unclamped averages 3, 2.25, 1.6875 -> all clamp to 1.
  np.testing.assert_allclose([o[0] for o in out], [1.0, 1.0, 1.0])
  assert video.ema_weight(25) == pytest.approx(0.96)
  with pytest.raises(ValueError, match="fps must be >= 1"):
    video.ema_weight(0.5)


@pytest.fixture(scope="module")
def setup():
  config = recipes.official_network(harmonizer_config.get_config("runlocal"))
  networks = harmonizer.create_networks(config, nnx.Rngs(0))
  networks["harmonizer"].eval()
  return config, networks


def _write_frames(directory, n=3, size=(48, 64), seed=0):
  os.makedirs(directory, exist_ok=True)
  rng = np.random.default_rng(seed)
  frames = []
  for i in range(n):
    # Each frame its own color cast, so that per-frame arguments differ.
    cast = np.asarray([[0.3, 0.6, 1.0], [1.0, 0.5, 0.2], [0.6, 1.0, 0.4], [1.0, 1.0, 1.0]])[i % 4]
    frame = (rng.integers(30, 220, (*size, 3)) * cast).astype(np.uint8)
    Image.fromarray(frame).save(os.path.join(directory, f"f{i:03d}.png"))
    frames.append(frame)
  return frames


def _mask(size=(48, 64)):
  mask = np.zeros(size, np.uint8)
  mask[10:30, 20:50] = 255
  return mask


def _color_arguments(net, comp, mask):
  """Stand-in regressor: arguments from the frame's mean color (a randomly
  initialized backbone gives nearly the same arguments for every frame)."""
  del net, mask
  mean = jnp.mean(comp, axis=(1, 2))  # [B, 3]
  return jnp.concatenate([mean, -mean], axis=-1) * 4 - 1.5


def test_frame_folder_with_one_mask_applies_smoothed_arguments(setup, tmp_path, monkeypatch):
  config, networks = setup
  _, apply_fn = video._jitted()  # pylint: disable=protected-access
  monkeypatch.setattr(video, "_jitted", lambda: (_color_arguments, apply_fn))
  frames = _write_frames(tmp_path / "frames")
  Image.fromarray(_mask()).save(tmp_path / "mask.png")
  status = video.harmonize_video(config, networks, frames=str(tmp_path / "frames"),
                                 mask=str(tmp_path / "mask.png"),
                                 output=str(tmp_path / "out"), fps=2)
  assert status == 0
  assert sorted(os.listdir(tmp_path / "out")) == ["f000.png", "f001.png", "f002.png"]

  m = jnp.asarray(_mask(), jnp.float32)[None, ..., None] / 255
  raws = [np.asarray(_color_arguments(None, jnp.asarray(f, jnp.float32)[None] / 255, m))[0]
          for f in frames]
  smoothed = video.smooth_arguments(raws, fps=2)
  assert np.abs(smoothed[2] - np.clip(raws[2], -1, 1)).max() > 1e-2  # EMA matters.
  background = _mask() == 0
  for frame, args, name in zip(frames, smoothed, ["f000", "f001", "f002"]):
    out = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
    expected, _ = filters.apply_filters(jnp.asarray(frame, jnp.float32) / 255, m[0], args)
    expected = np.round(np.clip(np.asarray(expected), 0, 1) * 255)
    np.testing.assert_allclose(out, expected, atol=1)
    np.testing.assert_array_equal(out[background], frame[background])
    assert np.abs(out.astype(int) - frame).max() > 5


def test_mask_folder_must_match_frame_count_and_model_must_harmonize(setup, tmp_path):
  config, networks = setup
  _write_frames(tmp_path / "frames", n=3)
  os.makedirs(tmp_path / "masks")
  for i in range(2):
    Image.fromarray(_mask()).save(tmp_path / "masks" / f"m{i}.png")
  with pytest.raises(ValueError, match="2 masks for 3 frames"):
    video.harmonize_video(config, networks, frames=str(tmp_path / "frames"),
                          mask=str(tmp_path / "masks"), output=str(tmp_path / "out"))
  with pytest.raises(ValueError, match="exactly one of video"):
    video.harmonize_video(config, networks, mask=str(tmp_path / "masks"),
                          output=str(tmp_path / "out"))
  other = harmonizer_config.get_config("runlocal")
  other.model.name = "deep_compositing"
  with pytest.raises(ValueError, match="needs a model that harmonizes a composite with its "
                     r"mask; 'deep_compositing' reads \('foreground', 'background', 'mask'\)"):
    video.harmonize_video(other, networks, frames=str(tmp_path / "frames"),
                          mask=str(tmp_path / "masks"), output=str(tmp_path / "out"))


def test_other_models_harmonize_each_frame_on_its_own(tmp_path, capsys):
  directory = recipe_checkpoint("pctnet_cnn", str(tmp_path / "pctnet"))
  config, networks = checkpoint.load_networks(directory)
  frames = _write_frames(tmp_path / "frames", n=3)
  os.makedirs(tmp_path / "masks")
  masks = []
  for i in range(3):
    mask = np.roll(_mask(), 6 * i, axis=1)  # The object moves.
    Image.fromarray(mask).save(tmp_path / "masks" / f"m{i}.png")
    masks.append(mask)
  assert video.harmonize_video(config, networks, frames=str(tmp_path / "frames"),
                               mask=str(tmp_path / "masks"), output=str(tmp_path / "out")) == 0
  assert "Wrote 3 frames" in capsys.readouterr().out
  for i, (frame, mask) in enumerate(zip(frames, masks)):
    out = np.asarray(Image.open(tmp_path / "out" / f"f{i:03d}.png"))
    np.testing.assert_array_equal(out, inference.harmonize(networks, frame, mask, config=config))
    assert np.abs(out.astype(int) - frame).max() > 5  # The foreground changed.
    np.testing.assert_array_equal(out[mask == 0], frame[mask == 0])


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is None,
                    reason="video files need imageio-ffmpeg")
def test_ffmpeg_processes_do_not_warn_of_fork(recwarn):
  # JAX warns on every fork ("os.fork() was called ... deadlock"); imageio's
  # ffmpeg processes fork and exec at once, so video files silence exactly those.
  video._imageio()  # pylint: disable=protected-access
  message = "os.fork() was called. os.fork() is incompatible with multithreaded code"
  warnings.warn_explicit(message, RuntimeWarning, "subprocess.py", 1883, module="subprocess")
  warnings.warn_explicit(message, RuntimeWarning, "mine.py", 1, module="mine")
  assert [w.filename for w in recwarn] == ["mine.py"]


@pytest.mark.skipif(importlib.util.find_spec("imageio_ffmpeg") is None,
                    reason="video files need imageio-ffmpeg")
def test_video_file_in_and_out_with_per_frame_masks(setup, tmp_path):
  imageio = video._imageio()  # pylint: disable=protected-access
  config, networks = setup
  frames = _write_frames(tmp_path / "frames", n=4)
  with imageio.get_writer(tmp_path / "in.mp4", "ffmpeg", fps=10, macro_block_size=1) as w:
    for f in frames:
      w.append_data(f)
  os.makedirs(tmp_path / "masks")
  for i in range(4):
    Image.fromarray(_mask()).save(tmp_path / "masks" / f"m{i}.png")
  assert video.harmonize_video(config, networks, video=str(tmp_path / "in.mp4"),
                               mask=str(tmp_path / "masks"),
                               output=str(tmp_path / "out.mp4")) == 0
  reader = imageio.get_reader(tmp_path / "out.mp4", "ffmpeg")
  assert reader.get_meta_data()["fps"] == pytest.approx(10)
  out = [np.asarray(f) for f in reader]
  reader.close()
  assert len(out) == 4 and out[0].shape == (48, 64, 3)
  with imageio.get_writer(tmp_path / "masks.mp4", "ffmpeg", fps=10, macro_block_size=1) as w:
    for _ in range(3):
      w.append_data(np.repeat(_mask()[..., None], 3, axis=-1))
  with pytest.raises(ValueError, match="masks.mp4 has 3 frames for 4 frames of the clip"):
    video.harmonize_video(config, networks, video=str(tmp_path / "in.mp4"),
                          mask=str(tmp_path / "masks.mp4"), output=str(tmp_path / "o.mp4"))
  # The input video as the output: refused (it was truncated while being read).
  before = (tmp_path / "in.mp4").read_bytes()
  with pytest.raises(ValueError, match="is the video file: it would be overwritten"):
    video.harmonize_video(config, networks, video=str(tmp_path / "in.mp4"),
                          mask=str(tmp_path / "masks"), output=str(tmp_path / "in.mp4"))
  # A run that fails keeps the previous output whole, and leaves no partial file.
  written = (tmp_path / "out.mp4").read_bytes()
  _write_frames(tmp_path / "odd", n=2, size=(47, 64))
  Image.fromarray(np.zeros((47, 64), np.uint8) + 255).save(tmp_path / "odd_mask.png")
  with pytest.raises(ValueError, match="64x47 \\(WxH\\) cannot be written .* even sizes"):
    video.harmonize_video(config, networks, frames=str(tmp_path / "odd"),
                          mask=str(tmp_path / "odd_mask.png"), output=str(tmp_path / "out.mp4"))
  assert (tmp_path / "out.mp4").read_bytes() == written
  assert (tmp_path / "in.mp4").read_bytes() == before
  assert not [n for n in os.listdir(tmp_path) if ".partial" in n]
  (tmp_path / "junk.mp4").write_bytes(b"not a video")
  with pytest.raises(ValueError, match="cannot read the video .*junk.mp4"):
    video.harmonize_video(config, networks, video=str(tmp_path / "junk.mp4"),
                          mask=str(tmp_path / "odd_mask.png"), output=str(tmp_path / "j"))


def test_masks_read_as_mask_files_and_inputs_are_never_overwritten(setup, tmp_path):
  config, networks = setup
  _write_frames(tmp_path / "frames", n=2)
  fg = _mask() > 0
  masks = {
      "gray.png": Image.fromarray(_mask()),
      # These read as empty through convert("L") / 255: the video came back unchanged.
      "labels.png": Image.fromarray(fg.astype(np.uint8)),
      "red.png": Image.fromarray(np.stack([_mask(), 0 * _mask(), 0 * _mask()], -1)),
  }
  outputs = {}
  for name, img in masks.items():
    img.save(tmp_path / name)
    assert video.harmonize_video(config, networks, frames=str(tmp_path / "frames"),
                                 mask=str(tmp_path / name), output=str(tmp_path / name[:-4])) == 0
    outputs[name] = [np.asarray(Image.open(tmp_path / name[:-4] / f"f00{i}.png"))
                     for i in range(2)]
  for name in ("labels.png", "red.png"):
    np.testing.assert_array_equal(outputs[name], outputs["gray.png"], err_msg=name)
  before = (tmp_path / "frames" / "f000.png").read_bytes()
  with pytest.raises(ValueError, match="is the frame folder: its files would be overwritten"):
    video.harmonize_video(config, networks, frames=str(tmp_path / "frames"),
                          mask=str(tmp_path / "gray.png"), output=str(tmp_path / "frames"))
  assert (tmp_path / "frames" / "f000.png").read_bytes() == before
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="is a file, not a folder"):
    video.harmonize_video(config, networks, frames=str(tmp_path / "frames"),
                          mask=str(tmp_path / "gray.png"), output=str(tmp_path / "file" / "o"))


def test_max_pixels_applies_to_frames_and_masks(setup, tmp_path):
  config, networks = setup
  _write_frames(tmp_path / "frames", n=2)  # 64x48 = 3072 pixels.
  Image.fromarray(_mask()).save(tmp_path / "mask.png")
  for mask, limit in (("mask.png", 1000), ("masks", 1000)):
    if mask == "masks":  # Masks per frame: read as the frames go; the frame fails first.
      os.makedirs(tmp_path / "masks")
      for i in range(2):
        Image.fromarray(_mask()).save(tmp_path / "masks" / f"m{i}.png")
    with pytest.raises(ValueError, match="3,072 pixels exceeds the limit of 1,000"):
      video.harmonize_video(config, networks, frames=str(tmp_path / "frames"),
                            mask=str(tmp_path / mask), output=str(tmp_path / "o"),
                            max_pixels=limit)


def test_masks_running_out_before_the_frames_is_an_error(setup):
  config, networks = setup
  frames = [np.zeros((48, 64, 3), np.uint8)] * 3
  masks = [np.ones((48, 64, 1), np.float32)] * 2
  # zip() used to end the video after the second frame without a word.
  with pytest.raises(ValueError, match="the masks ran out after 2 frames"):
    list(video.harmonize_each_frame(config, networks, frames, masks))
