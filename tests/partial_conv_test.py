"""Tests for the partial convolution, spectral norm and transposed conv layers."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmonax import torch_import
from harmonax.models import attention_unet
from harmonax.models import partial_conv
from harmonax.models import spectral_norm


def _pconv(i=2, o=3, k=3, stride=1, padding=0, use_bias=True, seed=0):
  return partial_conv.PartialConv2d(i, o, k, stride=stride, padding=padding,
                                    use_bias=use_bias, rngs=nnx.Rngs(seed))


def test_output_ignores_masked_out_pixels():
  conv = _pconv(stride=2, padding=1)
  rng = np.random.RandomState(0)
  x = rng.randn(2, 9, 9, 2).astype(np.float32)
  mask = (rng.rand(2, 9, 9, 1) > 0.5).astype(np.float32)
  y1, m1 = conv(jnp.asarray(x), jnp.asarray(mask))
  x2 = np.where(mask > 0, x, 1e3 * rng.randn(*x.shape)).astype(np.float32)
  y2, m2 = conv(jnp.asarray(x2), jnp.asarray(mask))
  np.testing.assert_allclose(y1, y2, atol=1e-5)
  np.testing.assert_array_equal(m1, m2)
  assert y1.shape == (2, 5, 5, 3) and m1.shape == (2, 5, 5, 1)


def test_renormalization_hand_case():
  # 3x3 kernel of ones on an all-ones image; 3 of the 9 window pixels valid.
  conv = _pconv(i=1, o=1)
  conv.kernel[...] = jnp.ones((3, 3, 1, 1))
  conv.bias[...] = jnp.array([0.5])
  x = jnp.ones((1, 3, 3, 1))
  mask = jnp.zeros((1, 3, 3, 1)).at[0, 0, :, 0].set(1.0)
  y, m = conv(x, mask)
  # raw = 3 valid pixels; scaled by 9 / 3, then the bias: 9 + 0.5.
  np.testing.assert_allclose(y[0, 0, 0, 0], 9.5, rtol=1e-6)
  assert m[0, 0, 0, 0] == 1.0
  # A window without valid pixels gives 0 output and 0 updated mask.
  y0, m0 = conv(x, jnp.zeros_like(mask))
  assert float(y0[0, 0, 0, 0]) == 0.0 and float(m0[0, 0, 0, 0]) == 0.0
  # Soft masks follow the same formula: ratio 9 / sum(mask), updated mask clamped.
  soft = jnp.full((1, 3, 3, 1), 0.05)
  ys, ms = conv(x, soft)
  # raw = 9 * 0.05, ratio = 9 / 0.45 * 0.45, (raw * ratio + bias) * updated.
  np.testing.assert_allclose(ys[0, 0, 0, 0], (0.45 * 9 + 0.5) * 0.45, rtol=1e-5)
  np.testing.assert_allclose(ms[0, 0, 0, 0], 0.45, rtol=1e-6)


def test_without_mask_is_a_plain_convolution():
  conv = _pconv(stride=2)
  ref = nnx.Conv(2, 3, (3, 3), strides=(2, 2), padding="VALID", rngs=nnx.Rngs(1))
  ref.kernel[...] = conv.kernel[...]
  conv.bias[...] = jnp.arange(3.0)
  ref.bias[...] = conv.bias[...]
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 2))
  y, m = conv(x)
  assert m is None
  np.testing.assert_allclose(y, ref(x), atol=1e-5)


def test_bad_mask_shape_is_named():
  with pytest.raises(ValueError, match="mask must be"):
    _pconv()(jnp.ones((1, 5, 5, 2)), jnp.ones((1, 5, 5, 2)))


def test_spectral_norm_converges_to_unit_singular_value():
  sn = spectral_norm.SpectralNorm(_pconv(i=4, o=6), rngs=nnx.Rngs(0))
  raw = np.array(sn.layer.kernel[...])
  x = jnp.ones((1, 5, 5, 4))
  for _ in range(30):  # training calls: one power iteration each
    sn(x)
  w = spectral_norm.weight_matrix(sn.normalized_kernel(update_stats=False))
  np.testing.assert_allclose(np.linalg.svd(np.asarray(w), compute_uv=False)[0], 1.0, atol=1e-3)
  # The raw weight stays the parameter (unlike nnx.SpectralNorm, which overwrites it).
  np.testing.assert_array_equal(sn.layer.kernel[...], raw)
  # Eval mode leaves the power-iteration vectors alone.
  sn.eval()
  u = np.array(sn.u[...])
  sn(x)
  np.testing.assert_array_equal(sn.u[...], u)
  assert set(nnx.state(sn, nnx.BatchStat).to_pure_dict()) == {"u", "v"}


def test_spectral_norm_matches_torch():
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  ref = torch.nn.utils.spectral_norm(torch.nn.Conv2d(4, 6, 3, stride=2))
  ref.train()
  sd = {k: v.detach().numpy().copy() for k, v in ref.state_dict().items()}
  sn = spectral_norm.SpectralNorm(_pconv(i=4, o=6, stride=2), rngs=nnx.Rngs(0))
  torch_import.load_into(sn, spectral_norm.torch_names_to_wrapper(sd))
  x = np.random.RandomState(0).randn(2, 4, 9, 9).astype(np.float32)
  with torch.no_grad():
    want = ref(torch.from_numpy(x)).numpy()
  got, _ = sn(jnp.asarray(x.transpose(0, 2, 3, 1)))
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-5)
  np.testing.assert_allclose(sn.u[...], ref.weight_u.numpy(), atol=1e-6)
  back = spectral_norm.wrapper_names_to_torch(torch_import.to_state_dict(sn))
  assert sorted(back) == sorted(sd)


def test_conv_transpose_matches_torch():
  torch = pytest.importorskip("torch")
  layer = attention_unet.up_conv(3, 5, rngs=nnx.Rngs(0))
  layer.bias[...] = jnp.arange(5.0)
  x = np.random.RandomState(0).randn(2, 3, 4, 6).astype(np.float32)
  weight = torch_import.conv_transpose_to_torch(np.asarray(layer.kernel[...]))
  want = torch.nn.functional.conv_transpose2d(
      torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(weight)),
      torch.arange(5.0), stride=2, padding=1).numpy()
  got = layer(jnp.asarray(x.transpose(0, 2, 3, 1)))
  assert got.shape == (2, 8, 12, 5)
  np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), want, atol=1e-5)
