"""Harmonizer's six differentiable white-box filters, and their inverses.

Formulas follow the official Harmonizer code (ZHKKKe/Harmonizer,
src/model/filter.py). Images are RGB in [0, 1], channels last, batched
[B, H, W, 3] or unbatched [H, W, 3]; masks [.., H, W, 1] in [0, 1]; each
argument is a scalar per image in [-1, 1]. Everything is jax.numpy (jit- and
grad-friendly) and accepts numpy arrays; results are jax arrays.

A filter changes the whole image (temperature and contrast use whole-image
statistics); `apply_filter` then keeps the background: out = mask * filtered +
(1 - mask) * image.
"""

from collections.abc import Callable, Sequence
import functools

import jax
import jax.numpy as jnp
import numpy as np

# The order in which Harmonizer's cascade regressor predicts and applies them.
FILTER_NAMES = ("temperature", "brightness", "contrast", "saturation",
                "highlight", "shadow")

_EPS = 1e-6    # The official filters' epsilon.
# pow() bases are kept >= 1e-9: 0 ** p has a NaN gradient in p. The official
# code adds 1e-9 instead, but under jit XLA may rewrite (1 - I) + 1e-9 as
# (1 + 1e-9) - I, which is 0 in float32 at I = 1; max() cannot be reassociated.
_POW_EPS = 1e-9


def _pow(base: jax.Array, p: jax.Array) -> jax.Array:
  # exp(p log b) for b > 0: what pow computes, without its special cases
  # (about 2x faster on CPU at 4K).
  return jnp.exp(p * jnp.log(jnp.maximum(base, _POW_EPS)))

Array = jax.Array | np.ndarray


def _temperature_coefs(means: jax.Array, x: jax.Array) -> jax.Array:
  """Per-channel gains of the temperature filter from channel means [B,1,1,3]."""
  gray = jnp.mean(means, axis=-1, keepdims=True)
  # Gray-world correction of the input, subtracted so that x = 0 is identity.
  base = 1 - gray / (means + _EPS)
  ax = jnp.abs(x)
  # |x| is added to the mean of R when x < 0 (cooler), to B when x > 0
  # (warmer), and half of it to G whenever x != 0.
  shift = jnp.concatenate(
      [ax * (x < 0), 0.5 * ax * (x != 0), ax * (x > 0)], axis=-1)
  shifted = means + shift
  gray_ = jnp.mean(shifted, axis=-1, keepdims=True)
  return gray_ / (shifted + _EPS) + base


def temperature(image: jax.Array, x: jax.Array) -> jax.Array:
  """Color temperature: gray-world gains shifted toward blue (x<0) or red."""
  means = jnp.mean(image, axis=(1, 2), keepdims=True)
  return jnp.clip(_temperature_coefs(means, x) * image, 0.0, 1.0)


def _brightness_alpha(x: jax.Array) -> jax.Array:
  return jnp.where(x >= 0, 1 / ((1 - x) + _EPS), x + 1)


def brightness(image: jax.Array, x: jax.Array) -> jax.Array:
  """Brightness: HSV value scaled by 1/(1-x) for x >= 0, by 1+x otherwise."""
  # The official code goes RGB -> HSV, scales V, and goes back. HSV -> RGB is
  # linear in V for fixed H and S, so that equals scaling RGB directly (up to
  # kornia's 1e-8 in S); this is much cheaper at 4K and has clean gradients.
  # tests/filters_test.py checks the equality against dm-pix's HSV round trip.
  return jnp.clip(image * _brightness_alpha(x), 0.0, 1.0)


def _contrast_factor(x: jax.Array, straight_through: bool = False) -> jax.Array:
  # Official quirk kept on purpose: floor() has zero gradient, so a positive
  # contrast argument gets no gradient through this filter. `straight_through`
  # keeps the values and gives it the gradient of the factor without floor().
  positive = 255 / (256 - jnp.floor(x * 255)) - 1
  if straight_through:
    smooth = 255 / (256 - x * 255) - 1
    positive = positive + (smooth - jax.lax.stop_gradient(smooth))
  return jnp.where(x > 0, positive, x)


def contrast(image: jax.Array, x: jax.Array, straight_through: bool = False) -> jax.Array:
  """Contrast: I + (I - mean(I)) * x', the mean over the whole image.

  `straight_through`: the same values, but a positive argument has a gradient
  (official: none; see `_contrast_factor`).
  """
  threshold = jnp.mean(image, axis=(1, 2, 3), keepdims=True)
  factor = _contrast_factor(x, straight_through)
  return jnp.clip(image + (image - threshold) * factor, 0.0, 1.0)


