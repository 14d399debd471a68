"""Compositing metrics: boundary-band error plus the harmonization metrics.

The boundary band is where halos and colour contamination show (Zhang et al.,
WACV 2021): pixels within k = config.eval.boundary_band pixels of the mask's
edge (the binarized mask dilated by k minus it eroded by k, square
structuring element). Columns per image, on 0..255 pixels:
  boundary_mse   sum(band * (pred - real)^2) / (C * sum(band) + eps)
  boundary_psnr  10 log10(255^2 / (boundary_mse + eps))
plus the `harmonization` evaluator's MSE, PSNR, fMSE, fPSNR, SSIM. Where the
batch has no 'composite' (compositing families), the identity row
('composite_' columns) is the alpha blend of foreground and background with
the given mask, the first baseline of the compositing tables.
"""

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections

from harmonax import blending
from harmonax import metrics
from harmonax.evaluators import harmonization

EPS = metrics.EPS


def band(mask: jax.Array, k: int) -> jax.Array:
  """[B,H,W,1] float {0, 1}: within k pixels (Chebyshev) of the edge of mask >= 0.5."""
  binary = (mask >= 0.5).astype(jnp.float32)
  window, strides = (1, 2 * k + 1, 2 * k + 1, 1), (1, 1, 1, 1)
  dilated = jax.lax.reduce_window(binary, -jnp.inf, jax.lax.max, window, strides, "SAME")
  eroded = -jax.lax.reduce_window(-binary, -jnp.inf, jax.lax.max, window, strides, "SAME")
  return dilated - eroded


def boundary_mse(pred: jax.Array, real: jax.Array, mask: jax.Array, k: int,
                 valid: jax.Array | None = None) -> jax.Array:
  """Per-image MSE [B] in the boundary band (0 where an image has no edge)."""
  b = band(mask, k)
  if valid is not None:
    b = b * valid
  err = jnp.sum(b * jnp.square(pred - real), axis=(1, 2, 3))
  return err / (pred.shape[-1] * jnp.sum(b, axis=(1, 2, 3)) + EPS)


def score(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
          batch: dict[str, jax.Array], pred: jax.Array, protocol) -> dict[str, jax.Array]:
  """{'boundary_mse', 'boundary_psnr', harmonization columns, 'composite_' twins}."""
  k = int(config.eval.get("boundary_band", 5))
  batch = dict(batch)
  if "composite" not in batch and "foreground" in batch and "background" in batch:
    batch["composite"] = blending.alpha_blend(batch["foreground"], batch["background"],
                                              jnp.clip(batch["mask"], 0.0, 1.0))
  scores = harmonization.score(config, networks, batch, pred, protocol)
  valid = batch.get("valid_pixels")
  real = batch["real"] * 255.0
  peak = jnp.float32(255.0)
  for prefix, image in (("", pred), (harmonization.COMPOSITE_PREFIX, batch.get("composite"))):
    if image is None:
      continue
    err = boundary_mse(image * 255.0, real, batch["mask"], k, valid)
    scores[prefix + "boundary_mse"] = err
    scores[prefix + "boundary_psnr"] = metrics.psnr_from_mse(err, peak)
  return scores
