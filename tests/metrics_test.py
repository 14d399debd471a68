"""Metrics against hand-computed numpy values and scikit-image's SSIM."""

import jax
import numpy as np
import pytest
import scipy.ndimage
from skimage.metrics import structural_similarity

from harmonax import metrics


def _images(seed=0, b=3, h=24, w=20):
  rng = np.random.default_rng(seed)
  real = rng.uniform(0, 255, (b, h, w, 3)).astype(np.float32)
  # Correlated prediction so SSIM is neither ~0 nor ~1.
  pred = np.clip(real + rng.normal(0, 20, real.shape), 0, 255).astype(np.float32)
  mask = np.zeros((b, h, w, 1), np.float32)
  mask[:, 4:15, 3:12] = 1.0
  mask[-1] *= 0.5  # Soft mask values must weigh the error, not just select.
  return pred, real, mask


def test_mse_fmse_psnr_match_numpy():
  pred, real, mask = _images()
  got = metrics.compute_all(pred, real, mask, psnr_peak="real_max")
  for i in range(pred.shape[0]):
    p, r, m = (a[i].astype(np.float64) for a in (pred, real, mask))
    want_mse = ((p - r) ** 2).mean()
    want_fmse = (m * (p - r) ** 2).sum() / (3 * m.sum() + 1e-6)
    peak = r.max()
    np.testing.assert_allclose(got["mse"][i], want_mse, rtol=1e-5)
    np.testing.assert_allclose(got["fmse"][i], want_fmse, rtol=1e-5)
    np.testing.assert_allclose(
        got["psnr"][i], 10 * np.log10(peak**2 / (want_mse + 1e-6)), rtol=1e-5)
    np.testing.assert_allclose(
        got["fpsnr"][i], 10 * np.log10(peak**2 / (want_fmse + 1e-6)), rtol=1e-5)


@pytest.mark.parametrize("peak_name", ["real_max", "pred_range", "255"])
def test_psnr_peaks(peak_name):
  pred, real, _ = _images(seed=1)
  pred[0] = pred[0] * 0.5 + 10  # pred range 10..137.5 differs from real max.
  got = np.asarray(metrics.psnr(pred, real, peak_name))
  for i in range(pred.shape[0]):
    p, r = pred[i].astype(np.float64), real[i].astype(np.float64)
    peak = {"real_max": r.max(), "pred_range": p.max() - p.min(), "255": 255.0}[peak_name]
    want = 10 * np.log10(peak**2 / (((p - r) ** 2).mean() + 1e-6))
    np.testing.assert_allclose(got[i], want, rtol=1e-5)


def test_fmse_empty_mask_is_zero_and_identity_is_perfect():
  pred, real, mask = _images(seed=2)
  got = metrics.compute_all(real, real, np.zeros_like(mask))
  np.testing.assert_allclose(got["mse"], 0.0)
  np.testing.assert_allclose(got["fmse"], 0.0)
  np.testing.assert_allclose(got["ssim"], 1.0, atol=1e-6)
  # peak^2 / 1e-6 for a perfect prediction, as the reference code does.
  np.testing.assert_allclose(
      got["psnr"], 10 * np.log10(real.max(axis=(1, 2, 3)).astype(np.float64)**2 / 1e-6),
      rtol=1e-5)


_SKIMAGE_ARGS = {
    "gaussian11": dict(gaussian_weights=True, sigma=1.5, use_sample_covariance=False),
    "uniform7": dict(),  # scikit-image's defaults: 7x7 mean filter, sample covariance.
}


def _ssim_gaussian7_reference(x, y):
  """Wang et al. SSIM with a 7x7 sigma-1.5 Gaussian, valid region, in float64.

  scikit-image fixes its Gaussian at truncate=3.5 (11 taps), so it cannot
  serve as the reference here; scipy's filter with truncate=2 gives 7 taps.
  """
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  f = lambda a: scipy.ndimage.gaussian_filter(a, 1.5, truncate=2.0, mode="reflect")
  values = []
  for c in range(x.shape[-1]):
    a, b = x[..., c], y[..., c]
    ma, mb = f(a), f(b)
    va, vb, vab = f(a * a) - ma**2, f(b * b) - mb**2, f(a * b) - ma * mb
    s = ((2 * ma * mb + c1) * (2 * vab + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2))
    values.append(s[3:-3, 3:-3].mean())
  return np.mean(values)


def _reference_ssim(variant, x, y):
  if variant == "gaussian7":
    return _ssim_gaussian7_reference(x, y)
  return structural_similarity(x, y, data_range=255, channel_axis=-1,
                               **_SKIMAGE_ARGS[variant])


@pytest.mark.parametrize("variant", metrics.SSIM_VARIANTS)
def test_ssim_matches_skimage(variant):
  pred, real, _ = _images(seed=3)
  got = np.asarray(jax.jit(metrics.ssim, static_argnums=2)(pred, real, variant))
  for i in range(pred.shape[0]):
    want = _reference_ssim(
        variant, pred[i].astype(np.float64), real[i].astype(np.float64))
    np.testing.assert_allclose(got[i], want, atol=2e-5)
  assert 0.2 < got.min() < got.max() < 0.99  # A non-trivial test case.


def test_ssim_variants_differ_and_uniform7_is_skimage_default():
  pred, real, _ = _images(seed=4, b=1)
  values = {v: float(metrics.ssim(pred, real, v)[0]) for v in metrics.SSIM_VARIANTS}
  assert len({round(v, 4) for v in values.values()}) == 3
  default = structural_similarity(pred[0], real[0], data_range=255, channel_axis=-1)
  np.testing.assert_allclose(values["uniform7"], default, atol=2e-5)


def test_ssim_large_values_keep_float32_precision():
  # Bright, low-contrast images: E[x^2] - E[x]^2 in float32 on 0..255 would
  # lose the variance without the mid-grey shift.
  rng = np.random.default_rng(5)
  real = (250 + rng.uniform(-2, 2, (1, 32, 32, 3))).astype(np.float32)
  pred = (real + rng.normal(0, 1, real.shape)).astype(np.float32)
  got = float(metrics.ssim(pred, real, "gaussian11")[0])
  want = structural_similarity(
      pred[0].astype(np.float64), real[0].astype(np.float64), data_range=255,
      channel_axis=-1, **_SKIMAGE_ARGS["gaussian11"])
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_bad_inputs_raise():
  pred, real, mask = _images(b=1, h=8, w=8)
  with pytest.raises(ValueError, match="psnr_peak"):
    metrics.psnr(pred, real, "max")
  with pytest.raises(ValueError, match="ssim variant"):
    metrics.ssim(pred, real, "gaussian9")
  with pytest.raises(ValueError, match="at least 11x11"):
    metrics.ssim(pred, real, "gaussian11")
  with pytest.raises(ValueError, match="mask"):
    metrics.compute_all(pred, real, mask[..., 0])
