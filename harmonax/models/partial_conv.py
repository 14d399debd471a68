"""Partial convolution (Liu et al., ECCV 2018), as used by DoveNet and BargainNet.

A partial convolution sees only the pixels where `mask` is 1: it convolves
`x * mask`, rescales each output by `window_size / sum(mask in window)` so the
result does not depend on how much of the window was masked out, and zeroes
outputs whose window holds no valid pixel. It returns the updated mask
(1 where the window held any valid pixel) for the next layer.

This follows the official code of both papers (single-channel mask, window
sum clamped to [0, 1] for the updated mask, ratio `k*k / (sum + 1e-8)`), so
soft masks behave exactly as there. Without a mask the layer is a plain
convolution, which is how DoveNet's global stream uses the same layer type.
"""

from flax import nnx
import jax
import jax.numpy as jnp

from harmonax import torch_import

# pix2pix-style init used by the official code (init_weights, 'normal', 0.02).
DEFAULT_KERNEL_INIT = nnx.initializers.normal(0.02)


def _conv(x: jax.Array, kernel: jax.Array, stride: int, padding: int) -> jax.Array:
  return jax.lax.conv_general_dilated(
      x, kernel, window_strides=(stride, stride),
      padding=((padding, padding), (padding, padding)),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))


class PartialConv2d(nnx.Module):
  """Mask-renormalized 2D convolution on NHWC inputs with a [B, H, W, 1] mask.

  `kernel` is [kh, kw, in, out] (torch_import maps PyTorch's `weight` onto it),
  `bias` is [out] or None. `__call__(x, mask, kernel=...)` accepts a replacement
  kernel so that wrappers such as spectral normalization can normalize the
  weight functionally instead of overwriting the parameter.
  """

  def __init__(self, in_features: int, out_features: int, kernel_size: int = 3, *,
               stride: int = 1, padding: int = 0, use_bias: bool = True,
               kernel_init=DEFAULT_KERNEL_INIT, rngs: nnx.Rngs):
    self.in_features = in_features
    self.out_features = out_features
    self.kernel_size = kernel_size
    self.stride = stride
    self.padding = padding
    # As flax layers: compute dtype (None: the inputs'), parameters in float32.
    self.dtype = None
    self.param_dtype = jnp.float32
    self.kernel = nnx.Param(kernel_init(
        rngs.params(), (kernel_size, kernel_size, in_features, out_features)))
    self.bias = nnx.Param(jnp.zeros((out_features,))) if use_bias else None

  def __call__(self, x: jax.Array, mask: jax.Array | None = None, *,
               kernel: jax.Array | None = None) -> tuple[jax.Array, jax.Array | None]:
    """Returns (output [B, H', W', out], updated mask [B, H', W', 1] or None).

    Args:
      x: [B, H, W, in] features.
      mask: [B, H, W, 1] validity in [0, 1], or None for a plain convolution.
      kernel: replaces `self.kernel` for this call (same shape).
    """
    if x.ndim != 4 or x.shape[-1] != self.in_features:
      raise ValueError(f"PartialConv2d expects [B, H, W, {self.in_features}] input, "
                       f"got shape {x.shape}")
    kernel = self.kernel[...] if kernel is None else kernel
    bias = None if self.bias is None else self.bias[...]
    dtype = self.dtype or jnp.result_type(x, kernel)
    x, kernel = x.astype(dtype), kernel.astype(dtype)
    bias = None if bias is None else bias.astype(dtype)
    if mask is None:
      y = _conv(x, kernel, self.stride, self.padding)
      return (y if bias is None else y + bias), None
    if mask.shape[:3] != x.shape[:3] or mask.shape[-1] != 1:
      raise ValueError(f"PartialConv2d mask must be {x.shape[:3] + (1,)}, got {mask.shape}")
    # The mask carries no gradient in the official code (computed under no_grad).
    mask = jax.lax.stop_gradient(mask)
    # The mask's window sums and ratios in the mask's dtype (float32).
    ones = jnp.ones((self.kernel_size, self.kernel_size, 1, 1), mask.dtype)
    window_sum = _conv(mask, ones, self.stride, self.padding)
    updated = jnp.clip(window_sum, 0.0, 1.0)
    ratio = (self.kernel_size ** 2 / (window_sum + 1e-8) * updated).astype(dtype)
    updated_x = updated.astype(dtype)
    raw = _conv(x * mask.astype(dtype), kernel, self.stride, self.padding)
    if bias is None:
      return raw * ratio, updated
    return (raw * ratio + bias) * updated_x, updated


torch_import.register_rules(PartialConv2d, (
    torch_import.Rule("weight", "kernel", torch_import.conv_to_nnx, torch_import.conv_to_torch),
    torch_import.Rule("bias", "bias"),
))
