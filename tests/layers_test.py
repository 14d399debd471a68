"""layers: depthwise convolutions as shifted multiply-adds equal lax's grouped
convolution, forward and gradients, for every stride and padding in use."""

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from harmonax.models import layers

_DN = ("NHWC", "HWIO", "NHWC")


def _lax_depthwise(x, kernel, stride, padding):
  return jax.lax.conv_general_dilated(
      x, kernel, (stride, stride), padding, dimension_numbers=_DN,
      feature_group_count=x.shape[-1], precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("shape,k,stride,padding", [
    ((2, 13, 11, 5), 3, 1, "SAME"),
    ((2, 13, 11, 5), 3, 2, "SAME"),
    ((2, 9, 10, 3), 5, 2, "SAME"),
    ((2, 15, 15, 4), 3, 3, "SAME"),
    ((2, 7, 9, 6), 3, 1, "VALID"),
    ((1, 8, 8, 1), 7, 1, ((3, 3), (3, 3))),
    ((2, 9, 9, 2), 4, 2, ((1, 2), (2, 0))),
])
def test_depthwise_conv2d_matches_lax_forward_and_gradients(shape, k, stride, padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, 1, shape[-1])), jnp.float32)
  ours = lambda x, w: layers.depthwise_conv2d(x, w, stride, padding)
  ref = lambda x, w: _lax_depthwise(x, w, stride, padding)
  np.testing.assert_allclose(ours(x, kernel), ref(x, kernel), rtol=1e-5, atol=1e-5)
  with layers.portable_ops():  # The export form: a reshape, no interior padding.
    eqns = jax.make_jaxpr(ours)(x, kernel).eqns
    np.testing.assert_allclose(ours(x, kernel), ref(x, kernel), rtol=1e-5, atol=1e-5)
  interiors = [i for e in eqns if e.primitive.name == "pad"
               for _, _, i in e.params["padding_config"]]
  assert not any(interiors), interiors
  grad = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1)))
  for got, want in zip(grad(ours)(x, kernel), grad(ref)(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_conv_general_dilated_routes_only_depthwise_convs():
  rngs = nnx.Rngs(0)
  x = jnp.asarray(np.random.default_rng(1).normal(size=(2, 10, 10, 8)), jnp.float32)
  for groups, out in [(8, 8), (1, 6), (2, 4)]:  # Depthwise, dense, grouped.
    fast = nnx.Conv(8, out, (3, 3), strides=2, feature_group_count=groups, rngs=rngs,
                    conv_general_dilated=layers.conv_general_dilated)
    plain = nnx.Conv(8, out, (3, 3), strides=2, feature_group_count=groups, rngs=rngs)
    plain.kernel.value, plain.bias.value = fast.kernel.value, fast.bias.value
    np.testing.assert_allclose(fast(x), plain(x), rtol=1e-5, atol=1e-5)


def _lax_conv_transpose(x, kernel, stride, padding):
  """PyTorch's definition: the input dilated by the stride, flipped kernel."""
  pad = kernel.shape[0] - 1 - padding
  return jax.lax.conv_general_dilated(
      x, kernel[::-1, ::-1], (1, 1), ((pad, pad), (pad, pad)), lhs_dilation=(stride, stride),
      dimension_numbers=_DN, precision=jax.lax.Precision.HIGHEST)


@pytest.mark.parametrize("shape,k,stride,padding", [
    ((2, 5, 6, 3), 4, 2, 1),  # iDIH / pix2pix decoders.
    ((2, 1, 1, 3), 4, 2, 0),  # iDIH's innermost deconvolution.
    ((2, 5, 4, 3), 3, 2, 1),  # k not a multiple of the stride.
    ((1, 4, 4, 2), 5, 3, 2),
    ((2, 4, 5, 3), 3, 1, 1),
])
def test_conv_transpose2d_matches_dilated_convolution(shape, k, stride, padding):
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=shape), jnp.float32)
  kernel = jnp.asarray(rng.normal(size=(k, k, shape[-1], 4)), jnp.float32)
  ours = lambda x, w: layers.conv_transpose2d(x, w, stride, padding)
  ref = lambda x, w: _lax_conv_transpose(x, w, stride, padding)
  np.testing.assert_allclose(ours(x, kernel), ref(x, kernel), rtol=1e-5, atol=1e-5)
  grad = lambda f: jax.jit(jax.grad(lambda x, w: jnp.sum(jnp.sin(f(x, w))), argnums=(0, 1)))
  for got, want in zip(grad(ours)(x, kernel), grad(ref)(x, kernel)):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def _symbolic(fn):
  """fn exported with free batch, height and width (as `harmonax.export --dynamic`)."""
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("B, H, W, 2"), jnp.float32)
  return jax.export.export(jax.jit(fn))(spec).call


