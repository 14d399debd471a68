"""Reconstruction losses shared by the model families.

All take NHWC arrays and return a scalar: the mean over the batch of a
per-image value. Family-specific losses live in their family module.
"""

import jax
import jax.numpy as jnp


def fn_mse(pred: jax.Array, target: jax.Array, mask: jax.Array,
           min_area: float) -> jax.Array:
  """Foreground-normalized MSE (Sofiiuk et al. 2021, the official MaskWeightedMSE).

  Per image: sum_{h,w,c} (pred - target)^2 / (C * max(sum_{h,w} mask, min_area)),
  then the mean over the batch.

  As in the paper and the official code, the squared error is summed over
  *all* pixels; the mask only sets the normalizer, so images with small
  foregrounds are not drowned out by large ones. (Where the prediction is
  already blended with the mask, background terms are zero anyway.)

  Args:
    pred: [B, H, W, C].
    target: [B, H, W, C].
    mask: [B, H, W, 1] foreground mask in [0, 1].
    min_area: lower bound of the normalizing area, in pixels.
  """
  _check_shapes(pred, target, mask)
  error = jnp.sum(jnp.square(pred - target), axis=(1, 2, 3))
  area = jnp.maximum(jnp.sum(mask, axis=(1, 2, 3)), min_area)
  return jnp.mean(error / (pred.shape[-1] * area))


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared error: mean over all elements of (pred - target)^2."""
  _check_shapes(pred, target)
  return jnp.mean(jnp.square(pred - target))


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute error: mean over all elements of |pred - target|."""
  _check_shapes(pred, target)
  return jnp.mean(jnp.abs(pred - target))


def _check_shapes(pred: jax.Array, target: jax.Array, mask: jax.Array | None = None) -> None:
  if pred.shape != target.shape:
    raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
  if mask is not None and (pred.ndim != 4 or mask.shape != pred.shape[:3] + (1,)):
    raise ValueError(
        f"mask must be [B, H, W, 1] for pred {pred.shape}; got {mask.shape}")
