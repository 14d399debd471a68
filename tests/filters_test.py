"""Tests of harmonax.filters against hand-computed values of the official formulas."""

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmonax import filters

RGB = (0.2, 0.4, 0.6)


def _const(rgb=RGB, h=2, w=3):
  return np.broadcast_to(np.asarray(rgb, np.float32), (h, w, 3)).copy()


def _ones(image):
  return np.ones(image.shape[:-1] + (1,), np.float32)


def _apply(name, image, arg):
  return np.asarray(filters.apply_filter(name, image, _ones(image), arg))


@pytest.mark.parametrize("name,arg,expected", [
    # gray 0.4; shifted means (0.2, 0.65, 1.1), gray' 0.65;
    # gains 0.65/0.2 - 1, 0.65/0.65 + 0, 0.65/1.1 + 1/3.
    ("temperature", 0.5, (0.45, 0.4, 0.6 * (0.65 / 1.1 + 1 / 3))),
    # shifted means (0.7, 0.65, 0.6), gray' 0.65; R gain 0.65/0.7 - 1 < 0.
    ("temperature", -0.5, (0.0, 0.4, 0.6 * (0.65 / 0.6 + 1 / 3))),
    ("temperature", -0.1, (0.2 * (0.45 / 0.3 - 1), 0.4 * 0.45 / 0.45,
                           0.6 * (0.45 / 0.6 + 1 / 3))),
    ("brightness", 0.5, (0.4, 0.8, 1.0)),  # x 1/(1-x) = 2, clipped.
    ("brightness", -0.5, (0.1, 0.2, 0.3)),  # x (1+x).
    # HSL: mean 0.4 < 0.5, s = 0.4/0.8 = 0.5.
    ("saturation", -0.5, (0.3, 0.4, 0.5)),  # mean + (I-mean)(1+x)
    ("saturation", 0.25, (0.2 - 0.2 / 3, 0.4, 0.6 + 0.2 / 3)),  # a = 1/0.75-1
    ("saturation", 0.75, (0.0, 0.4, 0.8)),  # x+s > 1: a = 1/s - 1 = 1
    ("highlight", 1.0, (1 - 0.8**2, 1 - 0.6**2, 1 - 0.4**2)),
    ("highlight", -0.5, (1 - 0.8**0.5, 1 - 0.6**0.5, 1 - 0.4**0.5)),
    ("shadow", 0.5, (0.2**0.5, 0.4**0.5, 0.6**0.5)),
    ("shadow", -1.0, (0.04, 0.16, 0.36)),
])
def test_filter_matches_hand_values(name, arg, expected):
  out = _apply(name, _const(), arg)
  np.testing.assert_allclose(out, _const(expected), atol=2e-5)


@pytest.mark.parametrize("arg,expected", [
    (-0.5, (0.3, 0.5)),  # mean 0.4 (whole image), factor x.
    (0.5, (0.2 - 0.2 * (255 / 129 - 1), 0.6 + 0.2 * (255 / 129 - 1))),
])
def test_contrast_matches_hand_values(arg, expected):
  image = np.zeros((1, 2, 3), np.float32)
  image[0, 0], image[0, 1] = 0.2, 0.6
  out = _apply("contrast", image, arg)
  np.testing.assert_allclose(out[0, :, 0], expected, atol=2e-5)


@pytest.mark.parametrize("name", filters.FILTER_NAMES)
def test_zero_argument_is_identity(name):
  image = np.random.default_rng(0).uniform(0, 1, (2, 5, 4, 3)).astype(np.float32)
  np.testing.assert_allclose(_apply(name, image, 0.0), image, atol=2e-6)


@pytest.mark.parametrize("name", filters.FILTER_NAMES)
@pytest.mark.parametrize("arg", [-0.8, -0.3, 0.2, 0.45])
def test_inverse_recovers_unclipped_input(name, arg):
  rng = np.random.default_rng(1)
  image = rng.uniform(0.3, 0.5, (2, 6, 6, 3)).astype(np.float32)
  mask = _ones(image)
  out = np.asarray(filters.apply_filter(name, image, mask, arg))
  assert ((out > 0) & (out < 1)).all(), "test input must not clip"
  back = filters.invert_filter(name, out, mask, arg)
  np.testing.assert_allclose(back, image, atol=5e-5)
  if name != "contrast" or arg < 0:  # Positive contrast has no gradient.
    assert np.abs(out - image).max() > 1e-3, "the filter must change the image"


