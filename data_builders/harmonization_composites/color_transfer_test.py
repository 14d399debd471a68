"""Each color transfer method checked against its definition."""

import numpy as np
import pytest
from skimage import exposure as sk_exposure

from data_builders.harmonization_composites import color_transfer as ct
from data_builders.harmonization_composites import white_box


def _pixels(seed: int, n: int, mean, scale) -> np.ndarray:
  """Correlated pixels quantized to 8 bits, well inside (0, 1)."""
  rng = np.random.default_rng(seed)
  mix = np.array([[1.0, 0.4, 0.2], [0.3, 1.0, 0.1], [0.2, 0.5, 1.0]])
  x = rng.standard_normal((n, 3)) @ mix.T * scale + np.asarray(mean)
  return np.round(np.clip(x, 0.05, 0.95) * 255) / 255


SRC = _pixels(0, 3000, (0.6, 0.4, 0.3), 0.08)
REF = _pixels(1, 2000, (0.3, 0.5, 0.7), 0.05)


def _ks(a: np.ndarray, b: np.ndarray) -> float:
  """Kolmogorov-Smirnov distance between two 1-D samples."""
  grid = np.union1d(a, b)
  fa = np.searchsorted(np.sort(a), grid, side="right") / a.size
  fb = np.searchsorted(np.sort(b), grid, side="right") / b.size
  return float(np.abs(fa - fb).max())


def test_lab_round_trip():
  np.testing.assert_allclose(ct.lab_to_rgb(ct.rgb_to_lab(SRC)), SRC, atol=1e-9)


def test_reinhard_matches_reference_lab_mean_and_std():
  out_lab = ct.rgb_to_lab(ct.reinhard(SRC, REF))
  ref_lab = ct.rgb_to_lab(REF)
  np.testing.assert_allclose(out_lab.mean(0), ref_lab.mean(0), atol=1e-9)
  np.testing.assert_allclose(out_lab.std(0), ref_lab.std(0), rtol=1e-7)
  # Standardized values are unchanged: it is an affine map per lab channel.
  src_lab = ct.rgb_to_lab(SRC)
  z = lambda a: (a - a.mean(0)) / a.std(0)
  np.testing.assert_allclose(z(out_lab), z(src_lab), atol=1e-7)


def test_covariance_matches_reference_mean_and_covariance():
  out = ct.covariance(SRC, REF)
  np.testing.assert_allclose(out.mean(0), REF.mean(0), atol=1e-12)
  np.testing.assert_allclose(np.cov(out, rowvar=False, bias=True),
                             np.cov(REF, rowvar=False, bias=True), atol=1e-12)
  # No axis gets inverted: the output still correlates positively with the source.
  for c in range(3):
    assert np.corrcoef(out[:, c], SRC[:, c])[0, 1] > 0.5


def test_histogram_matches_reference_cdf_and_skimage():
  out = ct.histogram(SRC, REF)
  for c in range(3):
    # Both samples are 8-bit: their CDFs move in steps, so they can only agree
    # up to the largest steps.
    step = (np.unique(SRC[:, c], return_counts=True)[1].max() / len(SRC)
            + np.unique(REF[:, c], return_counts=True)[1].max() / len(REF))
    assert _ks(out[:, c], REF[:, c]) <= step + 1e-3
    assert _ks(SRC[:, c], REF[:, c]) > 0.5
    # Monotone: the order of source values is kept.
    order = np.argsort(SRC[:, c], kind="stable")
    assert np.all(np.diff(out[order, c]) >= -1e-12)
  expected = sk_exposure.match_histograms(SRC[None], REF[None], channel_axis=-1)[0]
  np.testing.assert_allclose(out, expected, atol=1e-9)


def test_idt_distribution_close_to_reference():
  rng = np.random.default_rng(3)
  out = ct.idt(SRC, REF, rng, iterations=20)
  np.testing.assert_allclose(out.mean(0), REF.mean(0), atol=2e-3)
  np.testing.assert_allclose(np.cov(out, rowvar=False), np.cov(REF, rowvar=False), atol=2e-4)
  # Marginals along random directions match, not just the RGB axes.
  for _ in range(5):
    direction = ct.random_rotation(rng)[:, 0]
    assert _ks(out @ direction, REF @ direction) < 0.05
  assert _ks(SRC @ direction, REF @ direction) > 0.5  # It did have to move.


def test_random_rotation_is_orthonormal():
  r = ct.random_rotation(np.random.default_rng(0))
  np.testing.assert_allclose(r @ r.T, np.eye(3), atol=1e-12)


def test_regrain_keeps_original_gradients_and_transferred_colors():
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[0:48, 0:48] / 48.0
  original = np.stack([0.3 + 0.3 * xx, 0.4 + 0.2 * yy, 0.5 + 0.0 * xx], -1)
  # A transfer that shifts colors but adds grain (noise).
  transferred = original * 0.7 + 0.2 + rng.normal(0, 0.03, original.shape)
  out = ct.regrain(original, transferred)
  grad = lambda a: np.diff(a, axis=1)
  noise_before = np.abs(grad(transferred) - grad(original)).mean()
  noise_after = np.abs(grad(out) - grad(original)).mean()
  assert noise_after < 0.3 * noise_before
  np.testing.assert_allclose(out.mean((0, 1)), transferred.mean((0, 1)), atol=0.02)
  # A transfer that changed nothing stays unchanged.
  np.testing.assert_allclose(ct.regrain(original, original), original, atol=1e-6)  # float32 solver.


