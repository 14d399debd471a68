"""PCT-Net's ViT backbone (official ViT_Harmonizer + get_params), NHWC, Flax NNX.

Image and mask (4 channels, [0, 1]) at the low resolution are cut into patches
(pixels channel-last within a patch), embedded by a Linear, run through a
post-LN nn.TransformerEncoder with NO positional embedding, and turned back
into a map by ConvTranspose2d(k = s = patch) + tanh and a 1x1 conv.

Module names mirror the official PyTorch tree (iharm/model/modeling/vit_base.py,
iharm/model/base/pct_net.py), list indices included, so
`torch_import.load_into` maps PCTNet_ViT.pth directly: `encoder.patch_to_embedding.1`,
`encoder.transformer_enc.layers.N.self_attn.in_proj_weight`, `encoder.dec.0`,
`get_params`.
"""

from flax import nnx
import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec


from harmonax.models import layers
from harmonax.models import pct_ops

# The official init_func: N(0, 0.02) for every Conv*/Linear weight, zero biases.
# MultiheadAttention's packed in_proj keeps PyTorch's xavier_uniform (it has no
# `weight` attribute), LayerNorm its ones/zeros.
_NORMAL = nnx.initializers.normal(0.02)


_STEPS = {"rearrange": lambda x: x, "tanh": jnp.tanh}


class Step(nnx.Module):
  """A parameter-free entry of a PyTorch nn.Sequential (keeps indices aligned);
  by name, so the graph's static data stays comparable across instances."""

  def __init__(self, name: str):
    self.name = name

  def __call__(self, x: jax.Array) -> jax.Array:
    return _STEPS[self.name](x)


