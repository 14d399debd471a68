"""Trilinear 3D look-up tables (LUTs) in pure JAX, differentiable in the table.

The layout and bin arithmetic follow the official CDTNet / Image-Adaptive-3DLUT
`trilinear` extension: a table is [C, B, G, R] (R fastest) of `dim` entries per
axis, `binsize = 1.000001 / (dim - 1)` (so an input of exactly 1 falls in the
last cell with a fraction just under 1), the cell is `floor(x / binsize)` and
the fraction `fmod(x, binsize) / binsize`. Inputs are not clamped: in [0, 1]
every cell lies inside the table; outside it the official kernel reads beyond
the table, here the cell index is clamped to the edge cell instead.

Batched semantics are per image: `apply_lut(luts, images)` maps image b through
luts[b] only. The official CUDA kernel does not (it strides the image's
channels by H * W * batch, see `tests/lut_test.py`), so its batch > 1 outputs
are not reproduced: the official batch-1 output is the reference.

Memory: pixels are processed in chunks of `chunk` (default 2**18) under
`lax.map` (unrolled in fixed-size exports; for symbolic sizes, chunks of
rows: `layers.row_chunks`), so the eight gathered corners of a 4K image
never exist at once;
the table gradient (a scatter-add per chunk) accumulates across chunks.
"""

import jax
import jax.numpy as jnp
import numpy as np

from harmonax.models import layers

DEFAULT_DIM = 33
DEFAULT_CHUNK = 2 ** 18


def binsize(dim: int) -> float:
  """The official bin width: slightly above 1 / (dim - 1) so x = 1 stays in range."""
  return 1.000001 / (dim - 1)


def identity_lut(dim: int = DEFAULT_DIM) -> np.ndarray:
  """[3, dim, dim, dim] table mapping every grid colour to itself.

  Entry [c, b, g, r] holds channel c of the colour (r, g, b) / (dim - 1), the
  values of the official IdentityLUT33.txt.
  """
  grid = np.arange(dim, dtype=np.float64) / (dim - 1)
  b, g, r = np.meshgrid(grid, grid, grid, indexing="ij")
  return np.stack([r, g, b]).astype(np.float32)


def _interpolate(table: jax.Array, rgb: jax.Array, dim: int) -> jax.Array:
  """table [dim**3, C] (rows indexed r + g * dim + b * dim**2), rgb [N, 3] -> [N, C]."""
  size = jnp.float32(binsize(dim))
  # The official arithmetic, in float32: cell by floor(x / binsize), fraction by fmod.
  cell = jnp.clip(jnp.floor(rgb / size), 0, dim - 2).astype(jnp.int32)
  frac = jnp.fmod(rgb, size) / size
  base = cell[:, 0] + cell[:, 1] * dim + cell[:, 2] * dim * dim
  out = 0.0
  for dr in (0, 1):
    wr = frac[:, 0] if dr else 1.0 - frac[:, 0]
    for dg in (0, 1):
      wg = frac[:, 1] if dg else 1.0 - frac[:, 1]
      for db in (0, 1):
        wb = frac[:, 2] if db else 1.0 - frac[:, 2]
        corner = jnp.take(table, base + (dr + dg * dim + db * dim * dim), axis=0)
        out = out + (wr * wg * wb)[:, None] * corner
  return out


def _apply_one(lut: jax.Array, image: jax.Array, chunk: int) -> jax.Array:
  """lut [C, dim, dim, dim], image [H, W, 3] -> [H, W, C]."""
  c, dim = lut.shape[0], lut.shape[-1]
  h, w, _ = image.shape
  table = lut.reshape(c, dim ** 3).T  # [dim**3, C]: one gather fetches all channels.
  pixels = image.reshape(h * w, 3)
  n = h * w
  if not isinstance(n, int) or n <= chunk:  # Symbolic sizes: apply_lut's chunks of rows.
    return _interpolate(table, pixels, dim).reshape(h, w, c)
  if layers.portable():  # An export: the chunks unrolled, the last one shorter.
    out = [_interpolate(table, pixels[i:i + chunk], dim) for i in range(0, n, chunk)]
    return jnp.concatenate(out).reshape(h, w, c)
  steps = -(-n // chunk)
  pixels = jnp.pad(pixels, ((0, steps * chunk - n), (0, 0)))
  out = jax.lax.map(lambda p: _interpolate(table, p, dim), pixels.reshape(steps, chunk, 3))
  return out.reshape(steps * chunk, c)[:n].reshape(h, w, c)


def apply_lut(luts: jax.Array, images: jax.Array, chunk: int = DEFAULT_CHUNK) -> jax.Array:
  """Trilinear interpolation of images [B, H, W, 3] (RGB in [0, 1]) through
  per-image tables luts [B, C, dim, dim, dim] ([C, B, G, R] each) -> [B, H, W, C].

  A single table [C, dim, dim, dim] is shared by the whole batch.
  """
  if luts.ndim == 4:
    luts = jnp.broadcast_to(luts, (images.shape[0],) + luts.shape)
  if luts.shape[0] != images.shape[0] or images.shape[-1] != 3:
    raise ValueError(f"apply_lut: luts {luts.shape} and images {images.shape} do not "
                     "match ([B, C, d, d, d] and [B, H, W, 3])")
  images = images.astype(luts.dtype)
  per_image = jax.vmap(lambda l, x: _apply_one(l, x, chunk))
  b, h, w, _ = images.shape
  if not isinstance(h * w, int):  # A symbolic size (a dynamic export): chunks of rows.
    return layers.row_chunks(lambda idx: per_image(luts, jnp.take(images, idx, axis=1)),
                             (b, h, w, luts.shape[1]), luts.dtype, layers.symbolic_chunks(chunk))
  return per_image(luts, images)
