"""Color transfer methods that make synthetic harmonization composites.

A composite is a real photo whose masked foreground was recolored with the
color statistics of another object (the "reference"), the way iHarmony4's
HCOCO and HFlickr subsets were made. Every function works on float numpy
arrays in [0, 1]. The pixel-set functions (`reinhard`, `covariance`,
`histogram`, `idt`) map source pixels [N, 3] to recolored pixels [N, 3]
WITHOUT clipping, so that their defining property holds exactly;
`recolor_foreground` clips and pastes the result into the photo.
"""

import math
from typing import Any

import numpy as np

from data_builders.harmonization_composites import white_box

# Methods that `recolor_foreground` knows ('filters': Harmonizer's, see white_box.py).
METHODS = ("reinhard", "covariance", "histogram", "idt", "exposure", "filters")

# Reinhard et al. 2001, "Color Transfer between Images": RGB -> LMS cone space.
RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402],
                        [0.1967, 0.7244, 0.0782],
                        [0.0241, 0.1288, 0.8444]])
LMS_TO_RGB = np.linalg.inv(RGB_TO_LMS)
# log10 LMS -> l-alpha-beta (decorrelated axes: achromatic, yellow-blue, red-green).
LOGLMS_TO_LAB = np.diag([1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)]) @ np.array(
    [[1.0, 1.0, 1.0], [1.0, 1.0, -2.0], [1.0, -1.0, 0.0]])
LAB_TO_LOGLMS = np.linalg.inv(LOGLMS_TO_LAB)
# Floor before the logarithm: black pixels would be -inf, and a floor far below
# 1/255 would let a few black pixels dominate the l channel's std.
LMS_FLOOR = 1e-3


def _mat(x: np.ndarray, m: np.ndarray) -> np.ndarray:
  """x @ m.T for pixels [..., 3] and a 3x3 matrix, without BLAS.

  Why: BLAS threads a [N, 3] x [3, 3] product and, on a busy machine, spends
  20x longer spinning than the three multiply-adds take; einsum's own loop is
  4x slower than three broadcast multiply-adds over whole color planes. The
  result is a view of planes ([3, ...] in memory), so per-channel reductions
  over pixels (mean, std) run on contiguous memory.
  """
  planes = np.moveaxis(x, -1, 0)
  return np.moveaxis(_planar_mat(m, planes), 0, -1)


def _planar_mat(m: np.ndarray, planes: np.ndarray) -> np.ndarray:
  """m @ planes for color planes [3, ...]: out[i] = sum_j m[i, j] planes[j]."""
  column = (3,) + (1,) * (planes.ndim - 1)
  return (m[:, 0].reshape(column) * planes[0] + m[:, 1].reshape(column) * planes[1]
          + m[:, 2].reshape(column) * planes[2])


def _covariance(x: np.ndarray) -> np.ndarray:
  """The biased 3x3 covariance of pixels [N, 3] (np.cov would call BLAS: see _mat)."""
  d = np.moveaxis(x - x.mean(0), -1, 0)
  return np.array([[np.mean(d[i] * d[j]) for j in range(3)] for i in range(3)])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
  """Reinhard's l-alpha-beta of RGB pixels [..., 3]: lab = M2 log10(M1 rgb)."""
  lms = np.maximum(_mat(rgb, RGB_TO_LMS), LMS_FLOOR)
  return _mat(np.log10(lms), LOGLMS_TO_LAB)


def lab_to_rgb(lab: np.ndarray) -> np.ndarray:
  """Inverse of `rgb_to_lab` (exact where the LMS floor was not hit)."""
  # exp(x ln 10): 10 ** x without pow's slow general path.
  return _mat(np.exp(_mat(lab, LAB_TO_LOGLMS * math.log(10.0))), LMS_TO_RGB)


