"""Per-image harmonization metrics on 0..255 float pixels, the iHarmony4 way.

Every function takes batches `pred`, `real` [B,H,W,C] on a 0..255 scale and,
where the foreground matters, `mask` [B,H,W,1] in [0, 1], and returns one value
per image [B]. Benchmark numbers are the mean of these values over images; the
"All" row of iHarmony4 is the mean over every test image (image-weighted), not
the mean of the subset means. All functions are jit-able.

Definitions (eps = 1e-6 as in the published evaluation code):
  MSE   = mean over pixels and channels of (pred - real)^2
  fMSE  = sum(mask * (pred - real)^2) / (C * sum(mask) + eps)
  PSNR  = 10 log10(peak^2 / (MSE + eps)),  fPSNR the same with fMSE.

PSNR peak (`psnr_peak`), because the reference implementations disagree:
  'real_max'    max of the real image over all pixels and channels (iS2AM; default)
  'pred_range'  pred.max() - pred.min() (DoveNet, BargainNet, Harmonizer)
  '255'         the constant 255 (PCT-Net)

SSIM variants (`ssim_variant`); all use C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2
(0..255 data range), are computed per channel and averaged over channels, and
average the SSIM map over the *valid* window positions only: no padding, so an
HxW image gives an (H-k+1)x(W-k+1) map. That equals scikit-image's behaviour of
filtering with reflection and then cropping (k-1)/2 pixels from every border.
  'gaussian11'  11x11 Gaussian window, sigma 1.5, population (co)variances:
                Wang et al. 2004; equals skimage structural_similarity(
                gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                data_range=255). Default.
  'gaussian7'   7x7 Gaussian window, sigma 1.5, population (co)variances
                (the window CDTNet reports with; the PyTorch code it used pads
                with zeros instead, which lowers border windows slightly).
                scikit-image cannot compute it: its Gaussian is fixed at
                truncate=3.5, i.e. always 11 taps for sigma 1.5.
  'uniform7'    scikit-image's default (Harmonizer): a 7x7 mean filter (win_size=7 when
                gaussian_weights=False) with sample (co)variances (x 49/48);
                equals skimage structural_similarity(data_range=255,
                channel_axis=-1) with every other argument left at its default.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-6
PSNR_PEAKS = ("real_max", "pred_range", "255")
SSIM_VARIANTS = ("gaussian11", "gaussian7", "uniform7")
METRIC_NAMES = ("mse", "psnr", "fmse", "fpsnr", "ssim")

_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2
# Variance terms are differences of large squares on a 0..255 scale; shifting
# both images by the mid-grey first keeps float32 cancellation error small.
# (Variances are shift-invariant; the means are shifted back for luminance.)
_SHIFT = 127.5


def _mean(x: jax.Array, valid: jax.Array | None) -> jax.Array:
  """Mean over H, W, C per image, over `valid` pixels ([B,H,W,1]) only if given."""
  if valid is None:
    return jnp.mean(x, axis=(1, 2, 3))
  valid = valid.astype(x.dtype)
  return jnp.sum(x * valid, axis=(1, 2, 3)) / (jnp.sum(valid, axis=(1, 2, 3)) * x.shape[-1])


def mse(pred: jax.Array, real: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """Mean squared error per image [B] (over `valid` pixels if given)."""
  return _mean(jnp.square(pred - real), valid)


def fmse(pred: jax.Array, real: jax.Array, mask: jax.Array) -> jax.Array:
  """Foreground MSE per image [B]: squared error summed over the mask / its area."""
  channels = pred.shape[-1]
  err = jnp.sum(mask * jnp.square(pred - real), axis=(1, 2, 3))
  area = jnp.sum(mask, axis=(1, 2, 3)) * channels
  return err / (area + EPS)


def psnr_peak_value(pred: jax.Array, real: jax.Array, psnr_peak: str,
                    valid: jax.Array | None = None) -> jax.Array:
  """The PSNR peak per image [B] for a `psnr_peak` name (see module docstring)."""
  def vmax(x):
    return jnp.max(x if valid is None else jnp.where(valid > 0, x, -jnp.inf), axis=(1, 2, 3))

  if psnr_peak == "real_max":
    return vmax(real)
  if psnr_peak == "pred_range":
    return vmax(pred) + vmax(-pred)
  if psnr_peak == "255":
    return jnp.full(pred.shape[:1], 255.0, pred.dtype)
  raise ValueError(f"Unknown psnr_peak {psnr_peak!r}; expected one of {PSNR_PEAKS}")


def psnr_from_mse(err: jax.Array, peak: jax.Array) -> jax.Array:
  """10 log10(peak^2 / (err + eps)), elementwise."""
  return 10.0 * jnp.log10(jnp.square(peak) / (err + EPS))


def psnr(pred: jax.Array, real: jax.Array, psnr_peak: str = "real_max") -> jax.Array:
  """PSNR per image [B]."""
  return psnr_from_mse(mse(pred, real), psnr_peak_value(pred, real, psnr_peak))


def fpsnr(pred: jax.Array, real: jax.Array, mask: jax.Array,
          psnr_peak: str = "real_max") -> jax.Array:
  """Foreground PSNR per image [B]: PSNR with fMSE in place of MSE."""
  return psnr_from_mse(fmse(pred, real, mask), psnr_peak_value(pred, real, psnr_peak))


def ssim_window(ssim_variant: str) -> tuple[np.ndarray, bool]:
  """(1-D normalized window, use sample covariance) for an SSIM variant name."""
  if ssim_variant in ("gaussian11", "gaussian7"):
    size = 11 if ssim_variant == "gaussian11" else 7
    x = np.arange(size, dtype=np.float64) - size // 2
    w = np.exp(-x**2 / (2 * 1.5**2))
    return w / w.sum(), False
  if ssim_variant == "uniform7":
    return np.full(7, 1.0 / 7), True
  raise ValueError(
      f"Unknown ssim variant {ssim_variant!r}; expected one of {SSIM_VARIANTS}")


def _filter_valid(x: jax.Array, window: np.ndarray) -> jax.Array:
  """Separable depthwise filtering of [N,H,W,C] with 'valid' positions only."""
  channels = x.shape[-1]
  k = len(window)
  w = jnp.asarray(window, x.dtype)
  dn = ("NHWC", "HWIO", "NHWC")
  conv = functools.partial(
      jax.lax.conv_general_dilated, window_strides=(1, 1), padding="VALID",
      dimension_numbers=dn, feature_group_count=channels,
      precision=jax.lax.Precision.HIGHEST)
  x = conv(x, jnp.tile(w.reshape(k, 1, 1, 1), (1, 1, 1, channels)))
  return conv(x, jnp.tile(w.reshape(1, k, 1, 1), (1, 1, 1, channels)))


def ssim(pred: jax.Array, real: jax.Array, ssim_variant: str = "gaussian11",
         valid: jax.Array | None = None) -> jax.Array:
  """SSIM per image [B] for an `ssim_variant` (see module docstring).

  With `valid` ([B,H,W,1], 1 on the image, 0 on padding), the map is averaged
  over the window positions that lie entirely on valid pixels: a padded image
  scores as the unpadded one.

  Raises:
    ValueError: on an unknown variant or an image smaller than the window.
  """
  window, sample_cov = ssim_window(ssim_variant)
  k = len(window)
  if pred.shape[1] < k or pred.shape[2] < k:
    raise ValueError(
        f"SSIM {ssim_variant!r} needs images of at least {k}x{k}; got "
        f"{pred.shape[1]}x{pred.shape[2]}")
  x = pred.astype(jnp.float32) - _SHIFT
  y = real.astype(jnp.float32) - _SHIFT
  stacked = jnp.concatenate([x, y, x * x, y * y, x * y], axis=0)
  mx, my, mxx, myy, mxy = jnp.split(_filter_valid(stacked, window), 5, axis=0)
  cov_norm = k * k / (k * k - 1) if sample_cov else 1.0
  vx = cov_norm * (mxx - mx * mx)
  vy = cov_norm * (myy - my * my)
  vxy = cov_norm * (mxy - mx * my)
  mx, my = mx + _SHIFT, my + _SHIFT
  num = (2 * mx * my + _C1) * (2 * vxy + _C2)
  den = (mx * mx + my * my + _C1) * (vx + vy + _C2)
  if valid is None:
    return jnp.mean(num / den, axis=(1, 2, 3))
  box = np.ones(k) / k
  inside = _filter_valid(valid.astype(jnp.float32), box) > 1.0 - 1e-4  # [B,h,w,1]
  inside = jnp.broadcast_to(inside, num.shape)
  return (jnp.sum(jnp.where(inside, num / den, 0.0), axis=(1, 2, 3))
          / jnp.sum(inside, axis=(1, 2, 3)))


def compute_all(pred: jax.Array, real: jax.Array, mask: jax.Array,
                psnr_peak: str = "real_max", ssim_variant: str = "gaussian11",
                valid: jax.Array | None = None) -> dict[str, jax.Array]:
  """All iHarmony4 metrics per image: {'mse','psnr','fmse','fpsnr','ssim'} -> [B].

  Args:
    pred: harmonized images [B,H,W,C], 0..255.
    real: target images [B,H,W,C], 0..255.
    mask: foreground [B,H,W,1] in [0, 1].
    psnr_peak: one of PSNR_PEAKS.
    ssim_variant: one of SSIM_VARIANTS.
    valid: optional [B,H,W,1], 1 on image pixels and 0 on padding (size-bucketed
      full-resolution evaluation): every metric then equals the unpadded one.
  """
  if pred.shape != real.shape or mask.shape != pred.shape[:-1] + (1,):
    raise ValueError(
        f"Expected pred, real [B,H,W,C] and mask [B,H,W,1]; got pred {pred.shape}, "
        f"real {real.shape}, mask {mask.shape}")
  pred = pred.astype(jnp.float32)
  real = real.astype(jnp.float32)
  mask = mask.astype(jnp.float32)
  if valid is not None:
    mask = mask * valid
  peak = psnr_peak_value(pred, real, psnr_peak, valid)
  m, fm = mse(pred, real, valid), fmse(pred, real, mask)
  return {
      "mse": m,
      "psnr": psnr_from_mse(m, peak),
      "fmse": fm,
      "fpsnr": psnr_from_mse(fm, peak),
      "ssim": ssim(pred, real, ssim_variant, valid),
  }