def _reshape(x: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """x.reshape(shape) keeping the batch axis's sharding: under an explicit-axis
  mesh JAX cannot infer the output sharding of a reshape that splits axes."""
  spec = getattr(jax.typeof(x).sharding, "spec", ())
  if spec and spec[0] is not None:
    return jnp.reshape(x, shape, out_sharding=PartitionSpec(spec[0]))
  return x.reshape(shape)


def _linear(n_in: int, n_out: int, rngs: nnx.Rngs) -> nnx.Linear:
  return nnx.Linear(n_in, n_out, kernel_init=_NORMAL, rngs=rngs)


# Queries per block of `blockwise_attention` (4,096 tokens: 8 blocks).
ATTENTION_BLOCK = 512


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                        block: int = ATTENTION_BLOCK) -> jax.Array:
  """softmax(q k^T / sqrt(c)) v for q, k, v [b, n, heads, c], a block of queries at a time.

  Each block's [heads, block, n] weights see every key, so the softmax is the
  exact one (no running maximum). Why: the 256 view is 4,096 tokens, and
  XLA:CPU computes a whole layer's [2, 4096, 4096] weights (134 MB, out of every
  cache) in each of exp, sum and product; in blocks of 512 queries the values
  are the same and the full-size predict at 1024 went from 2.95 s to 2.16 s
  (benchmarks/vs_pytorch.py, BENCHMARKS.md). Within a block the scale is folded
  into the queries ([block, c], not [block, n]) and the exponentials are not
  normalised: their product with v is divided by their sum ([block, c] again),
  as PyTorch's flash attention does. That saves a pass over the weights, equal
  to float32 rounding: predict against PyTorch at 1024, side by side in
  benchmarks/vs_pytorch.py on a shared 2-core CPU, went from a ratio of 1.35 to
  1.22. Fewer tokens, or a count that blocks do not divide, take the whole
  product.
  """
  b, n, h, c = q.shape
  if n <= block or n % block:
    return jax.nn.dot_product_attention(q, k, v)
  queries = jnp.transpose(q, (0, 2, 1, 3)) * (1 / jnp.sqrt(c)).astype(q.dtype)  # [b, h, n, c]
  keys = jnp.transpose(k, (0, 2, 3, 1))       # [b, h, c, n]
  values = jnp.transpose(v, (0, 2, 1, 3))     # [b, h, n, c]

  def one_block(i, out):
    logits = jax.lax.dynamic_slice_in_dim(queries, i * block, block, axis=2) @ keys
    weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
    result = (weights @ values) / jnp.sum(weights, axis=-1, keepdims=True)
    return jax.lax.dynamic_update_slice_in_dim(out, result, i * block, axis=2)

  out = layers.fori_loop(n // block, one_block, jnp.zeros_like(queries))
  return jnp.transpose(out, (0, 2, 1, 3))


class MultiheadAttention(nnx.Module):
  """nn.MultiheadAttention(d, heads, dropout) with the packed in_proj_weight
  [3d, d] and in_proj_bias stored in PyTorch's layout and names."""

  def __init__(self, dim: int, heads: int, dropout: float, rngs: nnx.Rngs):
    self.in_proj_weight = nnx.Param(
        nnx.initializers.xavier_uniform()(rngs.params(), (3 * dim, dim)))
    self.in_proj_bias = nnx.Param(jnp.zeros((3 * dim,)))
    self.out_proj = _linear(dim, dim, rngs)
    self.dropout = nnx.Dropout(dropout)
    self.heads = heads

  def __call__(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
    b, n, d = x.shape
    qkv = x @ self.in_proj_weight[...].T + self.in_proj_bias[...]
    q, k, v = (_reshape(t, (b, n, self.heads, d // self.heads)) for t in jnp.split(qkv, 3, -1))
    if self.dropout.deterministic:
      out = blockwise_attention(q, k, v)
    else:
      logits = jnp.einsum("bqhc,bkhc->bhqk", q, k) / jnp.sqrt(d // self.heads).astype(x.dtype)
      weights = layers.dropout(self.dropout, jax.nn.softmax(logits, axis=-1), rng)
      out = jnp.einsum("bhqk,bkhc->bqhc", weights, v)
    return self.out_proj(_reshape(out, (b, n, d)))


class EncoderLayer(nnx.Module):
  """nn.TransformerEncoderLayer(d, heads, ffn, dropout, activation='gelu'):
  post-LN (norm_first=False), exact GELU, LayerNorm eps 1e-5."""

  def __init__(self, dim: int, heads: int, ffn: int, dropout: float, rngs: nnx.Rngs):
    self.self_attn = MultiheadAttention(dim, heads, dropout, rngs)
    self.linear1 = _linear(dim, ffn, rngs)
    self.linear2 = _linear(ffn, dim, rngs)
    self.norm1 = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
    self.norm2 = nnx.LayerNorm(dim, epsilon=1e-5, rngs=rngs)
    self.dropout = nnx.Dropout(dropout)
    self.dropout1 = nnx.Dropout(dropout)
    self.dropout2 = nnx.Dropout(dropout)

  def __call__(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
    keys = [None] * 4 if rng is None else list(jax.random.split(rng, 4))
    x = self.norm1(x + layers.dropout(self.dropout1, self.self_attn(x, keys[0]), keys[1]))
    hidden = layers.dropout(self.dropout, jax.nn.gelu(self.linear1(x), approximate=False), keys[2])
    return self.norm2(x + layers.dropout(self.dropout2, self.linear2(hidden), keys[3]))


class TransformerEncoder(nnx.Module):
  """nn.TransformerEncoder: `layers` identical layers, no final norm."""

  def __init__(self, num_layers: int, **kw):
    self.layers = nnx.List([EncoderLayer(**kw) for _ in range(num_layers)])

  def __call__(self, x: jax.Array, rng: jax.Array | None) -> jax.Array:
    for i, layer in enumerate(self.layers):
      x = layer(x, None if rng is None else jax.random.fold_in(rng, i))
    return x


class PatchConvTranspose(layers.ConvTranspose2d):
  """ConvTranspose2d with stride == kernel_size and no padding: each input pixel
  writes its own k x k output block, an einsum instead of a 16x dilated conv."""

  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, _ = x.shape
    k = self.kernel_size
    y = jnp.einsum("bijc,pqco->bipjqo", x, self.kernel[...])
    y = _reshape(y, (b, h * k, w * k, y.shape[-1]))
    return y + self.bias[...] if self.bias is not None else y


class ViTHarmonizer(nnx.Module):
  """Official ViT_Harmonizer: [B,H,W,4] -> tanh map [B,H,W,out] (H, W multiples
  of the patch; the official code also needs H == W)."""

  def __init__(self, out_ch: int, *, patch: int = 4, dim: int = 256, heads: int = 2,
               layers_: int = 9, ffn: int = 512, dropout: float = 0.1, rngs: nnx.Rngs):
    self.patch = patch
    self.patch_to_embedding = nnx.List([Step("rearrange"),
                                        _linear(patch * patch * 4, dim, rngs)])
    self.transformer_enc = TransformerEncoder(layers_, dim=dim, heads=heads, ffn=ffn,
                                              dropout=dropout, rngs=rngs)
    self.dec = nnx.List([
        PatchConvTranspose(dim, out_ch, patch, stride=patch, kernel_init=_NORMAL, rngs=rngs),
        Step("tanh")])

  def __call__(self, x: jax.Array, rng: jax.Array | None = None) -> jax.Array:
    b, h, w, c = x.shape
    p = self.patch
    # Rearrange('b c (h p1) (w p2) -> b (h w) (p1 p2 c)').
    tokens = _reshape(x, (b, h // p, p, w // p, p, c)).transpose(0, 1, 3, 2, 4, 5)
    tokens = self.patch_to_embedding[1](_reshape(tokens, (b, (h // p) * (w // p), p * p * c)))
    content = self.transformer_enc(tokens, rng)
    grid = _reshape(content, (b, h // p, w // p, content.shape[-1]))
    return self.dec[1](self.dec[0](grid))


class PCTNetViT(nnx.Module):
  """PCTNet(backbone_type='ViT'): encoder = ViT_Harmonizer(12), get_params 1x1."""

  def __init__(self, *, patch: int = 4, dim: int = 256, heads: int = 2, num_layers: int = 9,
               ffn: int = 512, dropout: float = 0.1, rngs: nnx.Rngs):
    n = pct_ops.NUM_PARAMS
    self.encoder = ViTHarmonizer(n, patch=patch, dim=dim, heads=heads, layers_=num_layers,
                                 ffn=ffn, dropout=dropout, rngs=rngs)
    self.get_params = layers.conv(n, n, 1, kernel_init=_NORMAL, rngs=rngs)
    self.size_multiple = patch

  def __call__(self, image: jax.Array, mask: jax.Array,
               rng: jax.Array | None = None) -> jax.Array:
    """[0, 1] image [B,h,w,3] and mask [B,h,w,1] -> parameter map [B,h,w,12]."""
    return self.get_params(self.encoder(jnp.concatenate([image, mask], -1), rng))