@pytest.mark.parametrize("mode", layers.PAD_MODES)
def test_padding_of_a_symbolic_size_equals_numpys(mode):
  # A dynamic export pads by an amount unknown when tracing: gathers take
  # jnp.pad's place and must give numpy's values, also when the reflect pad
  # exceeds the size (repeated reflection) and for one row; `crop_to` (gathers
  # too) must give the image back.
  pad = lambda x: layers.pad_to_multiple(x, 16, mode=mode)
  exported = _symbolic(lambda x: (lambda padded, crop: (padded, layers.crop_to(padded, crop)))(
      *pad(x)))
  np_mode = {"centered_zero": "constant"}.get(mode, mode)
  rng = np.random.default_rng(0)
  for shape in [(1, 16, 32, 2), (2, 13, 21, 2), (1, 5, 3, 2), (1, 1, 2, 2)]:
    x = rng.normal(size=shape).astype(np.float32)
    widths = [(0, 0), *layers.pad_amounts(shape[1], shape[2], 16,
                                          centered=mode == "centered_zero"), (0, 0)]
    want = np.pad(x, widths, mode=np_mode)  # One row: repeated (numpy's edge case).
    padded, cropped = exported(x)
    np.testing.assert_array_equal(np.asarray(padded), want, err_msg=str(shape))
    np.testing.assert_array_equal(np.asarray(cropped), x, err_msg=str(shape))
    # The traced path (a known size: jnp.pad and slices) gives the same.
    padded, crop = pad(x)
    np.testing.assert_array_equal(np.asarray(padded), want, err_msg=str(shape))
    np.testing.assert_array_equal(np.asarray(layers.crop_to(padded, crop)), x)


def test_max_pool_of_a_symbolic_size_equals_a_known_one():
  # A symbolic size takes a reshape, not nnx.max_pool (jax2onnx mis-shapes that).
  exported = _symbolic(layers.max_pool2x2)
  x = np.random.default_rng(1).normal(size=(2, 13, 22, 2)).astype(np.float32)
  want = x[:, :12].reshape(2, 6, 2, 11, 2, 2).max(axis=(2, 4))  # Odd rows dropped.
  np.testing.assert_array_equal(np.asarray(exported(x)), want)
  np.testing.assert_array_equal(np.asarray(layers.max_pool2x2(x)), want)


def _rows_plus_index(x, chunks):
  """x * 2 + each row's index, computed in `chunks` chunks of rows: fn must get
  each chunk's row indices (the last chunk's clamped to the last row)."""
  b, h, w, _ = x.shape

  def chunk(idx):
    return jnp.take(x, idx, axis=1) * 2.0 + idx.astype(jnp.float32)[None, :, None, None]

  return layers.row_chunks(chunk, (b, h, w, 2), jnp.float32, chunks)


@pytest.mark.parametrize("height", [1, 3, 4, 5, 13, 21])
def test_row_chunks_of_a_symbolic_size_writes_every_row(height):
  # The rows per chunk are only known when the file runs: heights below, at and
  # around multiples of the 4 chunks, the last chunk partial or past the end.
  x = np.random.default_rng(2).normal(size=(2, height, 5, 2)).astype(np.float32)
  want = x * 2.0 + np.arange(height, dtype=np.float32)[None, :, None, None]
  np.testing.assert_array_equal(np.asarray(_symbolic(lambda x: _rows_plus_index(x, 4))(x)),
                                want)
  np.testing.assert_array_equal(np.asarray(jax.jit(lambda x: _rows_plus_index(x, 4))(x)), want)


def test_row_chunks_converts_to_an_onnx_loop():
  jax2onnx = pytest.importorskip("jax2onnx")
  ort = pytest.importorskip("onnxruntime")
  spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("B, H, W, 2"), jnp.float32)
  proto = jax2onnx.to_onnx(lambda x: _rows_plus_index(x, 4), [spec])
  assert "Loop" in [node.op_type for node in proto.graph.node]
  session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
  for height in (3, 8, 22):
    x = np.random.default_rng(height).normal(size=(1, height, 4, 2)).astype(np.float32)
    got = session.run(None, {session.get_inputs()[0].name: x})[0]
    want = x * 2.0 + np.arange(height, dtype=np.float32)[None, :, None, None]
    np.testing.assert_allclose(got, want, atol=1e-6, err_msg=str(height))


@pytest.mark.parametrize("n,out", [(5, 13), (64, 1000), (1000, 64), (7, 7), (1, 9)])
def test_bilinear_taps_in_the_graph_equal_the_constants(n, out):
  # A dynamic export computes the taps in float32 in the graph; a known size
  # uses float64 constants. Indices must agree, weights to float32 rounding.
  i0, i1, frac = layers.bilinear_taps(n, out)
  traced = jax.export.export(jax.jit(lambda x: layers.bilinear_taps(n, x.shape[0])))(
      jax.ShapeDtypeStruct(jax.export.symbolic_shape("N"), jnp.float32)).call(
          np.zeros(out, np.float32))
  np.testing.assert_array_equal(np.asarray(traced[0]), i0)
  np.testing.assert_array_equal(np.asarray(traced[1]), i1)
  np.testing.assert_allclose(np.asarray(traced[2]), frac, atol=1e-5)
  assert i0.min() >= 0 and i1.max() <= n - 1 and frac.min() >= 0 and frac.max() < 1
