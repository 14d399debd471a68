"""Pixel-wise colour transforms (PCT-Net, Guerreiro et al., CVPR 2023), NHWC.

A network predicts a 12-channel parameter map at low resolution; the map is
upsampled to the image with PyTorch's bicubic kernel and applied per pixel:
y = M x + b, M = channels 0-8 row-major (output channel i, input channel j),
b = channels 9-11. `apply_upsampled` fuses the upsampling with the transform
in row chunks, so a 4K image never holds the full-resolution map at once.
"""

from collections.abc import Callable, Mapping, Sequence

import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from harmonax.models import layers

# PyTorch's bicubic constant (upsample_bicubic2d); jax.image.resize's 'cubic'
# uses Keys' a = -0.5 and renormalises the weights at the borders instead of
# clamping the indices, so its results differ from PyTorch's everywhere.
CUBIC_A = -0.75
NUM_PARAMS = 12


def _cubic_near(x: np.ndarray) -> np.ndarray:  # |x| <= 1
  return ((CUBIC_A + 2) * x - (CUBIC_A + 3)) * x * x + 1


def _cubic_far(x: np.ndarray) -> np.ndarray:  # 1 < |x| < 2
  return ((CUBIC_A * x - 5 * CUBIC_A) * x + 8 * CUBIC_A) * x - 4 * CUBIC_A


def cubic_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray]:
  """Source indices and weights [n_out, 4] of torch's bicubic resize along one
  axis (align_corners=False, no antialias): half-pixel centres, the source
  position not clamped at 0, out-of-range taps clamped to the border pixel.

  numpy constants in float64; for a symbolic n_out (an export with free height
  and width), jax arrays computed in float32 in the graph.
  """
  if not isinstance(n_out, int):
    # lax's iota, not jnp.arange: jax2onnx's arange takes no symbolic length.
    src = ((lax.broadcasted_iota(jnp.float32, (n_out,), 0) + 0.5)
           * (n_in / jnp.asarray(n_out, jnp.float32)) - 0.5)
    base = jnp.floor(src)
    t = src - base
    idx = jnp.clip(base[:, None].astype(jnp.int32) + jnp.arange(-1, 3), 0, n_in - 1)
    return idx, jnp.stack([_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t),
                           _cubic_far(2 - t)], -1)
  src = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
  base = np.floor(src)
  t = src - base
  idx = np.clip(base[:, None].astype(np.int64) + np.arange(-1, 3), 0, n_in - 1)
  w = np.stack([_cubic_far(t + 1), _cubic_near(t), _cubic_near(1 - t), _cubic_far(2 - t)], -1)
  return idx.astype(np.int32), w.astype(np.float32)


def _interp(x: jax.Array, idx: jax.Array, w: jax.Array, axis: int) -> jax.Array:
  """sum_k w[:, k] * x[idx[:, k]] along `axis` (4 gathered taps)."""
  shape = [1] * x.ndim
  shape[axis] = idx.shape[0]
  out = 0.0
  for k in range(idx.shape[1]):
    out = out + jnp.take(x, idx[:, k], axis=axis) * w[:, k].reshape(shape).astype(x.dtype)
  return out


