"""The attention U-Net generator of DoveNet and BargainNet (NHWC).

A pix2pix U-Net: `num_downs` stride-2 4x4 convolutions (64 -> 512 channels),
mirrored by 4x4 transposed convolutions, skip connections by concatenation,
dropout 0.5 in the 512-channel middle levels, tanh output. The three outermost
inner skips are gated by attention: the concatenated features are multiplied
by sigmoid(conv1x1(features)).

The module tree mirrors the official PyTorch one (`model.model.1.model.3...`,
list indices included) so that `harmonax.torch_import` maps the released
weights by name. Two quirks of the official code are kept on purpose:
- the skip carries LeakyReLU(x), not x: PyTorch's in-place LeakyReLU at the
  start of each inner block overwrites the tensor that is then concatenated;
- convolutions have biases only with instance norm (pix2pix's `use_bias`), except
  the outermost transposed convolution, which always has one.

`identity_init` (not in the papers; the runlocal recipes) makes the output
residual, tanh(atanh(input image) + last layer), with the last layer starting at
zero: the untrained generator returns its input image.
"""

from collections.abc import Callable

from flax import nnx
import jax
import jax.numpy as jnp

from harmonax.models import layers

KERNEL_INIT = nnx.initializers.normal(0.02)  # pix2pix init_weights('normal', 0.02)


def _bn_scale_init(key, shape, dtype=jnp.float32):
  # pix2pix initializes batch-norm weights from N(1, 0.02).
  return 1.0 + 0.02 * jax.random.normal(key, shape, dtype)


def make_norm(kind: str, features: int, rngs: nnx.Rngs) -> nnx.Module:
  """PyTorch-equivalent norm: 'instance' (no affine, no running stats) or 'batch'."""
  if kind == "instance":
    return nnx.InstanceNorm(features, epsilon=1e-5, use_scale=False, use_bias=False,
                            use_fast_variance=False, rngs=rngs)
  if kind == "batch":
    return layers.statistics_as(nnx.BatchNorm(
        features, momentum=0.9, epsilon=1e-5, use_fast_variance=False,
        scale_init=_bn_scale_init, rngs=rngs))
  raise ValueError(f"Unknown norm {kind!r}: expected 'instance' or 'batch'")


class Activation(nnx.Module):
  """A parameter-free activation, kept as a module to hold PyTorch's list index."""

  def __init__(self, fn: Callable[[jax.Array], jax.Array]):
    self.fn = fn

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.fn(x)


def leaky_relu(x: jax.Array) -> jax.Array:
  return jax.nn.leaky_relu(x, 0.2)


# identity_init's residual: atanh of the input image clipped to +-RESIDUAL_CLIP
# (atanh(1) is infinite); a pixel at 0 or 255 comes back 0.01 off.
RESIDUAL_CLIP = 1.0 - 1e-4


def up_conv(in_features: int, out_features: int, use_bias: bool = True, *,
            rngs: nnx.Rngs) -> layers.ConvTranspose2d:
  """pix2pix's upsampling: ConvTranspose2d(kernel 4, stride 2, padding 1)."""
  return layers.ConvTranspose2d(in_features, out_features, 4, stride=2, padding=1,
                                use_bias=use_bias, kernel_init=KERNEL_INIT, rngs=rngs)


