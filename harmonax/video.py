r"""Video harmonization: Harmonizer with arguments smoothed over time, any other
harmonization model frame by frame.

  python -m harmonax.harmonize --checkpoint=/tmp/harmonizer_official \
      --video=clip.mp4 --mask=masks/ --output=harmonized.mp4
  python -m harmonax.harmonize --checkpoint=/tmp/pctnet_vit_official \
      --frames=frames/ --mask=mask.png --output=out_frames/

Harmonizer, as the official video demo: each frame's filter arguments are
predicted, then smoothed with an exponential moving average of weight
1 - 1/fps (the first frame starts the average), clamped to [-1, 1], and the
filters are applied to the full-resolution frame. Masks are used soft
(0..255 -> [0, 1]) as the demo does, read as mask files are (colour masks by
their brightest channel, transparency by its alpha, 0/1 label PNGs as 0/1:
`image_io.read_matte`); background pixels (mask 0) stay exactly as in the
input.

Other models that harmonize a composite with its mask (iDIH, iS2AM, HRNet,
DoveNet, BargainNet, PCT-Net, CDTNet) have no video mode in their papers or
code: each frame is `inference.harmonize`d on its own (mask binarized at half
its range, background bytes kept), with nothing carried from frame to frame.

Inputs: a video file or a folder of frames (sorted by name); masks as a folder
(the i-th mask in name order for the i-th frame), a single image for every
frame, or a mask video. The output is a video file when it ends in a video
suffix, else a folder of PNG frames. Frame folders need only Pillow; video
files need imageio with the imageio-ffmpeg plugin (`pip install imageio-ffmpeg`).
"""

from collections.abc import Iterable, Iterator
import functools
import itertools
import os
import warnings

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image

from data_builders import image_modes

from harmonax import filters
from harmonax import image_io
from harmonax import inference
from harmonax import metric_writers

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
DEFAULT_FPS = 25.0  # The official demo's.


def ema_weight(fps: float) -> float:
  """The moving-average weight of the previous average: 1 - 1/fps."""
  if fps < 1:
    raise ValueError(f"fps must be >= 1, got {fps}")
  return 1.0 - 1.0 / fps


class ArgumentEma:
  """Exponential moving average of per-frame raw (unclamped) arguments.

  ema_0 = raw_0; ema_t = w * ema_{t-1} + (1 - w) * raw_t with w = 1 - 1/fps;
  `update` returns clip(ema_t, -1, 1) (the demo averages before clamping).
  """

  def __init__(self, fps: float):
    self.weight = ema_weight(fps)
    self.value = None

  def update(self, raw: np.ndarray) -> np.ndarray:
    raw = np.asarray(raw, np.float64)
    self.value = raw if self.value is None else (
        self.weight * self.value + (1 - self.weight) * raw)
    return np.clip(self.value, -1.0, 1.0).astype(np.float32)


def smooth_arguments(raw: Iterable[np.ndarray], fps: float) -> list[np.ndarray]:
  """The clamped EMA (see ArgumentEma) of a sequence of raw arguments [6]."""
  ema = ArgumentEma(fps)
  return [ema.update(args) for args in raw]


@functools.cache
def _jitted():
  # The networks split once (inference.jit_networks), not by nnx.jit at every frame.
  raw = inference.jit_networks(
      lambda networks, comp, mask: networks["harmonizer"].raw_arguments(comp, mask))
  apply = jax.jit(lambda comp, mask, args: filters.apply_filters(comp, mask, args)[0])
  return raw, apply


def _is_video(path: str | None) -> bool:
  return bool(path) and os.path.splitext(path)[1].lower() in VIDEO_SUFFIXES


def _imageio():
  try:
    import imageio.v2 as imageio  # pylint: disable=g-import-not-at-top
    import imageio_ffmpeg  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError("Video files need imageio and imageio-ffmpeg: pip install "
                      "imageio imageio-ffmpeg (frame folders work without them)") from e
  # ffmpeg runs as a subprocess, a fork followed at once by exec, which the
  # warning JAX gives on every fork ("os.fork() was called ... deadlock") is
  # not about: only subprocess's forks are silenced.
  warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called",
                          category=RuntimeWarning, module="subprocess")
  return imageio


def _frame_files(directory: str) -> list[str]:
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"Not a folder of frames: {directory}")
  names = sorted(f for f in os.listdir(directory)
                 if os.path.splitext(f)[1].lower() in image_io.IMAGE_SUFFIXES
                 and not f.startswith("."))
  if not names:
    raise ValueError(f"No image files in {directory}")
  return [os.path.join(directory, n) for n in names]