def test_exposure_definition():
  out = ct.exposure(SRC, ev=1.0, gain_r=1.1, gain_b=0.9)
  np.testing.assert_allclose(out, SRC * 2 * np.array([1.1, 1.0, 0.9]))


def _photo():
  rng = np.random.default_rng(7)
  image = np.round(rng.uniform(0.1, 0.9, (32, 40, 3)) * 255) / 255
  mask = np.zeros((32, 40), bool)
  mask[8:24, 10:30] = True
  return image, mask


@pytest.mark.parametrize("method", [m for m in ct.METHODS if m != "filters"])
def test_recolor_foreground_keeps_background_and_records_method(method):
  image, mask = _photo()
  composite, params = ct.recolor_foreground(image, mask, REF, method, np.random.default_rng(0))
  assert params["method"] == method
  np.testing.assert_array_equal(composite[~mask], image[~mask])
  assert composite.min() >= 0 and composite.max() <= 1
  assert ct.foreground_mse(composite * 255, image * 255, mask) > 1.0


def test_recolor_foreground_same_rng_same_result():
  image, mask = _photo()
  a, pa = ct.recolor_foreground(image, mask, REF, "idt", np.random.default_rng(5), 0.8)
  b, pb = ct.recolor_foreground(image, mask, REF, "idt", np.random.default_rng(5), 0.8)
  np.testing.assert_array_equal(a, b)
  assert pa == pb and pa["strength"] == 0.8


def test_recolor_foreground_strength_interpolates():
  image, mask = _photo()
  full, _ = ct.recolor_foreground(image, mask, REF, "covariance", np.random.default_rng(0), 1.0)
  half, _ = ct.recolor_foreground(image, mask, REF, "covariance", np.random.default_rng(0), 0.5)
  inside = (full[mask] > 0) & (full[mask] < 1)
  np.testing.assert_allclose(half[mask][inside], ((full[mask] + image[mask]) / 2)[inside], atol=1e-9)


def test_recolor_foreground_filters_keeps_background():
  image, mask = _photo()
  composite, params = ct.recolor_foreground(image, mask, None, "filters", np.random.default_rng(1))
  assert params["filters"] and all(len(f) == 2 for f in params["filters"])
  np.testing.assert_array_equal(composite[~mask], image[~mask])


def test_bad_method_and_missing_reference_are_errors():
  image, mask = _photo()
  with pytest.raises(ValueError, match="Unknown color transfer method 'sepia'"):
    ct.recolor_foreground(image, mask, REF, "sepia", np.random.default_rng(0))
  with pytest.raises(ValueError, match="needs reference pixels"):
    ct.recolor_foreground(image, mask, None, "reinhard", np.random.default_rng(0))


def test_paste_copies_background_exactly_with_binarized_mask():
  real = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  recolored = 255 - real
  mask = np.zeros((8, 8, 1), np.uint8)
  mask[2:5, 2:5] = 255
  mask[0, 0] = 100  # Soft edge value below the threshold: background.
  out = ct.paste(real, recolored, mask)
  fg = mask[..., 0] > 127
  np.testing.assert_array_equal(out[~fg], real[~fg])
  np.testing.assert_array_equal(out[fg], recolored[fg])


def test_foreground_mse_definition():
  real = np.zeros((4, 4, 3))
  comp = real.copy()
  comp[:2, :2] = 10.0
  mask = np.zeros((4, 4, 1))
  mask[:2, :] = 1
  assert ct.foreground_mse(comp, real, mask) == pytest.approx(4 * 3 * 100 / (3 * 8))


def test_white_box_filters_keep_background_and_use_whole_image_means():
  image, mask = _photo()
  # Contrast around the whole image's grey mean, by hand.
  (out,) = [white_box.apply_filters(image, mask, [("contrast", -0.5)])]
  expected = np.clip(image[mask] + (image[mask] - image.mean()) * -0.5, 0, 1)
  np.testing.assert_allclose(out, expected, atol=1e-12)
  # uint8 input equals its [0, 1] float version.
  chain = [("temperature", 0.4), ("saturation", 0.2), ("shadow", -0.3)]
  as_uint8 = np.round(image * 255).astype(np.uint8)
  np.testing.assert_allclose(white_box.apply_filters(as_uint8, mask, chain),
                             white_box.apply_filters(as_uint8 / 255, mask, chain), atol=1e-12)
  with pytest.raises(ValueError, match="Unknown filter 'blur'"):
    white_box.apply_filters(image, mask, [("blur", 0.1)])


def test_foreground_mse_bool_mask_equals_float_mask():
  rng = np.random.default_rng(0)
  real = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
  comp = rng.integers(0, 256, (6, 7, 3)).astype(np.uint8)
  mask = rng.random((6, 7)) < 0.4
  assert ct.foreground_mse(comp, real, mask) == pytest.approx(
      ct.foreground_mse(comp, real, mask.astype(np.float32)[..., None]))


def test_recolor_pixels_uint8_equals_float_input():
  image, mask = _photo()
  as_uint8 = np.round(image * 255).astype(np.uint8)
  a, _ = ct.recolor_pixels(as_uint8, mask, REF, "idt", np.random.default_rng(2), 0.9)
  b, _ = ct.recolor_foreground(image, mask, REF, "idt", np.random.default_rng(2), 0.9)
  np.testing.assert_allclose(a, b[mask], atol=1e-6)
