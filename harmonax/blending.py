"""Classical compositing baselines: alpha, feathered and Laplacian pyramid blending,
plus Reinhard colour transfer of the foreground toward the background.

Deep Image Compositing (Zhang et al., WACV 2021) compares against alpha and
Laplacian pyramid blending with the same mask; they are also the first rows of
every compositing results table. All blends take NHWC float arrays in [0, 1]
(foreground, background [B,H,W,C], alpha [B,H,W,1]) of any size and are
jit-able. The Laplacian pyramid is Burt and Adelson's (1983): the 5-tap
binomial kernel [1, 4, 6, 4, 1] / 16, mirror (reflect-101) borders, decimation
by 2 keeping even rows/columns (OpenCV's pyrDown/pyrUp convention, sizes
ceil(n / 2)).
"""

import jax
import jax.numpy as jnp
import numpy as np

from data_builders.harmonization_composites import color_transfer
from harmonax.models import layers

BINOMIAL5 = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)


def alpha_blend(foreground: jax.Array, background: jax.Array, alpha: jax.Array) -> jax.Array:
  """alpha * foreground + (1 - alpha) * background."""
  return alpha * foreground + (1.0 - alpha) * background


def _filter_axis(x: jax.Array, taps: np.ndarray, axis: int, mode: str) -> jax.Array:
  """Correlation of [B,H,W,C] with 1-D `taps` along `axis` (1 or 2), same size.

  Shifted slices instead of a convolution: any channel count, no kernel
  layout, and exact (each output is the same sum of products in float32).
  """
  r = len(taps) // 2
  widths = [(0, 0)] * 4
  widths[axis] = (r, r)
  n = x.shape[axis]
  if mode == "reflect" and n <= r:
    mode = "symmetric" if n > 1 else "edge"  # reflect-101 needs n > r; tiny levels.
  padded = jnp.pad(x, widths, mode=mode)
  out = 0.0
  for i, t in enumerate(taps):
    out = out + float(t) * jax.lax.slice_in_dim(padded, i, i + n, axis=axis)
  return out


def blur(x: jax.Array, taps=BINOMIAL5, mode: str = "reflect") -> jax.Array:
  """Separable blur of [B,H,W,C] with the same 1-D taps on rows and columns."""
  taps = np.asarray(taps, np.float64)
  return _filter_axis(_filter_axis(x, taps, 1, mode), taps, 2, mode)


def gaussian_blur(x: jax.Array, sigma: float) -> jax.Array:
  """Gaussian blur of [B,H,W,C] (sigma in pixels, radius 3 sigma, edge borders)."""
  if sigma <= 0:
    return x
  size = 2 * int(np.ceil(3 * sigma)) + 1
  taps = layers.gaussian_kernel(size, sigma).sum(axis=0)  # The 2-D kernel's marginal.
  return blur(x, taps / taps.sum(), mode="edge")


def pyr_down(x: jax.Array) -> jax.Array:
  """Blur and keep the even rows and columns: [B,H,W,C] -> [B,ceil(H/2),ceil(W/2),C]."""
  return blur(x)[:, ::2, ::2]


def pyr_up(x: jax.Array, size: tuple[int, int]) -> jax.Array:
  """Zeros between samples up to `size`, then blur with 4x the kernel (2x per axis)."""
  b, _, _, c = x.shape
  up = jnp.zeros((b, *size, c), x.dtype).at[:, ::2, ::2].set(x)
  return blur(up, tuple(2 * t for t in BINOMIAL5))


def laplacian_pyramid(x: jax.Array, levels: int) -> list[jax.Array]:
  """[L_0, ..., L_{levels-2}, G_{levels-1}]: band-pass levels, then the coarsest
  Gaussian level. `collapse` inverts it exactly (up to float rounding)."""
  pyramid = []
  for _ in range(levels - 1):
    down = pyr_down(x)
    pyramid.append(x - pyr_up(down, x.shape[1:3]))
    x = down
  return pyramid + [x]


def gaussian_pyramid(x: jax.Array, levels: int) -> list[jax.Array]:
  """[G_0 = x, G_1, ..., G_{levels-1}]."""
  pyramid = [x]
  for _ in range(levels - 1):
    pyramid.append(pyr_down(pyramid[-1]))
  return pyramid


def collapse(pyramid: list[jax.Array]) -> jax.Array:
  """Inverse of `laplacian_pyramid`: G_i = L_i + up(G_{i+1}), from the coarsest."""
  x = pyramid[-1]
  for band in reversed(pyramid[:-1]):
    x = band + pyr_up(x, band.shape[1:3])
  return x


def max_levels(height: int, width: int) -> int:
  """Levels until the coarsest side is 1 pixel: 1 + ceil(log2(min side))."""
  return 1 + int(np.ceil(np.log2(max(min(height, width), 1))))


def laplacian_blend(foreground: jax.Array, background: jax.Array, alpha: jax.Array,
                    levels: int = 6) -> jax.Array:
  """Laplacian pyramid blending (Burt and Adelson 1983): each band of the two
  images is alpha-blended with the Gaussian pyramid of the mask, then the
  pyramid is collapsed. `levels` is capped at what the image size allows.
  A mask of ones gives the foreground (up to float rounding)."""
  levels = max(1, min(levels, max_levels(*foreground.shape[1:3])))
  weights = gaussian_pyramid(alpha, levels)
  bands = [alpha_blend(f, b, w) for f, b, w in zip(laplacian_pyramid(foreground, levels),
                                                  laplacian_pyramid(background, levels),
                                                  weights)]
  return collapse(bands)


def feathered_blend(foreground: jax.Array, background: jax.Array, alpha: jax.Array,
                    sigma: float = 2.0) -> jax.Array:
  """Alpha blending with the mask softened by a Gaussian of `sigma` pixels."""
  return alpha_blend(foreground, background, gaussian_blur(alpha, sigma))


BLENDS = ("alpha", "feathered", "laplacian")


def blend(method: str, foreground: jax.Array, background: jax.Array, alpha: jax.Array,
          *, feather_sigma: float = 2.0, levels: int = 6) -> jax.Array:
  """One of BLENDS by name, clipped to [0, 1]."""
  if method == "alpha":
    out = alpha_blend(foreground, background, alpha)
  elif method == "feathered":
    out = feathered_blend(foreground, background, alpha, feather_sigma)
  elif method == "laplacian":
    out = laplacian_blend(foreground, background, alpha, levels)
  else:
    raise ValueError(f"Unknown blend {method!r}; valid: {BLENDS}")
  return jnp.clip(out, 0.0, 1.0)


def reinhard_harmonize(composite: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Harmonization baseline: Reinhard transfer (the builders' color_transfer.reinhard)
  of the foreground pixels toward the background's l-alpha-beta statistics.

  composite: [H,W,3] float in [0, 1]; mask: [H,W] or [H,W,1], foreground >= 0.5.
  Returns [H,W,3] float in [0, 1] whose background equals the composite's. Host
  side (numpy), like the data builders' recolouring; an empty foreground or
  background returns the composite unchanged.
  """
  composite = np.asarray(composite, np.float64)
  fg = np.asarray(mask).reshape(composite.shape[:2]) >= 0.5
  if fg.all() or not fg.any():
    return composite.astype(np.float32)
  out = composite.copy()
  out[fg] = np.clip(color_transfer.reinhard(composite[fg], composite[~fg]), 0.0, 1.0)
  return out.astype(np.float32)