def _read_video(path: str) -> tuple[Iterator[np.ndarray], float, int | None]:
  """(frames uint8 [H,W,3], fps, frame count or None)."""
  if not os.path.exists(path):
    raise FileNotFoundError(f"Video file not found: {path}")
  try:
    reader = _imageio().get_reader(path, "ffmpeg")
    meta = reader.get_meta_data()
    count = reader.count_frames() if hasattr(reader, "count_frames") else None
  except (OSError, RuntimeError, ValueError) as e:  # Not a video, or a damaged one.
    raise ValueError(f"cannot read the video {path}: {' '.join(str(e).split())[:300]}"
                     ) from None

  def frames():
    try:
      for frame in reader:
        yield np.asarray(frame)[..., :3]
    finally:
      reader.close()
  return frames(), float(meta.get("fps") or DEFAULT_FPS), count


def _frame_matte(frame: np.ndarray) -> np.ndarray:
  """float32 [H,W,1] in [0, 1] of a mask video's frame, read as mask files are."""
  return image_modes.mask_to_alpha(Image.fromarray(np.asarray(frame)))


def _limited(frames: Iterator[np.ndarray], path: str, max_pixels: int | None
             ) -> Iterator[np.ndarray]:
  """The frames of the video `path`, refusing frames of more than max_pixels."""
  for frame in frames:
    image_io.check_pixels(path, frame.shape[1], frame.shape[0], max_pixels)
    yield frame


def _masks(mask: str, num_frames: int | None, max_pixels: int | None = None
           ) -> Iterator[np.ndarray]:
  """Per-frame soft masks from a folder, one image, or a mask video, read as
  `harmonize` reads mask files (image_io.read_matte: colour, alpha, 16-bit,
  0/1 labels, EXIF orientation), soft values kept."""
  if os.path.isdir(mask):
    files = _frame_files(mask)
    if num_frames is not None and len(files) != num_frames:
      raise ValueError(f"{mask} holds {len(files)} masks for {num_frames} frames; "
                       "give one mask per frame, or a single mask file")
    return (image_io.read_matte(f, max_pixels=max_pixels) for f in files)
  if _is_video(mask):
    frames, _, count = _read_video(mask)
    if num_frames is not None and count is not None and count != num_frames:
      raise ValueError(f"the mask video {mask} has {count} frames for {num_frames} frames "
                       "of the clip; give one mask per frame, or a single mask file")
    return (_frame_matte(f) for f in frames)
  if not os.path.exists(mask):
    raise FileNotFoundError(f"Mask not found: {mask}")
  # The same mask for every frame.
  return itertools.repeat(image_io.read_matte(mask, max_pixels=max_pixels))