@pytest.mark.parametrize("name", ["brightness", "saturation", "highlight", "shadow"])
def test_pointwise_inverse_undoes_blended_output(name):
  rng = np.random.default_rng(2)
  image = rng.uniform(0.3, 0.5, (5, 5, 3)).astype(np.float32)
  mask = (rng.uniform(0, 1, (5, 5, 1)) > 0.5).astype(np.float32)
  out = filters.apply_filter(name, image, mask, -0.4)
  np.testing.assert_allclose(
      filters.invert_filter(name, out, mask, -0.4), image, atol=5e-5)


def test_background_is_untouched():
  rng = np.random.default_rng(3)
  image = rng.uniform(0, 1, (2, 8, 8, 3)).astype(np.float32)
  mask = np.zeros((2, 8, 8, 1), np.float32)
  mask[:, 2:6, 2:6] = 1
  args = rng.uniform(-1, 1, (2, 6)).astype(np.float32)
  final, outs = filters.apply_filters(image, mask, args)
  assert len(outs) == 6
  for out in outs:
    np.testing.assert_array_equal(np.asarray(out)[mask[..., 0] == 0],
                                  image[mask[..., 0] == 0])
  assert np.abs(np.asarray(final) - image).max() > 1e-2


def test_apply_filters_chains_unblended_outputs():
  rng = np.random.default_rng(4)
  image = rng.uniform(0, 1, (2, 6, 7, 3)).astype(np.float32)
  mask = (rng.uniform(0, 1, (2, 6, 7, 1)) > 0.5).astype(np.float32)
  args = rng.uniform(-0.7, 0.7, (2, 6)).astype(np.float32)
  final, outs = filters.apply_filters(image, mask, args)
  current = image
  ones = _ones(image)
  for i, name in enumerate(filters.FILTER_NAMES):
    current = filters.apply_filter(name, current, ones, args[:, i])
    np.testing.assert_allclose(outs[i], mask * current + (1 - mask) * image,
                               atol=1e-6)
  np.testing.assert_array_equal(final, outs[-1])


def test_unbatched_matches_batched_and_per_image_args():
  rng = np.random.default_rng(5)
  image = rng.uniform(0, 1, (2, 4, 4, 3)).astype(np.float32)
  mask = rng.uniform(0, 1, (2, 4, 4, 1)).astype(np.float32)
  args = np.array([[0.3, -0.2, 0.5, -0.6, 0.1, 0.4],
                   [-0.5, 0.6, -0.1, 0.2, -0.3, -0.4]], np.float32)
  batched, _ = filters.apply_filters(image, mask, args)
  for i in range(2):
    single, _ = filters.apply_filters(image[i], mask[i], args[i])
    np.testing.assert_allclose(single, batched[i], atol=1e-6)
  per_image = filters.apply_filter("contrast", image, mask, args[:, 2])
  np.testing.assert_allclose(
      per_image[1], filters.apply_filter("contrast", image[1], mask[1], args[1, 2]),
      atol=1e-6)


def test_brightness_equals_hsv_value_scaling():
  image = np.random.default_rng(6).uniform(0, 1, (3, 5, 3)).astype(np.float32)
  for arg, alpha in [(0.4, 1 / 0.6), (-0.3, 0.7)]:
    hsv = pix.rgb_to_hsv(jnp.asarray(image))
    via_hsv = jnp.clip(pix.hsv_to_rgb(hsv.at[..., 2].multiply(alpha)), 0, 1)
    np.testing.assert_allclose(_apply("brightness", image, arg), via_hsv, atol=1e-5)


def test_gradients_are_finite_at_extreme_arguments():
  image = jnp.asarray(np.random.default_rng(7).uniform(0, 1, (2, 4, 4, 3)),
                      jnp.float32).at[0, 0, 0].set(0.0).at[0, 0, 1].set(1.0)
  mask = jnp.ones((2, 4, 4, 1))

  def loss(args):
    return jnp.sum(filters.apply_filters(image, mask, args)[0])

  # Under jit too: XLA once turned highlight's (1 - I) + 1e-9 into 0 at I = 1.
  for grad_fn in (jax.grad(loss), jax.jit(jax.grad(loss))):
    for value in (-1.0, -0.3, 0.0, 1.0):
      grad = grad_fn(jnp.full((2, 6), value))
      assert np.isfinite(np.asarray(grad)).all(), value


