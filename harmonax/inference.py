"""Harmonization of user images at any resolution, as a library.

`harmonize` takes arrays, `harmonize_file` / `harmonize_folder` files; the
command line is `harmonax.harmonize`. Masks are binarized (rules in
`harmonize`); the model sees the binary mask, and for families whose task
keeps the background (`PRESERVES_BACKGROUND`) every background pixel of the
output equals the composite's bytes.
"""

from collections.abc import Callable
import functools
import os
import weakref

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmonax import image_io
from harmonax import metric_writers
from harmonax import models


def demo_warning(config: ml_collections.ConfigDict) -> str | None:
  """A warning for a demo model (config.demo_model: a runlocal or demo recipe), else None."""
  if not config.get("demo_model", False):
    return None
  size = config.get("data", {}).get("image_size", None)
  at = f" at {size}x{size}" if size else ""
  return (f"this is a demo model ({config.model.name}, a runlocal/demo recipe: a small "
          f"network trained{at} for minutes on a CPU); expect rough results, and train "
          "a full recipe for real use")


class _Graph:
  """A GraphDef as jit's static argument, hashed once: hashing HRNet18 + iDIH256's
  took 22 ms, which jit would pay at every call."""

  __slots__ = ("graphdef", "_hash")

  def __init__(self, graphdef: nnx.GraphDef):
    self.graphdef, self._hash = graphdef, hash(graphdef)

  def __hash__(self) -> int:
    return self._hash

  def __eq__(self, other) -> bool:
    return isinstance(other, _Graph) and (other.graphdef is self.graphdef
                                          or other.graphdef == self.graphdef)


# nnx.split of each set of networks that `jit_networks` functions ran, by the ids
# of its modules; an entry goes when one of them is garbage collected.
_SPLITS: dict[tuple, tuple[_Graph, nnx.State]] = {}


def _split(networks: dict[str, nnx.Module]) -> tuple[_Graph, nnx.State]:
  """nnx.split(networks), done once per set of module objects.

  Splitting walks every Variable: 128-175 ms a call for HRNet18 + iDIH256's 1,649
  on this project's 2-core CPU, which nnx.jit paid on every image
  (benchmarks/call_overhead.py). The state holds the networks' own Variables,
  so new values set in them (nnx.update, a checkpoint restored into them) are
  used; a network whose structure changes afterwards (a layer or Variable
  replaced by another object) is not re-split: build new networks instead.
  """
  key = tuple(sorted((name, id(module)) for name, module in networks.items()))
  if key not in _SPLITS:
    graphdef, state = nnx.split(networks)
    _SPLITS[key] = (_Graph(graphdef), state)
    for module in networks.values():
      weakref.finalize(module, _SPLITS.pop, key, None)
  return _SPLITS[key]


def jit_networks(fn: Callable) -> Callable:
  """fn(networks, *args) jitted with the networks split once (`_split`)
  rather than by nnx.jit on every call; values, not Variable updates, come out.
  Networks of the same structure share compilations."""
  jitted = jax.jit(lambda graph, state, *args: fn(nnx.merge(graph.graphdef, state), *args),
                   static_argnums=0)
  return lambda networks, *args: jitted(*_split(networks), *args)


@functools.lru_cache(maxsize=16)
def jitted_predict(config: ml_collections.FrozenConfigDict) -> Callable:
  """jit((networks, inputs) -> prediction) of config's family; compiled
  shapes are cached by jit (one compilation per image size and batch)."""
  family = models.get_family(config.model.name)
  # float32 out whatever the compute dtype (models.set_compute_dtype).
  return jit_networks(lambda networks, inputs: family.predict(config, networks, inputs
                                                               ).astype(jnp.float32))


def binary_mask(mask: jax.Array) -> jax.Array:
  """bool [..., H, W, 1] from a bool, integer or float mask (rules in `harmonize`).

  Traceable: the threshold depends on the mask's maximum, so exported graphs
  binarize as `harmonize` does.
  """
  if mask.dtype == jnp.bool_:
    return mask
  # Each image's own maximum: a 0/1 mask batched with a 0/255 one is 0/1.
  top = jnp.max(mask, axis=(-3, -2, -1), keepdims=True)
  if jnp.issubdtype(mask.dtype, jnp.integer):
    bits = jnp.iinfo(mask.dtype).bits
    high = 32768 if bits > 8 else 128
    threshold = jnp.where(top <= 1, 1, jnp.where(top <= 255, 128, high))
  else:
    threshold = jnp.where(top <= 1, 0.5, 128.0)
  return mask >= threshold.astype(mask.dtype)


