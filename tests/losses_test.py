"""Tests of harmonax.losses against hand-computed values."""

import numpy as np
import pytest

from harmonax import losses


def _pair():
  # Two 2x2 RGB images. Image 0: one pixel off by (1, 2, 2) in the foreground;
  # image 1: every value off by 0.5.
  pred = np.zeros((2, 2, 2, 3), np.float32)
  target = np.zeros((2, 2, 2, 3), np.float32)
  pred[0, 0, 0] = (1.0, 2.0, 2.0)
  pred[1] += 0.5
  mask = np.zeros((2, 2, 2, 1), np.float32)
  mask[0, 0, 0] = 1.0
  mask[1] = 1.0
  return pred, target, mask


def test_fn_mse_hand_values():
  pred, target, mask = _pair()
  # Image 0: sum sq = 1 + 4 + 4 = 9, area 1 -> 9 / (3 * 1) = 3.
  # Image 1: sum sq = 12 * 0.25 = 3, area 4 -> 3 / (3 * 4) = 0.25.
  assert float(losses.fn_mse(pred, target, mask, min_area=0.5)) == pytest.approx(
      (3.0 + 0.25) / 2)


def test_fn_mse_min_area_bounds_normalizer():
  pred, target, mask = _pair()
  # min_area 2: image 0 divides by 3 * 2 (9/6 = 1.5); image 1 keeps area 4.
  assert float(losses.fn_mse(pred, target, mask, min_area=2.0)) == pytest.approx(
      (1.5 + 0.25) / 2)


def test_fn_mse_counts_background_error_and_soft_mask_area():
  # The squared error is summed over all pixels (official MaskWeightedMSE);
  # a soft mask contributes its fractional area.
  pred = np.zeros((1, 2, 2, 1), np.float32)
  pred[0, 1, 1] = 2.0  # Error in the background.
  target = np.zeros_like(pred)
  mask = np.zeros((1, 2, 2, 1), np.float32)
  mask[0, 0, 0] = 0.5
  mask[0, 0, 1] = 1.0
  assert float(losses.fn_mse(pred, target, mask, min_area=0.0)) == pytest.approx(4 / 1.5)


def test_mse_and_l1_hand_values():
  pred = np.array([[1.0, -2.0], [0.5, 0.0]], np.float32)
  target = np.zeros_like(pred)
  assert float(losses.mse(pred, target)) == pytest.approx((1 + 4 + 0.25) / 4)
  assert float(losses.l1(pred, target)) == pytest.approx((1 + 2 + 0.5) / 4)


def test_shape_errors_name_the_problem():
  pred, target, mask = _pair()
  with pytest.raises(ValueError, match="shapes differ"):
    losses.l1(pred, target[:, :1])
  with pytest.raises(ValueError, match=r"mask must be \[B, H, W, 1\]"):
    losses.fn_mse(pred, target, mask[..., 0], min_area=1.0)