def test_bad_inputs_name_the_problem():
  image = np.zeros((4, 4, 3), np.float32)
  with pytest.raises(ValueError, match="Unknown filter 'hue'"):
    filters.apply_filter("hue", image, _ones(image), 0.0)
  with pytest.raises(ValueError, match="mask must be"):
    filters.apply_filter("shadow", image, np.ones((4, 5, 1)), 0.0)
  with pytest.raises(ValueError, match="image must be"):
    filters.apply_filter("shadow", np.zeros((4, 4)), np.ones((4, 4, 1)), 0.0)
  with pytest.raises(ValueError, match="args must end in 6"):
    filters.apply_filters(image, _ones(image), np.zeros(5))


def test_builder_numpy_filters_equal_these():
  # data_builders keeps a numpy copy of the forward filters (the builders do
  # not import harmonax): it must stay equal to these.
  from data_builders.harmonization_composites import white_box  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(7)
  image = rng.uniform(0.05, 0.95, (24, 30, 3)).astype(np.float32)
  mask = np.zeros((24, 30), bool)
  mask[5:20, 8:25] = True
  for name in filters.FILTER_NAMES:
    for arg in (-0.45, -0.1, 0.2, 0.5):
      chain = [(name, arg), ("contrast", 0.3), ("temperature", -0.25)]
      expected = image
      for n, a in chain:
        expected = np.asarray(filters.apply_filter(n, expected, mask[..., None].astype(np.float32), a))
      np.testing.assert_allclose(white_box.apply_filters(image, mask, chain), expected[mask],
                                 atol=2e-6, err_msg=f"{name} {arg}")


@pytest.mark.parametrize("arg", [-0.6, -0.1, 0.1, 0.5, 0.95])
def test_straight_through_contrast_keeps_values_and_gives_positive_arguments_a_gradient(arg):
  rng = np.random.default_rng(9)
  image = jnp.asarray(rng.uniform(0.2, 0.6, (2, 5, 4, 3)), jnp.float32)
  mask = jnp.asarray(rng.uniform(0, 1, (2, 5, 4, 1)) > 0.4, jnp.float32)
  args = jnp.asarray([[0.1, -0.2, arg, 0.3, 0.1, -0.1]] * 2, jnp.float32)
  official, official_stages = filters.apply_filters(image, mask, args)
  smooth, smooth_stages = filters.apply_filters(image, mask, args, contrast_straight_through=True)
  np.testing.assert_array_equal(smooth, official)
  for a, b in zip(smooth_stages, official_stages):
    np.testing.assert_array_equal(a, b)

  def contrast_grad(straight_through):
    loss = lambda a: jnp.sum(jnp.square(filters.apply_filters(
        image, mask, a, contrast_straight_through=straight_through)[0] - 0.5))
    return np.asarray(jax.grad(loss)(args))[:, 2]

  if arg < 0:  # x' = x: both have the true gradient.
    np.testing.assert_allclose(contrast_grad(True), contrast_grad(False), rtol=1e-6)
    assert np.all(contrast_grad(False) != 0)
    return
  np.testing.assert_array_equal(contrast_grad(False), 0.0)  # The official filter's floor().
  # Straight through: d loss / d factor at the official (floored) factor, times the
  # derivative of the factor written without floor(), 255^2 / (256 - 255 x)^2.
  def loss_of_factor(factor):
    current = filters.brightness(filters.temperature(image, args[:, None, None, 0:1]),
                                 args[:, None, None, 1:2])
    mean = jnp.mean(current, axis=(1, 2, 3), keepdims=True)
    current = jnp.clip(current + (current - mean) * factor, 0, 1)
    for i, name in enumerate(filters.FILTER_NAMES[3:], start=3):
      current = filters.FILTERS[name](current, args[:, None, None, i:i + 1])
    return jnp.sum(jnp.square(current * mask + image * (1 - mask) - 0.5))
  floored = jnp.float32(255 / (256 - np.floor(np.float32(arg) * 255)) - 1)
  expected = jax.grad(loss_of_factor)(floored) * 255**2 / (256 - 255 * np.float32(arg))**2
  got = contrast_grad(True)
  assert np.all(got != 0)
  np.testing.assert_allclose(np.sum(got), expected, rtol=1e-4)