HARMONIZATION_INPUTS = ("composite", "mask")


def inputs_of(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The batch keys the model's predict reads; harmonize, video and export need
  HARMONIZATION_INPUTS (Deep Image Compositing reads two photos instead)."""
  return tuple(models.get_family(config.model.name).INPUTS)


def harmonize_arrays(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                     composite: jax.Array, mask: jax.Array) -> jax.Array:
  """The traceable body of `harmonize` on batches: composite [B,H,W,3] (uint8,
  or float in [0, 1]), mask [B,H,W,1] -> the output in the composite's dtype.

  Normalizes, binarizes the mask, runs the family's predict, clips to [0, 1],
  rounds for uint8 and pastes the composite's background for families that
  preserve it. `harmonize` jits it; `harmonax.export_lib` exports it.
  """
  family = models.get_family(config.model.name)
  if inputs_of(config) != HARMONIZATION_INPUTS:
    hint = (": use harmonax.compositing.compose(networks, foreground, background, mask, "
            "config=config)" if config.model.name == "deep_compositing" else "")
    raise ValueError(f"{config.model.name!r} reads {inputs_of(config)}, not a composite "
                     f"and its mask{hint}")
  fg = binary_mask(mask)
  is_uint8 = composite.dtype == jnp.uint8
  comp01 = composite.astype(jnp.float32) / 255.0 if is_uint8 else composite.astype(jnp.float32)
  pred = family.predict(config, networks, {"composite": comp01, "mask": fg.astype(jnp.float32)}
                        ).astype(jnp.float32)
  out = jnp.clip(pred.astype(jnp.float32), 0.0, 1.0)
  if is_uint8:
    out = jnp.round(out * 255.0).astype(jnp.uint8)
  if family.PRESERVES_BACKGROUND:
    out = jnp.where(fg, out, composite if is_uint8 else comp01)
  return out


@functools.lru_cache(maxsize=16)
def jitted_harmonize(config: ml_collections.FrozenConfigDict) -> Callable:
  """jit((networks, composite, mask) -> output) of `harmonize_arrays`; one
  compilation per shape and dtype, cached by jit."""
  return jit_networks(functools.partial(harmonize_arrays, config))


# Float composites are [0, 1]; this much outside is rounding, not another range.
_FLOAT_SLACK = 1e-3


def _checked_composite(composite: np.ndarray) -> np.ndarray:
  """uint8 or float32 [H,W,3] / [B,H,W,3], its values checked.

  Other integer types holding 0..255 (int32, int64: numpy arithmetic) become
  uint8; uint16 is refused (a 16-bit image); floats must lie in [0, 1] (a
  0..255 float image used to be clipped to white without a word).

  Raises:
    ValueError: naming the shape, dtype or range that is wrong.
  """
  if composite.ndim not in (3, 4) or composite.shape[-1] != 3:
    raise ValueError(f"composite: expected [H,W,3] or [B,H,W,3], got {composite.shape}"
                     + (f" (a {type(composite.item()).__name__}: pass the image, e.g. "
                        "image_io.read_image(path))" if composite.ndim == 0 else ""))
  if 0 in composite.shape:
    raise ValueError(f"composite: empty image, shape {composite.shape}")
  if composite.dtype.name == "bfloat16":  # (numpy's kind 'V': ml_dtypes.)
    composite = composite.astype(np.float32)
  kind = composite.dtype.kind
  if composite.dtype == np.uint8:
    return composite
  if kind in "iub":
    low, high = int(composite.min()), int(composite.max())
    # uint16 is a 16-bit image even when dark (all values <= 255).
    if low < 0 or high > 255 or composite.dtype == np.uint16:
      raise ValueError(
          f"composite: {composite.dtype} values {low}..{high}; pass uint8 (0..255) or "
          "float in [0, 1] (e.g. a 16-bit image as (x / 65535).astype(np.float32))")
    return composite.astype(np.uint8)
  if kind != "f":
    raise ValueError(f"composite: unsupported dtype {composite.dtype}; pass uint8 or float")
  if not np.isfinite(composite).all():
    raise ValueError(f"composite: {np.size(composite) - np.isfinite(composite).sum()} "
                     "NaN or infinite values")
  low, high = float(composite.min()), float(composite.max())
  if low < -_FLOAT_SLACK or high > 1 + _FLOAT_SLACK:
    raise ValueError(
        f"composite: float values {low:.4g}..{high:.4g}, expected [0, 1] (divide a "
        "0..255 image by 255, or pass it as uint8)")
  return composite.astype(np.float32)


def harmonize(networks: dict[str, nnx.Module], composite: np.ndarray, mask: np.ndarray,
              *, config: ml_collections.ConfigDict) -> np.ndarray:
  """Harmonizes one image [H,W,3] or a batch [B,H,W,3] of any size.

  Args:
    networks: the family's networks in eval mode (checkpoint.load_networks).
    composite: uint8 in 0..255, or float in [0, 1].
    mask: [H,W], [H,W,1] (or with a batch axis; [H,W,3] colour masks by their
      brightest channel; one [H,W] mask for a whole batch) marking the foreground. bool;
      integer: foreground >= 1 if its maximum is <= 1 (a 0/1 mask), else
      >= 128 if its maximum is <= 255, else >= 32768 (16-bit); float:
      foreground >= 0.5 (>= 128 if its maximum exceeds 1, i.e. 0..255).
    config: the model's config (config.model.name picks the family's predict).

  Returns:
    The harmonized image in the composite's layout: uint8 for uint8 input
    (rounded to the nearest level; the official DoveNet, BargainNet and
    Harmonizer scripts truncate, at most one level lower), float32 in [0, 1]
    otherwise. Where the mask is background, the output equals the composite
    exactly (families whose task keeps the background).

  Raises:
    ValueError: on bad shapes or composite/mask size mismatch, or for a model
      that does not harmonize a composite (Deep Image Compositing).
  """
  composite = _checked_composite(np.asarray(composite))
  mask = np.asarray(mask)
  single = composite.ndim == 3
  if single:
    composite = composite[None]
  b, h, w, _ = composite.shape
  if mask.shape in ((h, w, 3), (b, h, w, 3)):  # A colour mask: its brightest channel.
    mask = mask.max(axis=-1)
  if mask.dtype.name == "bfloat16":
    mask = mask.astype(np.float32)
  if mask.shape in ((h, w), (h, w, 1)):  # The image's mask, or one for the whole batch.
    mask = np.broadcast_to(mask.reshape(1, h, w, 1), (b, h, w, 1))
  elif mask.shape == (b, h, w):
    mask = mask[..., None]
  if mask.shape != (b, h, w, 1):
    want = ("[H,W] or [H,W,1]" if single
            else "[B,H,W], [B,H,W,1], or [H,W] / [H,W,1] for every image")
    raise ValueError(
        f"mask size does not match the composite: expected {want} with (H, W) = {(h, w)}"
        f"{'' if single else f' and B = {b}'}, got mask shape {mask.shape}")
  if mask.dtype.kind == "f":
    if not np.isfinite(mask).all():
      raise ValueError("mask: holds NaN or infinite values")
    mask = mask.astype(np.float32)
  out = np.asarray(jitted_harmonize(ml_collections.FrozenConfigDict(config))(
      networks, jnp.asarray(composite), jnp.asarray(mask)))
  return out[0] if single else out


def harmonize_file(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                   composite_path: str, mask_path: str, output_path: str,
                   max_pixels: int | None = None) -> None:
  """Reads a composite and its mask, harmonizes, writes `output_path`.

  Raises:
    image_io.ImageError: unreadable, corrupt or too large file.
    ValueError: composite and mask sizes differ (both files named), or
      `output_path` is one of them (image_io.OutputPathError).
  """
  image_io.check_not_an_input(output_path, {"composite": composite_path, "mask": mask_path})
  composite = image_io.read_image(composite_path, max_pixels=max_pixels)
  mask = image_io.read_mask(mask_path, max_pixels=max_pixels)
  if not mask.any() or mask.all():
    # Legal, but most likely the wrong file or an inverted/unthresholded mask.
    logging.warning("%s: the mask is all %s: %s", mask_path,
                    *(("background", "the output equals the composite")
                      if not mask.any() else
                      ("foreground", "there is no background to harmonize to")))
  if mask.shape[:2] != composite.shape[:2]:
    raise ValueError(
        f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but composite "
        f"{composite_path} is {composite.shape[1]}x{composite.shape[0]} (WxH)")
  image_io.write_image(output_path, harmonize(networks, composite, mask, config=config))


def _image_files(directory: str) -> list[str]:
  return sorted(f for f in os.listdir(directory)
                if os.path.splitext(f)[1].lower() in image_io.IMAGE_SUFFIXES
                and not f.startswith("."))


def _by_stem(names: list[str]) -> dict[str, list[str]]:
  """File names grouped by stem ('a.jpg', 'a.png' -> {'a': [both]})."""
  out: dict[str, list[str]] = {}
  for name in names:
    out.setdefault(os.path.splitext(name)[0], []).append(name)
  return out


def find_mask(stem: str, masks_by_stem: dict[str, list[str]]) -> str:
  """The mask file name for a composite stem.

  The same stem, else the stem without its last '_' field (iHarmony4 names
  composites <real>_<mask>_<k> and masks <real>_<mask>).

  Raises:
    LookupError: no mask, or several masks with that stem.
  """
  for key in (stem, stem.rpartition("_")[0]):
    found = masks_by_stem.get(key, [])
    if len(found) > 1:
      raise LookupError(f"several masks for {stem!r}: {found}")
    if found:
      return found[0]
  shorter = stem.rpartition("_")[0]
  raise LookupError(f"no mask named {stem}.*" + (f" (or {shorter}.*)" if shorter else ""))


def harmonize_folder(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                     composite_dir: str, mask_dir: str, output_dir: str,
                     max_pixels: int | None = None
                     ) -> tuple[list[str], list[tuple[str, str]]]:
  """Harmonizes every image of `composite_dir` into `output_dir/<stem>.png`.

  Each composite's mask is the file of `mask_dir` with its stem (see
  find_mask); `mask_dir` may also be one mask file for every composite.

  A bad file (unreadable, too large, no mask, size mismatch, another
  composite of the same stem) is skipped and reported, never fatal.

  Raises:
    ValueError: `composite_dir` holds no images, or `output_dir` is the
      composite or mask folder (whose files it would overwrite).

  Returns:
    (written output paths, [(composite path, reason), ...] for skipped files).
  """
  image_io.check_not_an_input(output_dir, {"composite": composite_dir, "mask": mask_dir})
  one_mask = mask_dir if os.path.isfile(mask_dir) else None  # The same for every image.
  masks_by_stem = _by_stem([] if one_mask else _image_files(mask_dir))
  names = _image_files(composite_dir)
  if not names:
    raise ValueError(f"{composite_dir} holds no images ({', '.join(image_io.IMAGE_SUFFIXES)})")
  by_stem = _by_stem(names)
  written, skipped = [], []
  progress = metric_writers.ItemProgress(f"harmonizing {composite_dir}", total=len(names))
  for name in names:
    stem = os.path.splitext(name)[0]
    composite_path = os.path.join(composite_dir, name)
    output_path = os.path.join(output_dir, stem + ".png")
    try:
      if len(by_stem[stem]) > 1:  # a.jpg and a.png would both write a.png.
        raise LookupError(f"{' and '.join(by_stem[stem])} would both be written to "
                          f"{stem}.png; rename one")
      mask_path = one_mask or os.path.join(mask_dir, find_mask(stem, masks_by_stem))
      harmonize_file(config, networks, composite_path, mask_path, output_path, max_pixels)
      written.append(output_path)
    except (image_io.ImageError, LookupError, ValueError) as e:
      logging.warning("Skipping %s: %s", composite_path, e)
      skipped.append((composite_path, str(e)))
    progress.tick()
  return written, skipped