def resize_bicubic(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """[B,H,W,C] -> [B,*size,C] as torch F.interpolate(mode='bicubic',
  align_corners=False) (no antialias; values may overshoot the input range)."""
  for axis, n in ((1, size[0]), (2, size[1])):
    idx, w = cubic_taps(x.shape[axis], n)
    x = _interp(x, jnp.asarray(idx), jnp.asarray(w), axis)
  return x


def affine_transform(params: jax.Array, x: jax.Array) -> jax.Array:
  """y_i = sum_j M_ij x_j + b_i per pixel; params [..., 12], x [..., 3]."""
  rows = [sum(params[..., 3 * i + j] * x[..., j] for j in range(3)) + params[..., 9 + i]
          for i in range(3)]
  return jnp.stack(rows, axis=-1)


def identity_params(mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
  """The 12 parameters [M row-major, b] that map an input normalised with
  (mean, std) back to itself in [0, 1]: M = diag(std), b = mean."""
  return np.concatenate([np.diag(np.asarray(std, np.float32)).reshape(-1),
                         np.asarray(mean, np.float32)])


def apply_upsampled(lowres: jax.Array, full: Mapping[str, jax.Array],
                    fn: Callable[[jax.Array, dict[str, jax.Array]], jax.Array],
                    chunk_pixels: int) -> jax.Array:
  """fn(bicubic upsampling of `lowres` to full resolution, full) -> [B,H,W,3] f32.

  `lowres` [B,h,w,C] is resized along W once ([B,h,W,C], small); then rows of
  at most chunk_pixels / W pixels are upsampled along H and handed to `fn`
  with the same rows of every array in `full` ([B,H,W,*], any dtype), and the
  results written into the output. Only one chunk of the C-channel map exists
  at a time (a fori_loop; for a symbolic size, `layers.row_chunks`); inputs
  that fit one chunk take a direct path (training crops, differentiable).
  """
  b, h, w, _ = lowres.shape
  height, width = next(iter(full.values())).shape[1:3]
  yi, yw = cubic_taps(h, height)
  xi, xw = cubic_taps(w, width)
  cols = _interp(lowres, jnp.asarray(xi), jnp.asarray(xw), axis=2)
  yi, yw = jnp.asarray(yi), jnp.asarray(yw)

  def rows_at(idx):
    up = _interp(cols, jnp.take(yi, idx, axis=0), jnp.take(yw, idx, axis=0), axis=1)
    return fn(up, {k: jnp.take(v, idx, axis=1) for k, v in full.items()})

  if not isinstance(height * width, int):  # A symbolic size (a dynamic export).
    return layers.row_chunks(rows_at, (b, height, width, 3), jnp.float32,
                             layers.symbolic_chunks(chunk_pixels))
  rows = max(1, min(height, chunk_pixels // width))
  if rows >= height:
    return fn(_interp(cols, yi, yw, axis=1), dict(full))

  def body(i, out):
    # The last chunk is shifted up to end at the bottom row: it recomputes a few
    # rows instead of needing padded (copied) inputs.
    start = jnp.minimum(i * rows, height - rows)
    up = _interp(cols, lax.dynamic_slice_in_dim(yi, start, rows),
                 lax.dynamic_slice_in_dim(yw, start, rows), axis=1)
    chunk = {k: lax.dynamic_slice_in_dim(v, start, rows, axis=1) for k, v in full.items()}
    return lax.dynamic_update_slice_in_dim(out, fn(up, chunk).astype(out.dtype), start, 1)

  out = jnp.zeros((b, height, width, 3), jnp.float32)
  return layers.fori_loop(-(-height // rows), body, out)


def sobel_magnitude(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  """kornia.filters.sobel on NHWC: sqrt(gx^2 + gy^2 + eps) per channel, with the
  3x3 Sobel kernels normalised by their absolute sum (8) and replicate padding."""
  h, w = x.shape[1:3]
  # Replicate padding by gathering clamped rows/columns: jnp.pad(mode='edge')
  # slices the (sharded) batch axis too, which explicit-axis meshes reject.
  p = jnp.take(x, np.clip(np.arange(-1, h + 1), 0, h - 1), axis=1)
  p = jnp.take(p, np.clip(np.arange(-1, w + 1), 0, w - 1), axis=2)

  def at(dy: int, dx: int) -> jax.Array:
    return p[:, dy:dy + h, dx:dx + w]

  gx = (at(0, 2) - at(0, 0) + 2 * (at(1, 2) - at(1, 0)) + at(2, 2) - at(2, 0)) / 8
  gy = (at(2, 0) - at(0, 0) + 2 * (at(2, 1) - at(0, 1)) + at(2, 2) - at(0, 2)) / 8
  return jnp.sqrt(gx * gx + gy * gy + eps)