def reinhard(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Reinhard mean/std transfer in l-alpha-beta.

  Definition: per l-alpha-beta channel c,
  out_c = (src_c - mean(src_c)) * std(ref_c) / std(src_c) + mean(ref_c),
  so the output's l-alpha-beta mean and std equal the reference's.
  """
  src, ref = rgb_to_lab(source), rgb_to_lab(reference)
  scale = ref.std(0) / np.maximum(src.std(0), 1e-6)
  return lab_to_rgb((src - src.mean(0)) * scale + ref.mean(0))


def covariance(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """RGB mean and covariance transfer (Xiao et al. 2006, correlated color space).

  Definition: with eigendecompositions C_s = U_s L_s U_s^T, C_r = U_r L_r U_r^T,
  out = U_r L_r^(1/2) L_s^(-1/2) U_s^T (src - mean_s) + mean_r,
  which whitens the source and colors it with the reference: the output's mean
  and covariance equal the reference's.
  """
  mean_s, mean_r = source.mean(0), reference.mean(0)
  vals_s, vecs_s = np.linalg.eigh(_covariance(source))
  vals_r, vecs_r = np.linalg.eigh(_covariance(reference))
  # Eigenvectors have arbitrary signs; pair each reference axis with the same
  # direction as its source axis so no color axis gets inverted.
  signs = np.sign(np.sum(vecs_s * vecs_r, axis=0))
  vecs_r = vecs_r * np.where(signs == 0, 1.0, signs)
  # A flat-colored source has ~zero variance on some axis: keep it finite.
  scale = np.sqrt(np.maximum(vals_r, 0.0) / np.maximum(vals_s, 1e-8))
  transform = vecs_r @ np.diag(scale) @ vecs_s.T
  return _mat(source - mean_s, transform) + mean_r


def histogram(source: np.ndarray, reference: np.ndarray) -> np.ndarray:
  """Cumulative histogram matching, per RGB channel.

  Definition: out_c = F_ref_c^-1(F_src_c(src_c)), with F the empirical CDF;
  each source value goes to the reference value at the same cumulative
  fraction (linear interpolation between the reference's distinct values).
  """
  out = np.empty_like(source, dtype=np.float64)
  for c in range(source.shape[1]):
    src_vals, src_idx, src_counts = np.unique(
        source[:, c], return_inverse=True, return_counts=True)
    ref_vals, ref_counts = np.unique(reference[:, c], return_counts=True)
    src_cdf = np.cumsum(src_counts) / source.shape[0]
    ref_cdf = np.cumsum(ref_counts) / reference.shape[0]
    out[:, c] = np.interp(src_cdf, ref_cdf, ref_vals)[src_idx]
  return out


def _match_1d(values: np.ndarray, target: np.ndarray, bins: int = 300) -> np.ndarray:
  """1-D PDF transfer of `values` onto `target`'s distribution (Pitie's pdf_transfer1D).

  Both samples are histogrammed on common bins; each value goes through the
  piecewise-linear map F_target^-1(F_values(x)). Histograms instead of full
  sorts keep IDT's many iterations cheap on large foregrounds.
  """
  lo = min(values.min(), target.min())
  hi = max(values.max(), target.max())
  if hi - lo < 1e-12:
    return np.full_like(values, target.mean())
  edges = np.linspace(lo, hi, bins + 1)
  scale = bins / (hi - lo)
  # Uniform bins: a value's bin is index arithmetic (no binary search), and
  # the same indices serve the histogram and the interpolation below.
  position = (values - values.dtype.type(lo)) * values.dtype.type(scale)
  index = np.minimum(position.astype(np.intp), bins - 1)
  target_index = np.minimum(((target - lo) * scale).astype(np.intp), bins - 1)
  # A tiny floor makes both CDFs strictly increasing, so the inverse is defined.
  cdf_v = np.concatenate([[0.0], np.cumsum(np.bincount(index, minlength=bins) + 1e-6)])
  cdf_t = np.concatenate([[0.0], np.cumsum(np.bincount(target_index, minlength=bins) + 1e-6)])
  cdf_v /= cdf_v[-1]
  cdf_t /= cdf_t[-1]
  mapped_edges = np.interp(cdf_v, cdf_t, edges)
  # Linear within bin i: mapped_edges[i] + (position - i) * slope[i], written as
  # intercept[i] + slope[i] * position (two gathers, one multiply-add).
  slope = np.diff(mapped_edges)
  intercept = mapped_edges[:-1] - np.arange(bins) * slope
  dtype = values.dtype
  return intercept.astype(dtype)[index] + slope.astype(dtype)[index] * position


def random_rotation(rng: np.random.Generator) -> np.ndarray:
  """A uniformly random 3x3 rotation (QR of a Gaussian matrix, signs fixed)."""
  q, r = np.linalg.qr(rng.standard_normal((3, 3)))
  return q * np.sign(np.diag(r))


def idt(source: np.ndarray, reference: np.ndarray, rng: np.random.Generator,
        iterations: int = 10) -> np.ndarray:
  """Iterative distribution transfer (Pitie et al. 2005), N-dimensional PDF transfer.

  Definition: repeat `iterations` times: draw a random rotation R, project
  source and reference pixels onto R's axes, match each 1-D marginal of the
  source to the reference's (quantile mapping) and move the source pixels by
  the change along those axes. The source's 3-D distribution converges to the
  reference's. The first rotation is the identity (per-channel matching).
  """
  # Color planes [3, N]: rotations and 1-D matches run on contiguous rows. float32:
  # half the memory traffic, and ample precision for 8-bit results.
  x = np.array(np.asarray(source).T, np.float32, order="C")
  ref = np.array(np.asarray(reference).T, np.float32, order="C")
  for i in range(iterations):
    rot = np.eye(3) if i == 0 else random_rotation(rng)
    rot32 = rot.astype(np.float32)
    x_rot, ref_rot = _planar_mat(rot32.T, x), _planar_mat(rot32.T, ref)
    matched = np.stack([_match_1d(x_rot[k], ref_rot[k]) for k in range(3)])
    matched -= x_rot
    x += _planar_mat(rot32, matched)
  return x.T.astype(np.float64)


def _neighbors(a: np.ndarray, padded: np.ndarray | None = None
               ) -> tuple[np.ndarray, ...]:
  """The right, left, lower and upper neighbor of every pixel of [..., H, W] (edges
  replicated), as views of `padded` ([..., H + 2, W + 2], allocated if None)."""
  if padded is None:
    padded = np.empty(a.shape[:-2] + (a.shape[-2] + 2, a.shape[-1] + 2), a.dtype)
  padded[..., 1:-1, 1:-1] = a
  padded[..., 0, 1:-1] = a[..., 0, :]
  padded[..., -1, 1:-1] = a[..., -1, :]
  padded[..., 1:-1, 0] = a[..., :, 0]
  padded[..., 1:-1, -1] = a[..., :, -1]
  return (padded[..., 1:-1, 2:], padded[..., 1:-1, :-2], padded[..., 2:, 1:-1],
          padded[..., :-2, 1:-1])


def _regrain_solve(result: np.ndarray, original: np.ndarray, transferred: np.ndarray,
                   iterations: int, level: int) -> np.ndarray:
  """Jacobi iterations of Pitie's regrain energy at one pyramid level, on planes [3, H, W]."""
  right, left, down, up = _neighbors(original)
  grad_norm = np.sqrt(np.sum(((right - left) / 2) ** 2 + ((down - up) / 2) ** 2, axis=0))
  # psi: stick to the transferred colors on edges; phi: keep the original's
  # gradients in flat areas (weights as in Pitie et al. 2007, on [0, 1] pixels).
  psi = np.minimum(256 * grad_norm / 5, 1.0).astype(original.dtype)
  phi = (30.0 / (1 + 10 * grad_norm) * 2.0 ** (-level)).astype(original.dtype)
  phis = [(n + phi) / 2 for n in _neighbors(phi)]
  denominator = psi + sum(phis)
  # The terms that do not change across iterations (data term and the original's
  # gradients toward each neighbor) and the neighbors' weights, all divided by
  # the denominator once: an iteration is then 4 multiply-adds, in place.
  constant = (psi * transferred + sum(
      p * (original - n) for p, n in zip(phis, (right, left, down, up)))) / denominator
  weights = [p / denominator for p in phis]
  padded = np.empty(result.shape[:-2] + (result.shape[-2] + 2, result.shape[-1] + 2),
                    result.dtype)
  result, new, term = np.array(result), np.empty_like(result), np.empty_like(result)
  for _ in range(iterations):
    views = _neighbors(result, padded)
    np.multiply(weights[0], views[0], out=new)
    for weight, view in zip(weights[1:], views[1:]):
      new += np.multiply(weight, view, out=term)
    new += constant
    result, new = new, result
  return result


def regrain(original: np.ndarray, transferred: np.ndarray,
            iterations: tuple[int, ...] = (4, 16, 32, 64, 64, 64)) -> np.ndarray:
  """Pitie et al. 2007 grain-preserving post-process of a color transfer.

  Definition: the image J minimizing
  sum phi |grad J - grad original|^2 + psi |J - transferred|^2, solved
  coarse-to-fine (image pyramid, Jacobi iterations per level). It removes the
  grain and stretching artifacts IDT leaves while keeping its colors.
  Both inputs are [H, W, 3] float images.
  """
  def solve(result, orig, trans, iters, level):
    h, w = orig.shape[-2:]
    if len(iters) > 1 and h // 2 > 20 and w // 2 > 20:
      coarse_trans = trans[:, ::2, ::2]
      coarse = solve(result[:, ::2, ::2], orig[:, ::2, ::2], coarse_trans, iters[1:],
                     level + 1)
      # Start from the transferred image plus the coarse level's correction
      # (upsampled): smooth corrections survive nearest upsampling well.
      correction = np.repeat(np.repeat(coarse - coarse_trans, 2, axis=1), 2, axis=2)
      result = trans + correction[:, :h, :w]
    return _regrain_solve(result, orig, trans, iters[0], level)

  # float32: half the memory traffic of this bandwidth-bound solver; color planes
  # [3, H, W]: the per-pixel weights broadcast over whole rows, not 3-wide pixels.
  original = np.ascontiguousarray(np.moveaxis(np.asarray(original, np.float32), -1, 0))
  transferred = np.ascontiguousarray(np.moveaxis(np.asarray(transferred, np.float32), -1, 0))
  result = solve(transferred, original, transferred, tuple(iterations), 0)
  return np.moveaxis(result, 0, -1).astype(np.float64)


def exposure(source: np.ndarray, ev: float, gain_r: float, gain_b: float) -> np.ndarray:
  """Exposure and white-balance shift: out = src * 2^ev * (gain_r, 1, gain_b)."""
  return source * (2.0 ** ev) * np.array([gain_r, 1.0, gain_b])


def _round(value: Any) -> Any:
  """Floats rounded for the `transfer` JSON (short and byte-stable)."""
  if isinstance(value, (float, np.floating)):
    return round(float(value), 4)
  if isinstance(value, (list, tuple, np.ndarray)):
    return [_round(v) for v in value]
  return value


def _apply_filters(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                   max_filters: int) -> tuple[np.ndarray, dict[str, Any]]:
  """Harmonizer-style random white-box filters applied to the foreground."""
  names = list(white_box.FILTER_NAMES)
  count = int(rng.integers(1, min(max_filters, len(names)) + 1))
  chosen = [names[i] for i in sorted(rng.choice(len(names), count, replace=False))]
  # Harmonizer samples each filter argument uniformly; |arg| < 0.1 is a no-op.
  applied = [[name, _round(float(rng.uniform(0.1, 0.5)) * (1 if rng.random() < 0.5 else -1))]
             for name in chosen]
  out = white_box.apply_filters(image, mask, [(n, a) for n, a in applied])
  return out, {"filters": applied}


def _as_unit(a: np.ndarray, dtype=np.float64) -> np.ndarray:
  """uint8 pixels -> [0, 1]; float pixels as they are."""
  return a.astype(dtype) / 255 if a.dtype == np.uint8 else a.astype(dtype)


def foreground(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """image[mask] ([N, 3] in row-major order) for [H, W, 3] and a bool [H, W] mask.

  Why: a gather by flat index is several times faster than numpy's boolean
  indexing of a 3-D array with a 2-D mask.
  """
  return np.take(image.reshape(-1, image.shape[-1]), np.flatnonzero(mask), axis=0)


def recolor_pixels(image: np.ndarray, mask: np.ndarray, reference: np.ndarray | None,
                   method: str, rng: np.random.Generator, strength: float = 1.0,
                   ) -> tuple[np.ndarray, dict[str, Any]]:
  """The recolored foreground pixels of `image`, [N, 3] in [0, 1] (order of image[mask]).

  Args:
    image: the real photo, uint8 [H, W, 3] or float [H, W, 3] in [0, 1].
    mask: bool [H, W], True on the foreground.
    reference: the reference object's pixels, float [M, 3] in [0, 1] (unused by
      'exposure' and 'filters').
    method: one of METHODS.
    rng: the example's random generator (IDT rotations, exposure, filters).
    strength: fraction of the color change kept: src + strength * (out - src).

  Returns:
    (pixels, JSON-able parameters incl. 'method').
  """
  if method not in METHODS:
    raise ValueError(f"Unknown color transfer method {method!r}; valid: {METHODS}")
  # Column-major [N, 3] (color planes in memory): per-channel reductions and
  # column ops below run on contiguous memory.
  source = np.asfortranarray(_as_unit(foreground(image, mask)))
  params: dict[str, Any] = {"method": method, "strength": _round(strength)}
  if method == "filters":
    recolored, extra = _apply_filters(image, mask, rng, max_filters=3)
    params.update(extra)
  elif method == "exposure":
    ev = float(rng.uniform(0.25, 1.0)) * (1 if rng.random() < 0.5 else -1)
    gain_r, gain_b = np.exp(rng.uniform(-0.25, 0.25, size=2))
    recolored = exposure(source, ev, gain_r, gain_b)
    params.update(ev=_round(ev), gain_r=_round(gain_r), gain_b=_round(gain_b))
  else:
    if reference is None or len(reference) < 2:
      raise ValueError(f"Method {method!r} needs reference pixels, got {reference!r:.40}")
    ref = np.asfortranarray(reference, np.float64)
    if method == "reinhard":
      recolored = reinhard(source, ref)
      ref_lab = rgb_to_lab(ref)
      params.update(ref_lab_mean=_round(ref_lab.mean(0)), ref_lab_std=_round(ref_lab.std(0)))
    elif method == "covariance":
      recolored = covariance(source, ref)
      params.update(ref_mean=_round(ref.mean(0)))
    elif method == "histogram":
      recolored = histogram(source, ref)
    else:
      iterations = 10
      recolored = idt(source, ref, rng, iterations)
      # Regrain on the object's bounding box: it needs the image grid.
      ys, xs = np.nonzero(mask)
      box = (slice(ys.min(), ys.max() + 1), slice(xs.min(), xs.max() + 1))
      crop = _as_unit(image[box])
      inside = np.flatnonzero(mask[box])
      transferred = crop.reshape(-1, 3).copy()
      transferred[inside] = recolored
      regrained = regrain(crop, transferred.reshape(crop.shape))
      recolored = np.take(regrained.reshape(-1, 3), inside, axis=0)
      params.update(iterations=iterations, regrain=True)
  return np.clip(source + strength * (recolored - source), 0.0, 1.0), params


def recolor_foreground(image: np.ndarray, mask: np.ndarray, reference: np.ndarray | None,
                       method: str, rng: np.random.Generator, strength: float = 1.0,
                       ) -> tuple[np.ndarray, dict[str, Any]]:
  """Recolors the masked foreground of `image`; the background is copied exactly.

  Same arguments as `recolor_pixels`. Returns (composite float [H, W, 3] in
  [0, 1], JSON-able parameters incl. 'method').
  """
  pixels, params = recolor_pixels(image, mask, reference, method, rng, strength)
  composite = _as_unit(image)
  composite[mask] = pixels
  return composite, params


def paste(real: np.ndarray, recolored: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """composite = mask * recolored + (1 - mask) * real with the mask binarized (mask > 127 for uint8)."""
  binary = mask > (127 if mask.dtype == np.uint8 else 0.5)
  if binary.ndim == 3:
    binary = binary[..., 0]
  out = real.copy()
  out[binary] = recolored[binary]
  return out


def foreground_mse(composite: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
  """fMSE on 0..255 pixels: sum(mask * (composite - real)^2) / (3 * sum(mask))."""
  m = mask.reshape(mask.shape[:2])
  if m.dtype == bool:  # Only the foreground pixels: much less work on big photos.
    diff = composite[m].astype(np.float64) - real[m].astype(np.float64)
    return float(np.sum(diff ** 2) / (3 * max(int(m.sum()), 1e-6)))
  diff = composite.astype(np.float64) - real.astype(np.float64)
  m = m.astype(np.float64)
  return float(np.sum(m[..., None] * diff ** 2) / (3 * max(m.sum(), 1e-6)))