class UnetBlock(nnx.Module):
  """One U-Net level: [down, submodule, up] in `model`, indices as in PyTorch."""

  def __init__(self, outer: int, inner: int, input_features: int | None = None,
               submodule: "UnetBlock | None" = None, *, outermost: bool = False,
               innermost: bool = False, norm: str = "instance", use_dropout: bool = False,
               use_attention: bool = False, residual: bool = False, rngs: nnx.Rngs):
    use_bias = norm == "instance"
    input_features = outer if input_features is None else input_features
    self.outermost = outermost
    self.residual = residual  # Outermost only: tanh(atanh(x[..., :outer]) + up_conv).

    def conv(i, o, bias):
      return nnx.Conv(i, o, (4, 4), strides=(2, 2), padding=((1, 1), (1, 1)),
                      use_bias=bias, kernel_init=KERNEL_INIT, rngs=rngs)

    down_conv = conv(input_features, inner, use_bias)
    if outermost:
      layers = [down_conv, submodule, Activation(jax.nn.relu),
                up_conv(inner * 2, outer, rngs=rngs), Activation(jnp.tanh)]
    elif innermost:
      layers = [Activation(leaky_relu), down_conv, Activation(jax.nn.relu),
                up_conv(inner, outer, use_bias, rngs=rngs),
                make_norm(norm, outer, rngs)]
    else:
      layers = [Activation(leaky_relu), down_conv, make_norm(norm, inner, rngs), submodule,
                Activation(jax.nn.relu),
                up_conv(inner * 2, outer, use_bias, rngs=rngs),
                make_norm(norm, outer, rngs)]
      if use_dropout:
        layers.append(nnx.Dropout(0.5))
    self.model = nnx.List(layers)
    c = outer + input_features
    self.attention = nnx.data(
        nnx.List([nnx.Conv(c, c, (1, 1), kernel_init=KERNEL_INIT, rngs=rngs)])
        if use_attention else None)

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    parts = list(self.model)
    if not self.outermost:
      x = parts.pop(0)(x)  # LeakyReLU; the skip below carries its output.
    elif self.residual:
      tanh = parts.pop()
    y = x
    for layer in parts:
      if isinstance(layer, UnetBlock):
        y = layer(y, rngs)
      elif isinstance(layer, nnx.Dropout):
        y = layers.dropout(layer, y, rngs)
      else:
        y = layer(y)
    if self.outermost:
      if self.residual:
        image = jnp.clip(jnp.split(x, [y.shape[-1]], axis=-1)[0], -RESIDUAL_CLIP,
                         RESIDUAL_CLIP)
        y = tanh(y + jnp.arctanh(image))
      return y
    y = jnp.concatenate([x, y], axis=-1)
    if self.attention is not None:
      y = jax.nn.sigmoid(self.attention[0](y)) * y
    return y


class AttentionUNet(nnx.Module):
  """pix2pix U-Net with attention on the three outermost inner skips.

  Input [B, H, W, in_features] with H, W multiples of 2**num_downs, output the
  raw tanh [B, H, W, out_features] in [-1, 1]. With `code_features` > 0
  (BargainNet), the last `code_features` input channels are multiplied by a
  learned scalar `weight` (init 0.1, clamped at 0.001) before the network.
  `identity_init`: the residual output of the module docstring (the input's
  first `out_features` channels are the image in [-1, 1]).
  """

  def __init__(self, in_features: int = 4, out_features: int = 3, *, num_downs: int = 8,
               ngf: int = 64, norm: str = "instance", use_dropout: bool = True,
               use_attention: bool = True, code_features: int = 0,
               identity_init: bool = False, rngs: nnx.Rngs):
    if num_downs < 5:
      raise ValueError(f"AttentionUNet needs num_downs >= 5, got {num_downs}")
    self.num_downs = num_downs
    self.code_features = code_features
    block = UnetBlock(ngf * 8, ngf * 8, innermost=True, norm=norm, rngs=rngs)
    for _ in range(num_downs - 5):
      block = UnetBlock(ngf * 8, ngf * 8, submodule=block, norm=norm,
                        use_dropout=use_dropout, rngs=rngs)
    for mult in (4, 2, 1):
      block = UnetBlock(ngf * mult, ngf * mult * 2, submodule=block, norm=norm,
                        use_attention=use_attention, rngs=rngs)
    self.model = UnetBlock(out_features, ngf, in_features, block, outermost=True,
                           norm=norm, residual=identity_init, rngs=rngs)
    if identity_init:
      layers.restart(self.model.model[3], 0.0, 0.0)  # The outermost transposed conv.
    self.weight = nnx.Param(jnp.array([0.1])) if code_features else None

  def __call__(self, x: jax.Array, rngs: nnx.Rngs | None = None) -> jax.Array:
    if self.weight is not None:
      split = x.shape[-1] - self.code_features
      scale = jnp.maximum(self.weight[...], 0.001)
      image, code = jnp.split(x, [split], axis=-1)  # Not x[..., :split]: see dih.forward.
      x = jnp.concatenate([image, code * scale], axis=-1)
    return self.model(x, rngs)
