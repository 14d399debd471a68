"""harmonax.models.lut: the official trilinear LUT arithmetic, per-image batches, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmonax.models import lut

DIM = 33


def official_kernel(table: np.ndarray, images_nchw: np.ndarray, batch_stride: bool
                    ) -> np.ndarray:
  """The official `trilinear` extension's forward, transcribed in float32 numpy.

  table [3, dim, dim, dim] flat as the C code reads it; images [B, 3, H, W].
  batch_stride=False is the CPU kernel (TriLinearForwardCpu: pixels 0..H*W-1,
  channel stride H*W: it only ever touches the first image). True is the CUDA
  kernel (TriLinearForward): pixels 0..H*W*B-1 with channel stride H*W*B over
  the NCHW buffer, which mixes channels of different images when B > 1.
  """
  b, _, h, w = images_nchw.shape
  dim = table.shape[-1]
  flat_lut = table.reshape(-1).astype(np.float32)
  shift = dim ** 3
  size = np.float32(1.000001 / (dim - 1))
  flat = images_nchw.reshape(-1).astype(np.float32)
  n = h * w * (b if batch_stride else 1)
  out = np.zeros_like(flat)
  r, g, bl = flat[:n], flat[n:2 * n], flat[2 * n:3 * n]
  ids = [np.floor(v / size).astype(np.int64) for v in (r, g, bl)]
  ds = [np.fmod(v, size) / size for v in (r, g, bl)]
  for c in range(3):
    acc = np.zeros(n, np.float32)
    for dr in (0, 1):
      for dg in (0, 1):
        for db in (0, 1):
          weight = ((ds[0] if dr else 1 - ds[0]) * (ds[1] if dg else 1 - ds[1])
                    * (ds[2] if db else 1 - ds[2]))
          idx = (ids[0] + dr) + (ids[1] + dg) * dim + (ids[2] + db) * dim * dim
          acc += weight * flat_lut[idx + c * shift]
    out[c * n:(c + 1) * n] = acc
  return out.reshape(images_nchw.shape)


def random_images(b=2, h=6, w=7, seed=0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  x = rng.uniform(0, 1, (b, h, w, 3)).astype(np.float32)
  # Exactly 0 and 1 (and grid points) on some pixels, every channel.
  x[:, 0, 0] = 0.0
  x[:, 0, 1] = 1.0
  x[:, 0, 2] = (0.0, 1.0, 0.5)
  x[:, 1, 0] = 1.0 / 32
  return x


def random_luts(b=2, seed=1) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.normal(0, 1, (b, 3, DIM, DIM, DIM)).astype(np.float32)


def test_identity_lut_matches_official_file_layout_and_returns_input():
  table = lut.identity_lut(DIM)
  # IdentityLUT33.txt line n = b * 33**2 + g * 33 + r holds (r, g, b) / 32.
  assert table[:, 2, 1, 0].tolist() == pytest.approx([0.0, 1 / 32, 2 / 32])
  x = random_images()
  out = np.asarray(lut.apply_lut(jnp.asarray(table), jnp.asarray(x)))
  np.testing.assert_allclose(out, x, atol=2e-6)


@pytest.mark.parametrize("chunk", [lut.DEFAULT_CHUNK, 16])
def test_equals_official_arithmetic_per_image(chunk):
  x, tables = random_images(), random_luts()
  out = np.asarray(lut.apply_lut(jnp.asarray(tables), jnp.asarray(x), chunk=chunk))
  for i in range(x.shape[0]):
    # The official CPU kernel at batch 1 is the reference.
    ref = official_kernel(tables[i], x[i:i + 1].transpose(0, 3, 1, 2), batch_stride=False)
    np.testing.assert_allclose(out[i], ref[0].transpose(1, 2, 0), rtol=1e-5, atol=1e-5)


def test_official_cuda_batch_mixing_is_not_reproduced():
  """The CUDA kernel at batch 2 reads image 0's G plane as 'R' of pixels H*W..,
  so its per-image output differs from running each image alone; ours equals
  running each image alone (and the CUDA kernel at batch 1)."""
  x, tables = random_images(), random_luts(1)
  nchw = x.transpose(0, 3, 1, 2)
  batched_cuda = official_kernel(tables[0], nchw, batch_stride=True)
  single = np.concatenate([official_kernel(tables[0], nchw[i:i + 1], batch_stride=True)
                           for i in range(2)])
  assert np.abs(batched_cuda - single).max() > 0.1  # The official batch > 1 bug.
  ours = np.asarray(lut.apply_lut(jnp.asarray(tables[0]), jnp.asarray(x)))
  np.testing.assert_allclose(ours, single.transpose(0, 2, 3, 1), rtol=1e-5, atol=1e-5)


def test_gradient_wrt_lut_matches_finite_differences():
  x = random_images(b=1, h=4, w=5)
  tables = jnp.asarray(random_luts(1))
  weights = jnp.asarray(np.random.default_rng(2).normal(size=(1, 4, 5, 3)), jnp.float32)

  def f(t):
    return jnp.sum(weights * lut.apply_lut(t, jnp.asarray(x), chunk=8))

  grad = np.asarray(jax.grad(f)(tables))
  # The function is linear in the table: central differences are exact up to
  # rounding, so probe the entries the pixels touch plus an untouched one.
  touched = np.argwhere(np.abs(grad) > 0)[:12].tolist() + [[0, 0, 30, 30, 30]]
  eps = 1e-2
  for idx in touched:
    e = np.zeros(tables.shape, np.float32)
    e[tuple(idx)] = eps
    fd = (f(tables + e) - f(tables - e)) / (2 * eps)
    assert float(fd) == pytest.approx(float(grad[tuple(idx)]), abs=2e-3), idx
  assert len(touched) > 5