def _pairs(frames: Iterable[np.ndarray], masks: Iterable[np.ndarray]
           ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
  """(frame, mask) pairs; masks running out before the frames is an error
  (zip would end the video there without a word)."""
  masks = iter(masks)
  for i, frame in enumerate(frames):
    mask = next(masks, None)
    if mask is None:
      raise ValueError(f"the masks ran out after {i} frames; give one mask per frame, or "
                       "a single mask file for all")
    yield frame, mask


class _Writer:
  """Writes frames to a video file or to a folder of PNGs.

  A video is written aside and renamed over `output` once complete (`commit`):
  a run that fails keeps the previous file, and no reader sees half a video.
  """

  def __init__(self, output: str, fps: float, names: list[str] | None):
    self.output, self.names, self.count = output, names, 0
    self.video = self.partial = None
    if _is_video(output):
      directory, name = os.path.split(os.path.abspath(output))
      image_io.make_output_dir(directory)
      stem, suffix = os.path.splitext(name)
      self.partial = os.path.join(directory, f".{stem}.partial-{os.getpid()}{suffix}")
      self.video = _imageio().get_writer(self.partial, "ffmpeg", fps=fps, macro_block_size=1)
    else:
      image_io.make_output_dir(output)

  def write(self, frame: np.ndarray) -> None:
    if self.video is not None:
      if self.count == 0 and (frame.shape[0] % 2 or frame.shape[1] % 2):
        # H.264 in yuv420p needs even sizes: ffmpeg wrote an empty file.
        raise ValueError(
            f"frames of {frame.shape[1]}x{frame.shape[0]} (WxH) cannot be written to "
            f"{self.output}: video codecs need even sizes; write a frame folder "
            "(--output=DIR) or crop the frames")
      self.video.append_data(frame)
    else:
      stem = (os.path.splitext(os.path.basename(self.names[self.count]))[0]
              if self.names else f"frame_{self.count:06d}")
      image_io.write_image(os.path.join(self.output, stem + ".png"), frame)
    self.count += 1

  def close(self, commit: bool) -> None:
    """Finishes the video; renames it over `output` if `commit`, else deletes it."""
    if self.video is None:
      return
    try:
      self.video.close()
    except Exception:  # pylint: disable=broad-except
      if commit:
        raise
    if commit:
      os.replace(self.partial, self.output)
    elif os.path.exists(self.partial):
      os.remove(self.partial)


def harmonize_frames(networks: dict[str, nnx.Module], frames: Iterable[np.ndarray],
                     masks: Iterable[np.ndarray], fps: float) -> Iterator[np.ndarray]:
  """Yields harmonized uint8 frames of uint8 frames [H,W,3] and soft masks [H,W,1]."""
  raw_fn, apply_fn = _jitted()
  ema = ArgumentEma(fps)
  for frame, mask in _pairs(frames, masks):
    _check_size(frame, mask)
    comp = jnp.asarray(frame, jnp.float32)[None] / 255.0
    m = jnp.asarray(mask)[None]
    args = jnp.asarray(ema.update(np.asarray(raw_fn(networks, comp, m))[0]))[None]
    out = np.asarray(apply_fn(comp, m, args))[0]
    out = np.round(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8)
    yield np.where(mask > 0, out, frame)  # Background bytes stay as they were.


def _check_size(frame: np.ndarray, mask: np.ndarray) -> None:
  if mask.shape[:2] != frame.shape[:2]:
    raise ValueError(f"mask is {mask.shape[1]}x{mask.shape[0]} but the frame is "
                     f"{frame.shape[1]}x{frame.shape[0]} (WxH)")


def harmonize_each_frame(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                         frames: Iterable[np.ndarray], masks: Iterable[np.ndarray]
                         ) -> Iterator[np.ndarray]:
  """Yields `inference.harmonize` of each uint8 frame [H,W,3] with its mask [H,W,1]."""
  for frame, mask in _pairs(frames, masks):
    _check_size(frame, mask)
    yield inference.harmonize(networks, frame, mask, config=config)


def harmonize_video(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                    *, video: str | None = None, frames: str | None = None,
                    mask: str | None, output: str | None, fps: float | None = None,
                    max_pixels: int | None = None) -> int:
  """Harmonizes a video file or a frame folder; returns an exit status (0 ok).

  Args:
    config: the model's config: Harmonizer (smoothed arguments) or any family
      whose INPUTS are a composite and a mask (frame by frame).
    networks: the model's networks in eval mode.
    video / frames: exactly one: a video file, or a folder of frame images.
    mask: a folder of per-frame masks, one mask image, or a mask video.
    output: a video file (by suffix) or a folder for PNG frames.
    fps: for the EMA and the written video; default: the video's, else 25.
    max_pixels: refuse larger frames and masks (image_io.DEFAULT_MAX_PIXELS).

  Raises:
    ValueError: wrong model, both or neither input, mask count or size mismatch,
      an unreadable video, frames too large or of odd size for a video file, an
      output that is one of the inputs (image_io.OutputPathError).
  """
  if inference.inputs_of(config) != inference.HARMONIZATION_INPUTS:
    raise ValueError(f"Video harmonization needs a model that harmonizes a composite with "
                     f"its mask; {config.model.name!r} reads {inference.inputs_of(config)}")
  if bool(video) == bool(frames):
    raise ValueError("Give exactly one of video (a file) or frames (a folder)")
  if not mask or not output:
    raise ValueError("Video harmonization needs a mask and an output")
  image_io.check_output_path(output, folder=not _is_video(output))
  image_io.check_not_an_input(output, {"frame": frames, "video": video, "mask": mask})
  if video:
    stream, video_fps, count = _read_video(video)
    stream = _limited(stream, video, max_pixels)
    names = None
  else:
    names = _frame_files(frames)
    stream = (image_io.read_image(f, max_pixels=max_pixels) for f in names)
    video_fps, count = DEFAULT_FPS, len(names)
  fps = fps or video_fps
  masks = _masks(mask, count, max_pixels)
  if config.model.name == "harmonizer":
    harmonized = harmonize_frames(networks, stream, masks, fps)
    how = f"EMA weight {ema_weight(fps):.3f}"
  else:
    harmonized = harmonize_each_frame(config, networks, stream, masks)
    how = "frame by frame"
  writer = _Writer(output, fps, names)
  progress = metric_writers.ItemProgress("frames written", total=count)
  done = False
  try:
    for frame in harmonized:
      writer.write(frame)
      progress.tick()
    done = True
  finally:
    writer.close(commit=done)
  print(f"Wrote {writer.count} frames to {output} ({how})")
  return 0
