"""Harmonizer's six white-box filters, forward only, in numpy, on a foreground.

The builder recolors composites with the filters that Harmonizer (Ke et al.,
ECCV 2022) learns to undo. The formulas are the official code's
(ZHKKKe/Harmonizer, src/model/filter.py), as `harmonax.filters` writes them in
jax for the model; tests/filters_test.py checks that the two agree to float32
precision. This copy exists because the builders must not import harmonax
(dependencies point one way) and because it is cheaper: every filter is per
pixel given at most one whole-image statistic (temperature: the channel means;
contrast: the grey mean), so only the foreground pixels are computed, with the
fixed background entering through its sums.
"""

import numpy as np

FILTER_NAMES = ("temperature", "brightness", "contrast", "saturation",
                "highlight", "shadow")

_EPS = 1e-6      # The official filters' epsilon.
_POW_EPS = 1e-9  # pow() bases are kept >= this (as harmonax.filters does).


def _pow(base: np.ndarray, p: float) -> np.ndarray:
  return np.exp(np.float32(p) * np.log(np.maximum(base, np.float32(_POW_EPS))))


# Every filter below takes the foreground as color planes fg [3, N] (float32)
# and the current whole-image channel means where it needs them.


def _temperature(fg: np.ndarray, x: float, means: np.ndarray) -> np.ndarray:
  gray = means.mean()
  base = 1 - gray / (means + _EPS)
  ax = abs(x)
  # |x| is added to R's mean when x < 0 (cooler), to B's when x > 0 (warmer),
  # and half of it to G's whenever x != 0.
  shifted = means + np.array([ax * (x < 0), 0.5 * ax * (x != 0), ax * (x > 0)])
  gains = shifted.mean() / (shifted + _EPS) + base
  return np.clip(fg * gains.astype(np.float32)[:, None], 0.0, 1.0)


def _brightness(fg: np.ndarray, x: float) -> np.ndarray:
  alpha = 1 / ((1 - x) + _EPS) if x >= 0 else x + 1
  return np.clip(fg * np.float32(alpha), 0.0, 1.0)


def _contrast(fg: np.ndarray, x: float, means: np.ndarray) -> np.ndarray:
  # floor(): the official quirk that harmonax.filters keeps too.
  factor = 255 / (256 - np.floor(x * 255)) - 1 if x > 0 else x
  return np.clip(fg + (fg - np.float32(means.mean())) * np.float32(factor), 0.0, 1.0)


def _saturation(fg: np.ndarray, x: float) -> np.ndarray:
  cmin = np.minimum(np.minimum(fg[0], fg[1]), fg[2])
  cmax = np.maximum(np.maximum(fg[0], fg[1]), fg[2])
  ran = cmax + cmin
  mean = ran / 2
  s = (cmax - cmin) / np.where(mean < 0.5, ran + _EPS, 2 - ran + _EPS)
  factor = 1 / (np.where(x + s > 1, s, 1 - x) + _EPS) if x >= 0 else np.float32(1 + x)
  return np.clip(mean + (fg - mean) * factor, 0.0, 1.0)


def _highlight(fg: np.ndarray, x: float) -> np.ndarray:
  return np.clip(1 - np.clip(_pow(1 - fg, x + 1), 0.0, 1.0), 0.0, 1.0)


def _shadow(fg: np.ndarray, x: float) -> np.ndarray:
  return np.clip(_pow(fg, 1 - x), 0.0, 1.0)


def _channel_sums(image: np.ndarray) -> np.ndarray:
  """Per-channel sums of an [H, W, 3] image, float64 (uint8: exact, from histograms)."""
  if image.dtype == np.uint8:
    counts = np.stack([np.bincount(image[..., c].ravel(), minlength=256) for c in range(3)])
    return counts @ np.arange(256.0)
  return np.asarray(image, np.float64).reshape(-1, 3).sum(axis=0)


def apply_filters(image: np.ndarray, mask: np.ndarray,
                  filters: list[tuple[str, float]]) -> np.ndarray:
  """The foreground pixels [N, 3] after each filter in turn, blended with `mask` each time.

  Equals `harmonax.filters.apply_filter(name, image, mask, arg)` applied in
  sequence to the whole image and then read at `image[mask]`: the background
  never changes, so the whole-image means are the background's fixed sums
  plus the current foreground's.

  Args:
    image: uint8 [H, W, 3], or float [H, W, 3] in [0, 1].
    mask: bool [H, W], True on the foreground.
    filters: (name, argument in [-1, 1]) pairs, names from FILTER_NAMES.

  Raises:
    ValueError: an unknown filter name.
  """
  for name, _ in filters:
    if name not in FILTER_NAMES:
      raise ValueError(f"Unknown filter {name!r}; valid: {FILTER_NAMES}")
  scale = 255.0 if image.dtype == np.uint8 else 1.0
  pixels = np.take(image.reshape(-1, 3), np.flatnonzero(mask), axis=0)
  # float32 as harmonax.filters, as color planes [3, N]; sums in float64.
  fg = np.ascontiguousarray((pixels / scale).T, np.float32)
  background_sum = _channel_sums(image) / scale - fg.sum(axis=1, dtype=np.float64)
  count = mask.size
  for name, arg in filters:
    x = float(arg)
    if name in ("temperature", "contrast"):
      means = (background_sum + fg.sum(axis=1, dtype=np.float64)) / count
      fg = (_temperature if name == "temperature" else _contrast)(fg, x, means)
    else:
      fg = {"brightness": _brightness, "saturation": _saturation,
            "highlight": _highlight, "shadow": _shadow}[name](fg, x)
  return fg.T.astype(np.float64)
