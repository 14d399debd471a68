"""Layers and image ops shared by the model families (NHWC, PyTorch semantics).

Several families import official PyTorch weights, so the ops here reproduce
PyTorch's behaviour exactly where JAX's differs: transposed convolutions with
PyTorch's padding convention, bilinear resizing with align_corners=True,
depthwise Gaussian smoothing stored as a PyTorch-layout buffer.

Depthwise convolutions (`feature_group_count` = channels) are written as
shifted multiply-adds (`depthwise_conv2d`): XLA's CPU backend runs grouped
convolutions as naive loops (a 3x3 depthwise conv on 4x64x64x96 took 90 ms
forward and 250 ms with its gradient, against 2 ms and 45 ms as shifts; see
BENCHMARKS.md). Transposed convolutions (`conv_transpose2d`) are computed per
output phase with stride-1 convolutions instead of convolving the input
dilated by the stride, whose forward and gradients are 10-30x slower there.
The outputs equal lax's formulations up to float summation order.
"""

from collections.abc import Callable, Sequence
import contextlib
import functools
import math
from typing import Any

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np

from harmonax import torch_import
from harmonax import variables

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Buffer(nnx.Variable):
  """A non-trainable array that belongs to the model (a PyTorch buffer)."""


def imagenet_normalize(images: jax.Array) -> jax.Array:
  """[0, 1] RGB -> (x - mean) / std with ImageNet statistics."""
  return (images - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def imagenet_denormalize(images: jax.Array) -> jax.Array:
  """Inverse of `imagenet_normalize`."""
  return images * jnp.asarray(IMAGENET_STD) + jnp.asarray(IMAGENET_MEAN)


def blend_background(pred: jax.Array, composite: jax.Array, mask: jax.Array) -> jax.Array:
  """mask * pred + (1 - mask) * composite, and exactly `composite` where mask == 0.

  The `where` keeps background pixels bit-identical even if `pred` holds
  inf/NaN there (0 * inf would not be 0).
  """
  blended = mask * pred + (1.0 - mask) * composite
  return jnp.where(mask > 0, blended, composite)


def to_float(x: jax.Array) -> jax.Array:
  """uint8 images (0..255) -> float32 in [0, 1]; float arrays pass unchanged.

  Batches cross to the device as uint8 (a quarter of the bytes) and become
  float there: every family and evaluator reads images through this.
  """
  if x.dtype == jnp.uint8:
    return x.astype(jnp.float32) / 255.0
  return x


def floats(batch: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """`to_float` on every numeric array of a batch (metadata left as is)."""
  return {k: to_float(v) if hasattr(v, "dtype") and v.dtype != object else v
          for k, v in batch.items()}


def ceil_div(a: int, b: int) -> int:
  """ceil(a / b) for a >= 0, b > 0, as (a + b - 1) // b, not -(-a // b): a symbolic
  size (an export with free height and width) then divides only non-negative
  numbers, which jax2onnx's division (it truncates) gets right."""
  return (a + b - 1) // b


def padded_size(size: int, multiple: int, min_size: int = 0) -> int:
  """Smallest n >= max(size, min_size) that is a multiple of `multiple`."""
  size = max(size, min_size)
  return ceil_div(size, multiple) * multiple


PAD_MODES = ("centered_zero", "edge", "reflect")


def pad_amounts(h: int, w: int, multiple: int, min_size: int = 0,
                centered: bool = False) -> tuple[tuple[int, int], tuple[int, int]]:
  """((top, bottom), (left, right)) padding of an h x w image to `padded_size`.

  centered: the extra rows/columns are split with the smaller half first, as
  the official iharm predictor (PadToDivisor); otherwise all at bottom/right.
  """
  ph = padded_size(h, multiple, min_size) - h
  pw = padded_size(w, multiple, min_size) - w
  if centered:
    return (ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)
  return (0, ph), (0, pw)


def pad_to_multiple(x: jax.Array, multiple: int, min_size: int = 0,
                    mode: str = "edge") -> tuple[jax.Array, tuple[slice, slice]]:
  """Pads [B, H, W, C] so H and W fit `padded_size`; returns (padded, crop).

  mode: 'centered_zero' (zeros split around the image, the official iharm
  predictor's PadToDivisor with BORDER_CONSTANT 0), 'edge' (replicate, at the
  bottom/right: works for any amount and feeds no black border into global
  pooling) or 'reflect' (bottom/right; DoveNet/BargainNet's test-time choice
  here). `crop_to(padded, crop)` (`padded[:, crop[0], crop[1]]`) is the
  original image area.
  """
  if mode not in PAD_MODES:
    raise ValueError(f"Unknown padding mode {mode!r}; valid: {PAD_MODES}")
  _, h, w, _ = x.shape
  (top, bottom), (left, right) = pad_amounts(h, w, multiple, min_size,
                                             centered=mode == "centered_zero")
  crop = (slice(top, top + h), slice(left, left + w))
  if top == bottom == left == right == 0:
    return x, crop
  widths = ((0, 0), (top, bottom), (left, right), (0, 0))
  if not isinstance(h * w, int):  # An export with free H, W.
    x = _pad_gathered(x, 1, top, h + top + bottom, mode)
    return _pad_gathered(x, 2, left, w + left + right, mode), crop
  if mode == "centered_zero":
    return jnp.pad(x, widths), crop
  return jnp.pad(x, widths, mode=mode), crop


def crop_to(x: jax.Array, crop: tuple[slice, slice]) -> jax.Array:
  """x[:, crop[0], crop[1]]: the image area of `pad_to_multiple`'s output.

  With a symbolic size (an export with free height and width) the rows and
  columns are gathered: jax2onnx takes no slice of symbolic bounds.
  """
  if isinstance(crop[0].stop * crop[1].stop, int):
    return x[:, crop[0], crop[1]]
  for axis, window in ((1, crop[0]), (2, crop[1])):
    i = jax.lax.broadcasted_iota(jnp.int32, (window.stop - window.start,), 0)
    x = jnp.take(x, i + window.start, axis=axis)
  return x


def _pad_gathered(x: jax.Array, axis: int, before, size, mode: str) -> jax.Array:
  """x padded along `axis` to `size` rows, `before` of them first, as a gather.

  jnp.pad needs pad widths known when tracing (its reflect mode in jax.export,
  every mode in jax2onnx); a symbolic size (an export with free height and
  width) takes this path instead, with jnp.pad's values: zeros, the edge row
  repeated, or numpy's reflection, repeated when the pad exceeds the size
  ([a b c] -> [a b c b a b c b ...]; reflect pads at the end only).
  """
  n = x.shape[axis]
  i = jax.lax.broadcasted_iota(jnp.int32, (size,), 0) - before
  if mode == "reflect":
    period = jnp.maximum(2 * (n - 1), 1)
    # i % period without rem, whose jax2onnx lowering takes no symbolic shape.
    i = i - period * jnp.floor(i.astype(jnp.float32) / period).astype(jnp.int32)
    return jnp.take(x, jnp.where(i < n, i, period - i), axis=axis)
  out = jnp.take(x, jnp.clip(i, 0, n - 1), axis=axis)
  if mode == "edge":
    return out
  shape = [1] * x.ndim
  shape[axis] = size
  inside = ((i >= 0) & (i < n)).reshape(shape)
  return jnp.where(inside, out, jnp.zeros((), x.dtype))


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[B,H,W,C] -> [B,*size,C] as torch's F.interpolate(bilinear, align_corners=False).

  The half-pixel grid, two taps per axis gathered directly, no antialiasing
  (PyTorch's behaviour when shrinking; `jax.image.resize` antialiases by
  default), and far cheaper than a dense resize matrix when shrinking 4K.
  """
  _, h, w, _ = x.shape
  if (h, w) == tuple(size):
    return x
  for axis, (out, n) in ((1, (size[0], h)), (2, (size[1], w))):
    i0, i1, frac = bilinear_taps(n, out)
    shape = [1, 1, 1, 1]
    shape[axis] = out
    w1 = jnp.asarray(frac).reshape(shape).astype(x.dtype)
    x = jnp.take(x, i0, axis=axis) * (1 - w1) + jnp.take(x, i1, axis=axis) * w1
  return x


def bilinear_taps(n: int, out: int) -> tuple:
  """(i0, i1, frac) [out] of `resize_bilinear` along an axis of n -> out: the
  half-pixel grid, source clamped at 0. numpy (int32, int32, float32), computed
  in float64 once; for a symbolic size (an export with free height and width),
  jax arrays computed in float32 in the graph."""
  if isinstance(n, int) and isinstance(out, int):
    src = np.maximum((np.arange(out) + 0.5) * (n / out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int32), n - 1)
    return i0, np.minimum(i0 + 1, n - 1), (src - i0).astype(np.float32)
  last = jnp.asarray(n, jnp.int32) - 1
  scale = jnp.asarray(n, jnp.float32) / jnp.asarray(out, jnp.float32)
  # lax's iota, not jnp.arange: jax2onnx's arange takes no symbolic length.
  src = jnp.maximum((jax.lax.broadcasted_iota(jnp.float32, (out,), 0) + 0.5) * scale - 0.5, 0.0)
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), last)
  return i0, jnp.minimum(i0 + 1, last), src - i0.astype(jnp.float32)


def align_corners_taps(n, size, xp=np) -> tuple:
  """(lo, hi, frac) of the align_corners=True grid, in float32 as PyTorch computes
  it: numpy constants, or with xp=jnp for a symbolic size (an export with free
  height and width) arrays computed in the graph."""
  if size == 1 or n == 1:
    src = xp.zeros((size,), xp.float32)
  elif xp is np:
    src = np.arange(size, dtype=np.float32) * ((n - 1) / (size - 1))
  else:  # lax's iota, not jnp.arange: jax2onnx's arange takes no symbolic length.
    src = jax.lax.broadcasted_iota(jnp.float32, (size,), 0) * ((n - 1) / (size - 1))
  lo = xp.clip(xp.floor(src).astype(xp.int32), 0, n - 1)
  hi = xp.minimum(lo + 1, n - 1)
  return lo, hi, src - lo.astype(xp.float32)


def _align_corners_axis(x: jax.Array, size: int, axis: int, dense_max: int) -> jax.Array:
  n = x.shape[axis]
  if n == size:
    return x
  fixed = isinstance(n * size, int)
  lo, hi, frac = align_corners_taps(n, size, np if fixed else jnp)
  if fixed and n <= dense_max:
    weights = np.zeros((size, n), np.float32)
    np.add.at(weights, (np.arange(size), lo), 1 - frac)
    np.add.at(weights, (np.arange(size), hi), frac)
    out = jnp.tensordot(weights.astype(x.dtype), x, axes=((1,), (axis,)),
                        precision=jax.lax.Precision.HIGHEST)  # [size, ...rest].
    return jnp.moveaxis(out, 0, axis)
  shape = [1] * x.ndim
  shape[axis] = size
  frac = jnp.asarray(frac, x.dtype).reshape(shape)
  return jnp.take(x, lo, axis=axis) * (1 - frac) + jnp.take(x, hi, axis=axis) * frac


def resize_bilinear_align_corners(x: jax.Array, size: tuple[int, int],
                                  dense_max: int = 0) -> jax.Array:
  """Bilinear resize of [B, H, W, C] to `size` (h, w) with align_corners=True.

  Equals torch.nn.functional.interpolate(mode='bilinear', align_corners=True):
  corner pixels map onto corner pixels, src = dst * (in - 1) / (out - 1).
  jax.image.resize only implements the half-pixel (align_corners=False) grid.

  Each axis gathers its two taps, or, when it has at most `dense_max` rows
  (columns), is a product with the dense [size, n] matrix of their weights
  (n multiply-adds an output instead of two; the same values to float32
  rounding). Which is faster depends on the consumer: XLA:CPU's gathers made
  half of HRNet's time (its fuse layers resize in every module; BENCHMARKS.md),
  while the iS2AM decoder's upsampling was faster gathered.
  """
  x = _align_corners_axis(x, size[0], 1, dense_max)
  return _align_corners_axis(x, size[1], 2, dense_max)


def upsample2x_align_corners(x: jax.Array) -> jax.Array:
  """nn.Upsample(scale_factor=2, mode='bilinear', align_corners=True) on NHWC."""
  return resize_bilinear_align_corners(x, (2 * x.shape[1], 2 * x.shape[2]))


def max_pool2x2(x: jax.Array) -> jax.Array:
  """nn.MaxPool2d(2, 2) on NHWC (odd trailing rows/columns are dropped)."""
  b, h, w, c = x.shape
  if isinstance(h * w, int):
    # window_shape by keyword: jax2onnx patches nnx.max_pool with a keyword-only signature.
    return nnx.max_pool(x, window_shape=(2, 2), strides=(2, 2), padding="VALID")
  # A symbolic size (an export with free height and width): jax2onnx's max_pool
  # keeps such a size unhalved, and its reduce_window makes a 4-D MaxPool that
  # onnxruntime rejects; the maximum over 2 x 2 blocks of a reshape instead.
  if 2 * (h // 2) != h or 2 * (w // 2) != w:
    x = crop_to(x, (slice(0, 2 * (h // 2)), slice(0, 2 * (w // 2))))
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


Padding = str | Sequence[tuple[int, int]]
_NHWC = ("NHWC", "HWIO", "NHWC")

# Whether ops avoid lax.pad with interior padding (ONNX's Pad has none); see
# `portable_ops`.
_PORTABLE = False


@contextlib.contextmanager
def portable_ops():
  """Traces within use only ops that every export format has (export_lib's ONNX path).

  conv_transpose2d then interleaves its output phases with a reshape instead
  of interior padding. Same values; the reshape form needs an explicit output
  sharding under a mesh with explicit axes, so training does not use it.
  Loops over chunks (`fori_loop`, `map` below) are unrolled: jax2onnx cannot
  convert a fori_loop whose body reads arrays of the enclosing trace.
  """
  global _PORTABLE
  previous, _PORTABLE = _PORTABLE, True
  try:
    yield
  finally:
    _PORTABLE = previous


def portable() -> bool:
  """Whether the trace is inside `portable_ops`."""
  return _PORTABLE


def fori_loop(n: int, body: Callable[[int, Any], Any], init: Any) -> Any:
  """lax.fori_loop(0, n, body, init); unrolled inside `portable_ops`."""
  if not _PORTABLE:
    return jax.lax.fori_loop(0, n, body, init)
  for i in range(n):
    init = body(i, init)
  return init


def map(fn: Callable[[jax.Array], jax.Array], xs: jax.Array) -> jax.Array:  # pylint: disable=redefined-builtin
  """lax.map(fn, xs) (one slice of xs at a time); unrolled inside `portable_ops`."""
  if not _PORTABLE:
    return jax.lax.map(fn, xs)
  return jnp.stack([fn(xs[i]) for i in range(xs.shape[0])])


# A symbolic size (an export with free height and width) splits the image into
# as many chunks as harmonize does at 3840x2160: of pixels (`symbolic_chunks`)
# or of rows (CDTNet's refinement strips).
REFERENCE_PIXELS = 3840 * 2160
REFERENCE_ROWS = 2160


def symbolic_chunks(pixels: int) -> int:
  """Chunks for `row_chunks` where a known size takes chunks of `pixels` pixels."""
  return ceil_div(REFERENCE_PIXELS, pixels)


def row_chunks(fn: Callable[[jax.Array], jax.Array], shape: Sequence[Any], dtype: Any,
               chunks: int, axis: int = 1) -> jax.Array:
  """The array of `shape` computed along `axis` in `chunks` chunks, one at a
  time: fn(idx) for idx = ceil(size / chunks) consecutive indices, clamped to
  the last, in a loop (`lax.scan`), so only one chunk's intermediates exist at once.

  For a symbolic size (an export with free height and width), where the count
  of chunks must be fixed when tracing: their length is computed in the graph.
  fn gets int32 indices and returns `shape` with their length along `axis`.
  The last chunk's clamped indices repeat the last slice; the rows past the end
  are cropped away. (In ONNX a Loop whose outputs are concatenated; a while
  loop over chunks of a fixed length would copy its carried output at every
  step in onnxruntime.)
  """
  size = shape[axis]
  rows = ceil_div(size, chunks)
  last = jnp.asarray(size, jnp.int32) - 1
  offsets = jax.lax.broadcasted_iota(jnp.int32, (rows,), 0)

  def chunk(carry, i):
    return carry, fn(jnp.minimum(i * rows + offsets, last)).astype(dtype)

  _, out = jax.lax.scan(chunk, 0, jnp.arange(chunks, dtype=jnp.int32))
  padded = list(shape)
  padded[axis] = chunks * rows
  out = jnp.moveaxis(out, 0, axis).reshape(padded)
  return jnp.take(out, jax.lax.broadcasted_iota(jnp.int32, (size,), 0), axis=axis)


def _explicit_padding(padding: Padding, spatial: Sequence[int], kernel: Sequence[int],
                      strides: Sequence[int]) -> tuple[tuple[int, int], ...]:
  """'SAME' / 'VALID' / pairs -> ((top, bottom), (left, right)), as lax computes them."""
  if isinstance(padding, str):
    return tuple(jax.lax.padtype_to_pads(spatial, kernel, strides, padding))
  return tuple((int(lo), int(hi)) for lo, hi in padding)


def _tap(xp: jax.Array, i: int, j: int, out_hw: tuple[int, int], stride: int) -> jax.Array:
  """xp[:, i::stride, j::stride] cut to out_hw rows/columns ([N,H,W] or [N,H,W,C])."""
  oh, ow = out_hw
  start = (0, i, j) + (0,) * (xp.ndim - 3)
  limit = (xp.shape[0], i + (oh - 1) * stride + 1, j + (ow - 1) * stride + 1) + xp.shape[3:]
  return jax.lax.slice(xp, start, limit, (1, stride, stride) + (1,) * (xp.ndim - 3))


def _correlate(xp: jax.Array, kernel: jax.Array, stride: int,
               out_hw: tuple[int, int]) -> jax.Array:
  """sum_ij xp[:, s*y + i, s*x + j] * kernel[i, j] over a padded [N,H,W,C] input."""
  kh, kw, _, c = kernel.shape
  squeeze = c == 1  # One channel: shift along a contiguous W axis (2x faster).
  if squeeze:
    xp, kernel = xp[..., 0], kernel[..., 0]
  out = None
  for i in range(kh):
    for j in range(kw):
      term = _tap(xp, i, j, out_hw, stride) * kernel[i, j, 0]
      out = term if out is None else out + term
  return out[..., None] if squeeze else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _depthwise(x: jax.Array, kernel: jax.Array, stride: int,
               padding: tuple[tuple[int, int], ...]) -> jax.Array:
  (pt, pb), (pl, pr) = padding
  kh, kw = kernel.shape[:2]
  out_hw = ((x.shape[1] + pt + pb - kh) // stride + 1,
            (x.shape[2] + pl + pr - kw) // stride + 1)
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  return _correlate(xp, kernel, stride, out_hw)


def _depthwise_fwd(x, kernel, stride, padding):
  return _depthwise(x, kernel, stride, padding), (x, kernel)


def _depthwise_bwd(stride, padding, residuals, g):
  """Input and kernel gradients, both as shifted multiply-adds and reductions.

  The input gradient is computed per output phase (row % stride, column %
  stride): each phase is a stride-1 correlation of the cotangent with the
  kernel's taps of that phase, and the phases are interleaved. Autodiff of
  the strided slices instead pads every tap's product to full size.
  """
  x, kernel = residuals
  (pt, pb), (pl, pr) = padding
  kh, kw, _, c = kernel.shape
  n, h, w, _ = x.shape
  oh, ow = g.shape[1:3]
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  d_kernel = jnp.stack([jnp.sum(_tap(xp, i, j, (oh, ow), stride) * g, axis=(0, 1, 2))
                        for i in range(kh) for j in range(kw)])
  d_kernel = d_kernel.reshape(kernel.shape).astype(kernel.dtype)

  s = stride
  taps_h, taps_w = -(-kh // s), -(-kw // s)  # Kernel taps per phase.
  qh, qw = -(-xp.shape[1] // s), -(-xp.shape[2] // s)  # Phase grid.
  gp = jnp.pad(g, ((0, 0), (taps_h - 1, qh - oh), (taps_w - 1, qw - ow), (0, 0)))
  d_xp = None
  for a in range(s):
    for b in range(s):
      sub = kernel[a::s, b::s][::-1, ::-1]  # This phase's taps, flipped.
      if not (sub.shape[0] and sub.shape[1]):
        continue
      start = (taps_h - sub.shape[0], taps_w - sub.shape[1])
      phase = _correlate(gp[:, start[0]:, start[1]:], sub, 1, (qh, qw))
      if s > 1:  # Rows a, a + s, ...: interior padding (a reshape would need
        # an explicit output sharding under a mesh with explicit axes).
        phase = jax.lax.pad(phase, jnp.zeros((), phase.dtype), (
            (0, 0, 0), (a, s - 1 - a, s - 1), (b, s - 1 - b, s - 1), (0, 0, 0)))
      d_xp = phase if d_xp is None else d_xp + phase
  return d_xp[:, pt:pt + h, pl:pl + w].astype(x.dtype), d_kernel


_depthwise.defvjp(_depthwise_fwd, _depthwise_bwd)


def depthwise_conv2d(x: jax.Array, kernel: jax.Array, strides: int | Sequence[int] = 1,
                     padding: Padding = "VALID") -> jax.Array:
  """Depthwise 2D convolution (channel multiplier 1) as shifted multiply-adds.

  Args:
    x: [N, H, W, C].
    kernel: [kh, kw, 1, C] (HWIO with feature_group_count = C, nnx.Conv's layout).
    strides: an int or (sy, sx) with sy == sx.
    padding: 'SAME', 'VALID' or ((top, bottom), (left, right)) zero padding.
  Returns:
    [N, H', W', C], equal to lax.conv_general_dilated(..., feature_group_count=C).
  """
  strides = (strides, strides) if isinstance(strides, int) else tuple(strides)
  if strides[0] != strides[1]:
    raise ValueError(f"depthwise_conv2d needs equal strides, got {strides}")
  if kernel.shape[2] != 1 or kernel.shape[3] != x.shape[3]:
    raise ValueError(f"kernel {kernel.shape} is not depthwise for input {x.shape}")
  pads = _explicit_padding(padding, x.shape[1:3], kernel.shape[:2], strides)
  x, kernel = jnp.asarray(x), jnp.asarray(kernel)
  return _depthwise(x, kernel.astype(x.dtype), strides[0], pads)


def conv_general_dilated(lhs: jax.Array, rhs: jax.Array, window_strides, padding,
                         lhs_dilation=None, rhs_dilation=None, dimension_numbers=None,
                         feature_group_count: int = 1, **kwargs) -> jax.Array:
  """lax.conv_general_dilated, with 2D NHWC depthwise convolutions as shifts.

  Pass as `nnx.Conv(..., conv_general_dilated=layers.conv_general_dilated)`;
  every other convolution goes to lax unchanged.
  """
  ones = lambda d: d is None or all(v == 1 for v in d)
  if (lhs.ndim == 4 and rhs.ndim == 4 and feature_group_count > 1
      and ones(lhs_dilation) and ones(rhs_dilation)
      and len(set(window_strides)) == 1 and not any(kwargs.values())
      and jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      == jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC)
      and feature_group_count == lhs.shape[3] and rhs.shape[2:] == (1, lhs.shape[3])):
    return depthwise_conv2d(lhs, rhs, window_strides, padding)
  return jax.lax.conv_general_dilated(
      lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, **kwargs)


def dropout(layer: nnx.Dropout, x: jax.Array, rngs) -> jax.Array:
  """`layer(x, rngs=rngs)` in training; `x` itself in eval mode, without calling
  the layer, so exported graphs hold no dropout (and jax2onnx, which replaces
  nnx.Dropout.__call__ by one without `rngs`, can trace the network)."""
  return x if layer.deterministic else layer(x, rngs=rngs)


def conv(in_features: int, out_features: int, kernel_size: int, *, stride: int = 1,
         padding: int = 0, use_bias: bool = True, rngs: nnx.Rngs,
         kernel_init=nnx.initializers.lecun_normal()) -> nnx.Conv:
  """nn.Conv2d(in, out, k, stride, padding) as an nnx.Conv (symmetric zero padding)."""
  return nnx.Conv(in_features, out_features, (kernel_size, kernel_size),
                  strides=(stride, stride), padding=((padding, padding), (padding, padding)),
                  use_bias=use_bias, kernel_init=kernel_init, rngs=rngs)


def restart(layer: nnx.Module, kernel_scale: float, bias) -> None:
  """`layer`'s kernel times kernel_scale and its bias set to `bias` (a scalar or
  an array, broadcast): the start of an output layer that `model.identity_init`
  chooses (near-identity outputs, not in the papers)."""
  layer.kernel.value = layer.kernel.value * kernel_scale
  layer.bias.value = jnp.broadcast_to(jnp.asarray(bias, layer.bias.value.dtype),
                                      layer.bias.value.shape)


def statistics_as(bn: nnx.BatchNorm) -> nnx.BatchNorm:
  """bn with its running mean and variance held as `variables.Statistic`s (same
  values: only writes under jit are cheaper)."""
  bn.mean = variables.Statistic(bn.mean.get_value())
  bn.var = variables.Statistic(bn.var.get_value())
  return bn


def batch_norm(num_features: int, *, rngs: nnx.Rngs) -> nnx.BatchNorm:
  """nn.BatchNorm2d defaults: eps 1e-5, running stats updated with weight 0.1.

  (PyTorch's running_var uses the unbiased batch variance, Flax the biased one:
  a negligible difference for training, none for imported weights.)
  """
  return statistics_as(nnx.BatchNorm(num_features, momentum=0.9, epsilon=1e-5, rngs=rngs))


def conv_transpose2d(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  """PyTorch's ConvTranspose2d(stride, padding) of NHWC x with kernel [k, k, I, O].

  out = (in - 1) * stride - 2 * padding + k, with
  y[o] = sum_{t, i: o = t * stride + i - padding} x[t] kernel[i] per axis.
  Computed per output phase r = (o + padding) % stride: every phase is a
  stride-1 correlation of x with the kernel taps i = stride * m + r, so all
  phases come from ONE stride-1 convolution with stride**2 * O output
  channels, interleaved afterwards. The textbook form (a convolution of the
  input dilated by the stride, `lhs_dilation`) and its gradients run 10-30x
  slower on XLA's CPU backend (BENCHMARKS.md); this form's gradients are
  stride-1 convolutions too.
  """
  s, p = stride, padding
  k, _, cin, cout = kernel.shape
  taps = -(-k // s)  # Kernel taps per phase (zero taps pad k up to taps * s).
  kernel = jnp.pad(kernel, ((0, taps * s - k), (0, taps * s - k), (0, 0), (0, 0)))
  n, h, w, _ = x.shape
  oh, ow = (h - 1) * s - 2 * p + k, (w - 1) * s - 2 * p + k
  uh, uw = ceil_div(oh + p, s), ceil_div(ow + p, s)  # Outputs per phase.
  xp = jnp.pad(x, ((0, 0), (taps - 1, max(uh - h, 0)), (taps - 1, max(uw - w, 0)), (0, 0)))
  xp = xp[:, :uh + taps - 1, :uw + taps - 1]
  # [m, r, m', c, I, O] -> flip m, m' (a correlation) -> [m, m', I, (r, c, O)].
  sub = kernel.reshape(taps, s, taps, s, cin, cout)[::-1, :, ::-1]
  sub = sub.transpose(0, 2, 4, 1, 3, 5).reshape(taps, taps, cin, s * s * cout)
  z = jax.lax.conv_general_dilated(xp, sub.astype(x.dtype), (1, 1), "VALID",
                                   dimension_numbers=_NHWC)
  if _PORTABLE:  # Channels are (r, c, O): move r, c next to the rows and columns.
    out = z.reshape(n, uh, uw, s, s, cout).transpose(0, 1, 3, 2, 4, 5)
    return crop_to(out.reshape(n, uh * s, uw * s, cout), (slice(p, p + oh), slice(p, p + ow)))
  out = None
  for r in range(s):
    for c in range(s):
      phase = z[..., (r * s + c) * cout:(r * s + c + 1) * cout]
      if s > 1:  # Rows r, r + s, ...: interior padding (a reshape would need an
        # explicit output sharding under a mesh with explicit axes).
        phase = jax.lax.pad(phase, jnp.zeros((), phase.dtype), (
            (0, 0, 0), (r, s - 1 - r, s - 1), (c, s - 1 - c, s - 1), (0, 0, 0)))
      out = phase if out is None else out + phase
  return crop_to(out, (slice(p, p + oh), slice(p, p + ow)))


class BatchNorm(nnx.BatchNorm):
  """nnx.BatchNorm whose running statistics start as the plain mean of the batches.

  The running mean and variance are updated with weight max(1 - momentum,
  1 / (n + 1)) for the n-th batch (n = `num_batches_tracked`, PyTorch's buffer
  of that name): the first batch replaces the initial (0, 1), the next ones are
  averaged, and after 1 / (1 - momentum) batches this is the usual moving
  average. Why: with nnx's (and PyTorch's) update the initial variance of 1
  keeps a weight momentum**n, 0.99**20 = 82% after 20 steps, while a layer's
  real variance is often ~0.1. In eval mode every layer then divides by a
  variance ~10x too large, and the shrinkage compounds layer by layer: a
  briefly trained EfficientNet gave the same output for every image. Eval mode
  is unchanged; with an imported `num_batches_tracked` (PyTorch counts it even
  with a fixed momentum) the updates equal the usual ones.
  """

  def __init__(self, num_features: int, *, momentum: float, epsilon: float,
               rngs: nnx.Rngs, **kwargs):
    super().__init__(num_features, momentum=momentum, epsilon=epsilon, rngs=rngs,
                     **kwargs)
    statistics_as(self)
    self.num_batches_tracked = variables.Statistic(jnp.zeros((), jnp.int32))

  def __call__(self, x: jax.Array, use_running_average: bool | None = None, *,
               mask: jax.Array | None = None) -> jax.Array:
    old_mean, old_var = self.mean[...], self.var[...]
    y = super().__call__(x, use_running_average, mask=mask)
    frozen = (use_running_average if use_running_average is not None
              else self.use_running_average)
    if not frozen:
      n = self.num_batches_tracked[...]
      rate = variables.averaging_rate(self.momentum, n)
      # nnx moved each statistic by (1 - momentum) of the way to the batch's.
      gain = rate / (1.0 - self.momentum)
      self.mean[...] = old_mean + gain * (self.mean[...] - old_mean)
      self.var[...] = old_var + gain * (self.var[...] - old_var)
      self.num_batches_tracked[...] = n + 1
    return y


class ConvTranspose2d(nnx.Module):
  """nn.ConvTranspose2d(in, out, k, stride, padding): out = (in - 1) * s - 2p + k.

  kernel is [kh, kw, in, out] (PyTorch's weight [in, out, kh, kw] transposed);
  computed by `conv_transpose2d` (per-phase stride-1 convolutions).
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               stride: int = 1, padding: int = 0, use_bias: bool = True,
               kernel_init=nnx.initializers.lecun_normal(), rngs: nnx.Rngs):
    if padding > kernel_size - 1:
      raise ValueError(f"ConvTranspose2d: padding {padding} > kernel_size - 1 = {kernel_size - 1}")
    self.stride, self.padding, self.kernel_size = stride, padding, kernel_size
    self.kernel = nnx.Param(kernel_init(
        rngs.params(), (kernel_size, kernel_size, in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None

  def __call__(self, x: jax.Array) -> jax.Array:
    y = conv_transpose2d(x, self.kernel[...], self.stride, self.padding)
    if self.bias is not None:
      y = y + self.bias[...]
    return y


torch_import.register_rules(ConvTranspose2d, (
    torch_import.Rule("weight", "kernel", torch_import.conv_transpose_to_nnx,
                      torch_import.conv_transpose_to_torch),
    torch_import.Rule("bias", "bias")))


def gaussian_kernel(kernel_size: int, sigma: float) -> np.ndarray:
  """Normalized 2D Gaussian [k, k] (the product of two 1D Gaussians)."""
  grid = np.arange(kernel_size, dtype=np.float64) - (kernel_size - 1) / 2
  g = np.exp(-(grid / sigma) ** 2 / 2) / (sigma * math.sqrt(2 * math.pi))
  k = np.outer(g, g)
  return (k / k.sum()).astype(np.float32)


class GaussianSmoothing(nnx.Module):
  """Depthwise Gaussian blur with zero padding; `weight` is a [C, 1, k, k] buffer
  (the PyTorch layout, so imported checkpoints map onto it unchanged)."""

  def __init__(self, channels: int, kernel_size: int, sigma: float, padding: int = 0):
    kernel = np.broadcast_to(gaussian_kernel(kernel_size, sigma),
                             (channels, 1, kernel_size, kernel_size))
    self.weight = Buffer(jnp.asarray(kernel))
    self.padding = padding
    self.channels = channels

  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = jnp.transpose(self.weight[...], (2, 3, 1, 0))  # -> [k, k, 1, C]
    p = self.padding
    return depthwise_conv2d(x, kernel, 1, ((p, p), (p, p)))
