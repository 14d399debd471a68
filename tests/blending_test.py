"""Classical blending baselines against an independent numpy/scipy reference."""

import jax
import numpy as np
import pytest
from scipy import ndimage

from harmonax import blending
from data_builders.harmonization_composites import color_transfer

_K = np.array([1, 4, 6, 4, 1], np.float64) / 16


def _np_blur(x, k):
  # scipy's 'mirror' is reflect-101 (d c b | a b c d | c b a), OpenCV's default.
  x = ndimage.correlate1d(x, k, axis=1, mode="mirror")
  return ndimage.correlate1d(x, k, axis=2, mode="mirror")


def _np_laplacian_blend(fg, bg, alpha, levels):
  def down(x):
    return _np_blur(x, _K)[:, ::2, ::2]

  def up(x, shape):
    z = np.zeros(x.shape[:1] + shape + x.shape[3:])
    z[:, ::2, ::2] = x
    return _np_blur(z, 2 * _K)

  def lap(x):
    out = []
    for _ in range(levels - 1):
      d = down(x)
      out.append(x - up(d, x.shape[1:3]))
      x = d
    return out + [x]

  gm = [alpha]
  for _ in range(levels - 1):
    gm.append(down(gm[-1]))
  bands = [w * f + (1 - w) * b for f, b, w in zip(lap(fg), lap(bg), gm)]
  x = bands[-1]
  for band in reversed(bands[:-1]):
    x = band + up(x, band.shape[1:3])
  return x


@pytest.fixture(name="images")
def _images():
  rng = np.random.default_rng(0)
  fg = rng.uniform(0, 1, (2, 37, 50, 3))
  bg = rng.uniform(0, 1, (2, 37, 50, 3))
  alpha = np.zeros((2, 37, 50, 1))
  alpha[:, 8:30, 10:35] = 1.0
  return fg, bg, alpha


def test_laplacian_blend_equals_numpy_reference(images):
  fg, bg, alpha = images
  ours = jax.jit(blending.laplacian_blend, static_argnums=3)(
      *(x.astype(np.float32) for x in images), 4)
  np.testing.assert_allclose(np.asarray(ours), _np_laplacian_blend(fg, bg, alpha, 4),
                             atol=2e-6)


def test_pyramid_collapse_and_ones_mask_reconstruct(images):
  fg, bg, _ = (x.astype(np.float32) for x in images)
  for levels in (1, 3, 6):
    assert len(jax.eval_shape(lambda x: blending.laplacian_pyramid(x, levels), fg)) == levels
    rebuilt = jax.jit(lambda x: blending.collapse(blending.laplacian_pyramid(x, levels)))(fg)
    np.testing.assert_allclose(np.asarray(rebuilt), fg, atol=1e-6)
    ones = np.ones(fg.shape[:3] + (1,), np.float32)
    blend = jax.jit(blending.laplacian_blend, static_argnums=3)
    np.testing.assert_allclose(np.asarray(blend(fg, bg, ones, levels)), fg, atol=1e-6)
    np.testing.assert_allclose(np.asarray(blend(fg, bg, 0 * ones, levels)), bg, atol=1e-6)


def test_tiny_images_and_level_cap():
  x = np.random.default_rng(1).uniform(0, 1, (1, 3, 5, 3)).astype(np.float32)
  ones = np.ones((1, 3, 5, 1), np.float32)
  out = jax.jit(blending.laplacian_blend, static_argnums=3)(x, 1 - x, ones, 10)
  np.testing.assert_allclose(np.asarray(out), x, atol=1e-6)


def test_alpha_and_feathered(images):
  fg, bg, alpha = (x.astype(np.float32) for x in images)
  blend = jax.jit(blending.blend, static_argnums=0, static_argnames="feather_sigma")
  np.testing.assert_allclose(np.asarray(blend("alpha", fg, bg, alpha)),
                             np.where(alpha > 0, fg, bg), atol=1e-7)
  feathered = np.asarray(blend("feathered", fg, bg, alpha, feather_sigma=2.0))
  # Far from the edge the feathered blend is the plain one; at the edge it mixes.
  np.testing.assert_allclose(feathered[:, 18, 20], fg[:, 18, 20], atol=1e-5)
  np.testing.assert_allclose(feathered[:, 0, 0], bg[:, 0, 0], atol=1e-5)
  w = 0.5  # Exactly on a straight edge of a wide mask the blurred mask is ~0.5.
  np.testing.assert_allclose(feathered[:, 18, 10], np.clip(
      w * fg[:, 18, 10] + (1 - w) * bg[:, 18, 10], 0, 1), atol=0.08)
  with pytest.raises(ValueError, match="valid"):
    blending.blend("poisson", fg, bg, alpha)


def test_reinhard_harmonize_matches_background_statistics():
  rng = np.random.default_rng(2)
  comp = rng.uniform(0.2, 0.5, (20, 24, 3))
  comp[:, 12:] = rng.uniform(0.4, 0.9, (20, 12, 3))
  mask = np.zeros((20, 24), bool)
  mask[:, :12] = True
  out = blending.reinhard_harmonize(comp, mask)
  np.testing.assert_array_equal(out[~mask], comp[~mask].astype(np.float32))
  lab_out = color_transfer.rgb_to_lab(out[mask].astype(np.float64))
  lab_bg = color_transfer.rgb_to_lab(comp[~mask])
  np.testing.assert_allclose(lab_out.mean(0), lab_bg.mean(0), atol=2e-3)