def saturation(image: jax.Array, x: jax.Array) -> jax.Array:
  """Saturation around the per-pixel (max + min) / 2, HSL style."""
  r, g, b = image[..., 0:1], image[..., 1:2], image[..., 2:3]
  # Elementwise over 3 slices: much faster on CPU than a reduce over channels.
  cmin = jnp.minimum(jnp.minimum(r, g), b)
  cmax = jnp.maximum(jnp.maximum(r, g), b)
  var = cmax - cmin
  ran = cmax + cmin
  mean = ran / 2
  # HSL saturation.
  s = var / jnp.where(mean < 0.5, ran + _EPS, 2 - ran + _EPS)
  # x >= 0: I + (I - mean) * a with a = 1/max(s, 1-x) - 1 (saturate up to
  # s = 1 at most); x < 0: mean + (I - mean) * (1 + x). Both are
  # mean + (I - mean) * factor, computed once.
  factor_pos = 1 / (jnp.where(x + s > 1, s, 1 - x) + _EPS)
  factor = jnp.where(x >= 0, factor_pos, 1 + x)
  return jnp.clip(mean + (image - mean) * factor, 0.0, 1.0)


def highlight(image: jax.Array, x: jax.Array) -> jax.Array:
  """Highlight: 1 - (1 - I)^(1 + x)."""
  out = jnp.clip(_pow(1 - image, x + 1), 0.0, 1.0)
  return jnp.clip(1 - out, 0.0, 1.0)


def shadow(image: jax.Array, x: jax.Array) -> jax.Array:
  """Shadow: I^(1 - x)."""
  return jnp.clip(_pow(image, 1 - x), 0.0, 1.0)


FILTERS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "temperature": temperature,
    "brightness": brightness,
    "contrast": contrast,
    "saturation": saturation,
    "highlight": highlight,
    "shadow": shadow,
}


# Inverses: exact where the forward filter clipped nothing. Temperature and
# contrast use whole-image statistics, so they invert the *unblended* filter
# output (mask = 1); the pointwise four also invert outputs blended with a
# binary mask.

def _temperature_inverse(image: jax.Array, x: jax.Array) -> jax.Array:
  # The gains depend on the unknown input means m through
  # mean(out) = k(m) * m; solve that 3-vector equation per image by Newton's
  # method from m = mean(out) (plain fixed-point iteration diverges for
  # |x| > ~0.5).
  target = jnp.mean(image, axis=(1, 2))  # [B, 3]
  xs = x.reshape(-1)

  def residual(m, x1, t):  # One image: m, t [3], x1 [].
    k = _temperature_coefs(m.reshape(1, 1, 1, 3), x1.reshape(1, 1, 1, 1))
    return k.reshape(3) * m - t

  jacobian = jax.vmap(jax.jacfwd(residual))
  residuals = jax.vmap(residual)

  def newton(_, m):
    step = jnp.linalg.solve(jacobian(m, xs, target),
                            residuals(m, xs, target)[..., None])
    return m - step[..., 0]

  means = jax.lax.fori_loop(0, 20, newton, target)[:, None, None, :]
  return jnp.clip(image / _temperature_coefs(means, x), 0.0, 1.0)


def _contrast_inverse(image: jax.Array, x: jax.Array) -> jax.Array:
  # The forward map keeps the whole-image mean, so it is known from the output.
  threshold = jnp.mean(image, axis=(1, 2, 3), keepdims=True)
  f = _contrast_factor(x)
  return jnp.clip((image + threshold * f) / (1 + f), 0.0, 1.0)


def _brightness_inverse(image: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.clip(image / _brightness_alpha(x), 0.0, 1.0)


def _saturation_inverse(image: jax.Array, x: jax.Array) -> jax.Array:
  # Both branches keep (max + min) / 2 and scale HSL saturation by a constant
  # (1 / (1 - x) or 1 + x) unless it reaches 1, so the opposite argument
  # undoes them.
  return saturation(image, -x)


def _highlight_inverse(image: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.clip(1 - _pow(1 - image, 1 / (1 + x)), 0.0, 1.0)


def _shadow_inverse(image: jax.Array, x: jax.Array) -> jax.Array:
  return jnp.clip(_pow(image, 1 / (1 - x)), 0.0, 1.0)


INVERSES: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    "temperature": _temperature_inverse,
    "brightness": _brightness_inverse,
    "contrast": _contrast_inverse,
    "saturation": _saturation_inverse,
    "highlight": _highlight_inverse,
    "shadow": _shadow_inverse,
}

# Arguments at which a filter destroys information (no inverse there):
# contrast -1 and saturation -1 collapse to a gray, highlight -1 to black...
SINGULAR_ARGS = {"contrast": -1.0, "saturation": -1.0, "highlight": -1.0,
                 "shadow": 1.0, "brightness": -1.0}


def _prepare(image: Array, mask: Array, arg: Array, nargs: int | None = None
             ) -> tuple[jax.Array, jax.Array, jax.Array, bool]:
  """Batches image/mask/arg; returns (image, mask, arg, was_unbatched)."""
  image = jnp.asarray(image, jnp.float32)
  mask = jnp.asarray(mask, jnp.float32)
  arg = jnp.asarray(arg, jnp.float32)
  if image.ndim not in (3, 4) or image.shape[-1] != 3:
    raise ValueError(f"image must be [H,W,3] or [B,H,W,3], got {image.shape}")
  unbatched = image.ndim == 3
  if unbatched:
    image, mask, arg = image[None], mask[None], arg[None]
  if mask.shape[:-1] != image.shape[:-1] or mask.shape[-1] != 1:
    raise ValueError(f"mask must be {image.shape[:-1] + (1,)} to match the "
                     f"image {image.shape}, got {mask.shape}")
  b = image.shape[0]
  if nargs is None:
    arg = jnp.broadcast_to(jnp.reshape(arg, (-1, 1, 1, 1)), (b, 1, 1, 1))
  elif arg.shape[-1] != nargs:
    raise ValueError(f"args must end in {nargs} (one per filter in "
                     f"{FILTER_NAMES}), got shape {arg.shape}")
  else:
    arg = jnp.broadcast_to(jnp.reshape(arg, (-1, 1, 1, nargs)),
                           (b, 1, 1, nargs))
  return image, mask, arg, unbatched


def _check_name(name: str) -> None:
  if name not in FILTERS:
    raise ValueError(f"Unknown filter {name!r}; valid: {FILTER_NAMES}")


def blend(filtered: jax.Array, mask: jax.Array, image: jax.Array) -> jax.Array:
  """mask * filtered + (1 - mask) * image: the background stays untouched."""
  return filtered * mask + image * (1 - mask)


def apply_filter(name: str, image: Array, mask: Array, arg: Array
                 ) -> jax.Array:
  """Applies filter `name` with argument `arg` to the masked foreground."""
  _check_name(name)
  image, mask, arg, unbatched = _prepare(image, mask, arg)
  out = blend(FILTERS[name](image, arg), mask, image)
  return out[0] if unbatched else out


def invert_filter(name: str, image: Array, mask: Array, arg: Array
                  ) -> jax.Array:
  """Undoes `apply_filter(name, ., mask, arg)` on the masked foreground.

  Exact (to float precision) where the forward filter clipped no value and
  arg is not the filter's SINGULAR_ARGS value. Brightness, saturation,
  highlight and shadow are per pixel, so with a binary mask they also
  invert the blended output.
  Temperature and contrast depend on whole-image means, so they invert
  exactly only the filter on the whole image (mask = 1).
  """
  _check_name(name)
  image, mask, arg, unbatched = _prepare(image, mask, arg)
  out = blend(INVERSES[name](image, arg), mask, image)
  return out[0] if unbatched else out


def apply_filters(image: Array, mask: Array, args: Array,
                  names: Sequence[str] = FILTER_NAMES,
                  contrast_straight_through: bool = False
                  ) -> tuple[jax.Array, list[jax.Array]]:
  """Applies the filters in order; returns (final, [output of each filter]).

  `contrast_straight_through` (training only; values unchanged): a positive
  contrast argument gets a gradient (`contrast`).

  args: [..., len(names)], batched [B, 6] or unbatched [6]. As in the
  official `FilterPerformer.restore`, each filter acts on the previous
  filter's unblended output (so whole-image statistics see the filtered
  background too) and each returned output is blended with the input image.
  The models.md summary says "re-blended before the next"; the code does not,
  and we follow the code.
  """
  for name in names:
    _check_name(name)
  image, mask, args, unbatched = _prepare(image, mask, args, len(names))
  table = FILTERS
  if contrast_straight_through:
    table = {**FILTERS, "contrast": functools.partial(contrast, straight_through=True)}
  current = image
  outputs = []
  for i, name in enumerate(names):
    current = table[name](current, args[..., i:i + 1])
    outputs.append(blend(current, mask, image))
  if unbatched:
    outputs = [o[0] for o in outputs]
  return outputs[-1], outputs
