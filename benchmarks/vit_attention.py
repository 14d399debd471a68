r"""PCT-Net ViT's attention on CPU: XLA's matrix products against PyTorch's, side by side.

  python benchmarks/vit_attention.py                    # 2 threads, XLA flags of the CLIs
  python benchmarks/vit_attention.py --threads=1 --repeats=21

Why the ViT's inference is slower than the official code's at 1024 (BENCHMARKS.md):
nearly all of its time is the nine layers' attention over the 256 view's 4,096
tokens, and that is two matrix products per block of 512 queries. One process,
pinned to `--threads` cores, times in turn (median of `--repeats` after a warm-up,
each call after a pause of `vs_pytorch.alternate`'s 50 ms, without which the
other framework's still-spinning threads slowed each short call; BENCHMARKS.md):
  qk         a block's logits, [2 heads, 512, 128] x [2, 128, 4096], jitted
             `a @ b` against torch.bmm;
  pv         its weights times the values, [2, 512, 4096] x [2, 4096, 128];
  attention  one layer's whole attention, [1, 4096, 2, 128] queries, keys and
             values: `pctnet_vit.blockwise_attention` (what harmonax runs)
             against torch's scaled_dot_product_attention (what the official
             nn.TransformerEncoder runs in eval mode on CPU).
and reports milliseconds, the ratio (XLA / PyTorch: above 1, XLA is slower),
GFLOP/s and each result's largest difference from a float64 numpy product. XLA
runs with the flags harmonax's CLIs use (`harmonax.xla_setup`) plus any in
XLA_FLAGS. Needs torch (the test extras). Appends a table to
benchmarks/results/vit_attention.md (--output).

  python benchmarks/vit_attention.py --bf16

adds the two products with bfloat16 inputs, and as three bfloat16 products (the
cheapest split that comes near float32 accuracy) against torch's float32 bmm.

  python benchmarks/vit_attention.py --variants

times instead other ways of writing one layer's attention in JAX, each against
the same torch scaled_dot_product_attention in one process (`variants()` below:
other query blocks, key blocks with a running maximum, 2-D products per head,
the row sums as a column of ones in the values) and, as a floor that no
formulation built on these products can go under, the block's two products
without the softmax between them.

  python benchmarks/vit_attention.py --predict=1024

splits the whole inference instead: PCT-Net ViT's jitted `predict` at that size
(the full-size recipe, random weights, batch 1) as harmonax runs it, with blocks
of 256 queries instead of 512, with every
layer's attention replaced by its two bare products (the floor above) and with
no attention at all (each layer's values passed through), alternated with the
PyTorch twin's forward (benchmarks/torch_models/pctnet.py, the official
nn.TransformerEncoder) in one process. Only the first two rows compute the model.
"""

import argparse
import datetime
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "vit_attention.md")
TOKENS, HEADS, HEAD_DIM, BLOCK = 4096, 2, 128, 512


def _heads_first(q, k, v):
  """[b, n, h, c] -> scaled queries [b, h, n, c], keys [b, h, c, n], values [b, h, n, c]."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  c = q.shape[-1]
  return (jnp.transpose(q, (0, 2, 1, 3)) * (1 / jnp.sqrt(c)).astype(q.dtype),
          jnp.transpose(k, (0, 2, 3, 1)), jnp.transpose(v, (0, 2, 1, 3)))


def _per_query_block(q, k, v, block, body):
  """Runs body(queries [b, h, block, c], keys, values) -> [b, h, block, c] over the blocks."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  queries, keys, values = _heads_first(q, k, v)

  def one_block(i, out):
    rows = jax.lax.dynamic_slice_in_dim(queries, i * block, block, axis=2)
    return jax.lax.dynamic_update_slice_in_dim(out, body(rows, keys, values), i * block, axis=2)

  out = jax.lax.fori_loop(0, q.shape[1] // block, one_block, jnp.zeros_like(queries))
  return jnp.transpose(out, (0, 2, 1, 3))


def _softmax_product(rows, keys, values):
  """One block's attention as harmonax computes it (pctnet_vit.blockwise_attention)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  logits = rows @ keys
  weights = jnp.exp(logits - logits.max(-1, keepdims=True))
  return (weights @ values) / weights.sum(-1, keepdims=True)


def _key_blocks(key_block):
  """A block's softmax over key blocks with a running maximum (flash attention)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def body(rows, keys, values):
    top = total = acc = None
    for j in range(0, keys.shape[-1], key_block):
      logits = rows @ keys[..., j:j + key_block]
      new_top = logits.max(-1, keepdims=True) if top is None else jnp.maximum(
          top, logits.max(-1, keepdims=True))
      weights = jnp.exp(logits - new_top)
      part = weights @ values[:, :, j:j + key_block]
      if top is None:
        acc, total = part, weights.sum(-1, keepdims=True)
      else:
        rescale = jnp.exp(top - new_top)
        acc, total = acc * rescale + part, total * rescale + weights.sum(-1, keepdims=True)
      top = new_top
    return acc / total

  return body


def _per_head(rows, keys, values):
  """Each head's block as its own 2-D products (independent ops XLA may overlap)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.stack([jnp.stack([_softmax_product(rows[b, h], keys[b, h], values[b, h])
                               for h in range(rows.shape[1])]) for b in range(rows.shape[0])])


def _ones_column(rows, keys, values):
  """The row sums from the product: values get a column of ones (zero-padded to 136)."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  b, h, n, c = values.shape
  padded = jnp.concatenate([values, jnp.ones((b, h, n, 1), values.dtype),
                            jnp.zeros((b, h, n, 7), values.dtype)], -1)
  logits = rows @ keys
  out = jnp.exp(logits - logits.max(-1, keepdims=True)) @ padded
  return out[..., :c] / out[..., c:c + 1]


def _products_only(rows, keys, values):
  """Not attention: the two products with nothing between them (a floor)."""
  return (rows @ keys) @ values


def variants() -> dict:
  """name: attention(q, k, v) for [b, n, h, c]; the first is harmonax's own function.
  (A function, so that JAX is imported after main sets the XLA flags.)"""
  import functools  # pylint: disable=g-import-not-at-top
  from harmonax.models import pctnet_vit  # pylint: disable=g-import-not-at-top
  blocks = lambda block, body: functools.partial(_per_query_block, block=block, body=body)
  return {
      "harmonax (pctnet_vit.blockwise_attention, 512 queries)": pctnet_vit.blockwise_attention,
      "256 queries": functools.partial(pctnet_vit.blockwise_attention, block=256),
      "1024 queries": functools.partial(pctnet_vit.blockwise_attention, block=1024),
      "256 queries x 2048 keys, running max": blocks(256, _key_blocks(2048)),
      "512 queries x 1024 keys, running max": blocks(512, _key_blocks(1024)),
      "512 queries, 2-D products per head": blocks(512, _per_head),
      "512 queries, sums as a column of ones": blocks(512, _ones_column),
      "products only, no softmax (a floor)": blocks(512, _products_only),
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=11)
  parser.add_argument("--pause", type=float, default=None,
                      help="seconds of sleep before each timed call (default: alternate()'s)")
  parser.add_argument("--output", default=RESULTS)
  parser.add_argument("--variants", action="store_true",
                      help="time variants() of one layer's attention instead")
  parser.add_argument("--predict", type=int, default=0,
                      help="time the whole predict at this size, with and without attention")
  parser.add_argument("--bf16", action="store_true",
                      help="also time the products in bfloat16 and as three bfloat16 products")
  args = parser.parse_args()
  os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:args.threads])
  sys.path.insert(0, ROOT)
  from benchmarks import vs_pytorch  # pylint: disable=g-import-not-at-top
  from harmonax import xla_setup  # pylint: disable=g-import-not-at-top
  xla_setup.configure()  # The CLIs' XLA flags, before JAX starts.
  if args.threads == 1:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + " --xla_cpu_multi_thread_eigen=false").strip()
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from harmonax.models import pctnet_vit  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(args.threads)
  if args.pause is not None:  # 0: back to back, as before 2026-12-01 (BENCHMARKS.md).
    vs_pytorch.PAUSE_S = args.pause

  rng = np.random.default_rng(0)
  normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)
  q, k_t, w, v = (normal(HEADS, BLOCK, HEAD_DIM), normal(HEADS, HEAD_DIM, TOKENS),
                  normal(HEADS, BLOCK, TOKENS), normal(HEADS, TOKENS, HEAD_DIM))
  qkv = [normal(1, TOKENS, HEADS, HEAD_DIM) for _ in range(3)]

  def exact_attention(q, k, v):  # float64, [1, n, h, c].
    q, k, v = (x[0].transpose(1, 0, 2).astype(np.float64) for x in (q, k, v))
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(HEAD_DIM)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    out = (weights / weights.sum(-1, keepdims=True)) @ v
    return out.transpose(1, 0, 2)[None]

  matmul = jax.jit(lambda a, b: a @ b)
  attention = jax.jit(pctnet_vit.blockwise_attention)
  jq, jk, jw, jv = (jax.numpy.asarray(x) for x in (q, k_t, w, v))
  jqkv = [jax.numpy.asarray(x) for x in qkv]
  tq, tk, tw, tv = (torch.from_numpy(x) for x in (q, k_t, w, v))
  tqkv = [torch.from_numpy(x).permute(0, 2, 1, 3).contiguous() for x in qkv]

  def torch_attention():
    with torch.inference_mode():
      return torch.nn.functional.scaled_dot_product_attention(*tqkv).permute(0, 2, 1, 3)

  cases = {  # name: (GFLOP, exact, XLA call, PyTorch call)
      "qk": (2 * HEADS * BLOCK * TOKENS * HEAD_DIM / 1e9,
             q.astype(np.float64) @ k_t.astype(np.float64),
             lambda: jax.block_until_ready(matmul(jq, jk)), lambda: torch.bmm(tq, tk)),
      "pv": (2 * HEADS * BLOCK * TOKENS * HEAD_DIM / 1e9,
             w.astype(np.float64) @ v.astype(np.float64),
             lambda: jax.block_until_ready(matmul(jw, jv)), lambda: torch.bmm(tw, tv)),
      "attention": (4 * HEADS * TOKENS * TOKENS * HEAD_DIM / 1e9, exact_attention(*qkv),
                    lambda: jax.block_until_ready(attention(*jqkv)), torch_attention),
  }
  if args.bf16:
    cases.update(_bf16_cases(cases, (jq, jk, tq, tk), (jw, jv, tw, tv)))
  load_before = os.getloadavg()[0]
  flags = os.environ.get("XLA_FLAGS", "") or "none"
  heading = (f"\n### {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, "
             f"{args.threads} thread(s), {vs_pytorch.PAUSE_S:g} s pause before each call, "
             f"jax {jax.__version__}, torch {torch.__version__}, "
             "load {:.1f}/{:.1f}, " + f"XLA_FLAGS: `{flags}`\n")
  if args.variants or args.predict:
    lines = (_time_predict(args) if args.predict else
             _time_variants(args, jqkv, torch_attention, exact_attention(*qkv)))
    table = "\n".join([heading.format(load_before, os.getloadavg()[0]), *lines])
    print(table)
    with open(args.output, "a") as f:
      f.write(table + "\n")
    return
  rows = []
  for name, (gflop, exact, xla_fn, torch_fn) in cases.items():
    t = {k: 1000 * v for k, v in
         vs_pytorch.alternate({"xla": xla_fn, "torch": torch_fn}, args.repeats).items()}
    errors = [float(np.abs(_float32(fn()) - exact).max()) for fn in (xla_fn, torch_fn)]
    rows.append((name, t["xla"], t["torch"], gflop, *errors))
  load_after = os.getloadavg()[0]

  lines = [
      heading.format(load_before, load_after),
      "| product | XLA ms | PyTorch ms | ratio | XLA GFLOP/s | PyTorch GFLOP/s "
      "| XLA max err | PyTorch max err |",
      "|---|---|---|---|---|---|---|---|"]
  for name, tx, tt, gflop, ex, et in rows:
    lines.append(f"| {name} | {tx:.2f} | {tt:.2f} | **{tx / tt:.2f}** | {gflop / tx * 1e3:.0f} "
                 f"| {gflop / tt * 1e3:.0f} | {ex:.1e} | {et:.1e} |")
  table = "\n".join(lines)
  print(table)
  os.makedirs(os.path.dirname(args.output), exist_ok=True)
  with open(args.output, "a") as f:
    f.write(table + "\n")



def _float32(x):
  """A result as a float32 numpy array (torch's bfloat16 has no numpy dtype)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  return x.float().numpy() if hasattr(x, "float") else np.asarray(x, np.float32)


def bf16_matmul(a, b):
  """a @ b of bfloat16 inputs, accumulated in float32."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  return jnp.matmul(a, b, preferred_element_type=jnp.float32)


def three_bf16_matmuls(a, b):
  """float32 a @ b from three bfloat16 products: a_hi b_hi + a_hi b_lo + a_lo b_hi."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top

  def split(x):
    hi = x.astype(jnp.bfloat16)
    return hi, (x - hi.astype(jnp.float32)).astype(jnp.bfloat16)

  (a_hi, a_lo), (b_hi, b_lo) = split(a), split(b)
  return bf16_matmul(a_hi, b_hi) + (bf16_matmul(a_hi, b_lo) + bf16_matmul(a_lo, b_hi))


def _bf16_cases(cases: dict, qk: tuple, pv: tuple) -> dict:
  """--bf16: the qk and pv products with bfloat16 inputs (float32 accumulation in
  XLA; torch.bmm in bfloat16), and as three bfloat16 products (a = a_hi + a_lo,
  b likewise; a_hi b_hi + a_hi b_lo + a_lo b_hi) against torch's float32 bmm.

  Whether the CPU's bfloat16 units (AMX on Sapphire Rapids) could carry the ViT
  at float32 accuracy: three products are the cheapest such split, and they
  still drop the a_lo b_lo term (about 2**-16 of each product).
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  bf16_product, three_products = jax.jit(bf16_matmul), jax.jit(three_bf16_matmuls)
  out = {}
  for name, (ja, jb, ta, tb) in (("qk", qk), ("pv", pv)):
    gflop, exact, _, torch_fn = cases[name]
    ja16, jb16 = ja.astype(jnp.bfloat16), jb.astype(jnp.bfloat16)
    ta16, tb16 = ta.to(torch.bfloat16), tb.to(torch.bfloat16)
    out[f"{name} bf16"] = (gflop, exact,
                           lambda a=ja16, b=jb16: jax.block_until_ready(bf16_product(a, b)),
                           lambda a=ta16, b=tb16: torch.bmm(a, b))
    out[f"{name} 3 x bf16 (torch: float32)"] = (
        gflop, exact, lambda a=ja, b=jb: jax.block_until_ready(three_products(a, b)), torch_fn)
  return out


def _time_variants(args, jqkv, torch_attention, exact) -> list[str]:
  """Table rows: each of variants() against torch's attention, all alternated in one loop."""
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from benchmarks import vs_pytorch  # pylint: disable=g-import-not-at-top
  gflop = 4 * HEADS * TOKENS * TOKENS * HEAD_DIM / 1e9
  fns = {name: (lambda f=jax.jit(fn): jax.block_until_ready(f(*jqkv)))
         for name, fn in variants().items()}
  fns["PyTorch scaled_dot_product_attention"] = torch_attention
  ms = {k: 1000 * v for k, v in vs_pytorch.alternate(fns, args.repeats).items()}
  reference = ms.pop("PyTorch scaled_dot_product_attention")
  lines = ["| one layer's attention, 4,096 tokens | XLA ms | ratio to PyTorch "
           f"({reference:.2f} ms, {gflop / reference * 1e3:.0f} GFLOP/s) | XLA GFLOP/s "
           "| max err |", "|---|---|---|---|---|"]
  for name, t in ms.items():
    error = float(np.abs(np.asarray(fns[name]()) - exact).max())
    lines.append(f"| {name} | {t:.2f} | **{t / reference:.2f}** | {gflop / t * 1e3:.0f} "
                 f"| {'(not attention)' if name.startswith('products') else f'{error:.1e}'} |")
  return lines



def _time_predict(args) -> list[str]:
  """Table rows: the ViT's predict at args.predict, its attention swapped, and the twin."""
  import functools  # pylint: disable=g-import-not-at-top
  import importlib  # pylint: disable=g-import-not-at-top
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import vs_pytorch  # pylint: disable=g-import-not-at-top
  from harmonax import models  # pylint: disable=g-import-not-at-top
  from harmonax.models import pctnet_vit  # pylint: disable=g-import-not-at-top
  size = args.predict
  config = vs_pytorch.load_config("pctnet_vit")
  family = models.get_family(config.model.name)
  twin = importlib.import_module(f"benchmarks.torch_models.{vs_pytorch.TWINS['pctnet_vit']}")
  nets, model = vs_pytorch.eval_pair(config, twin)
  rng = np.random.default_rng(0)
  composite = rng.uniform(size=(1, size, size, 3)).astype(np.float32)
  mask = np.zeros((1, size, size, 1), np.float32)
  mask[:, size // 4:3 * size // 4, size // 4:3 * size // 4] = 1.0
  inputs = [jax.numpy.asarray(x) for x in (composite, mask)]
  torch_inputs = [torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
                  for x in (composite, mask)]

  def compiled(attention):
    """predict, traced with pctnet_vit.blockwise_attention swapped for `attention`."""
    harmonax_attention = pctnet_vit.blockwise_attention
    pctnet_vit.blockwise_attention = attention
    try:
      predict = nnx.jit(vs_pytorch.predict_fn(family, config))
      jax.block_until_ready(predict(nets, *inputs))  # Traces (and compiles) it now.
    finally:
      pctnet_vit.blockwise_attention = harmonax_attention
    return lambda: jax.block_until_ready(predict(nets, *inputs))

  def twin_predict():
    with torch.inference_mode():
      return twin.predict(model, *torch_inputs)

  bare_products = functools.partial(_per_query_block, block=BLOCK, body=_products_only)
  fns = {"harmonax predict": compiled(pctnet_vit.blockwise_attention),
         "the same, blocks of 256 queries": compiled(
             functools.partial(pctnet_vit.blockwise_attention, block=256)),
         "attention as its two bare products (not the model)": compiled(bare_products),
         "no attention (not the model)": compiled(lambda q, k, v: v),
         "PyTorch twin": twin_predict}
  with torch.inference_mode():
    want = twin_predict().numpy().transpose(0, 2, 3, 1)
  diff = float(np.abs(np.asarray(fns["harmonax predict"]()) - want).max())
  t = vs_pytorch.alternate(fns, args.repeats)
  lines = [f"| PCT-Net ViT inference at {size}x{size}, batch 1 | s | ratio to PyTorch |",
           "|---|---|---|"]
  lines += [f"| {name} | {v:.3f} | **{v / t['PyTorch twin']:.2f}** |" for name, v in t.items()]
  return lines + [f"\nLargest difference between harmonax's and the twin's image: {diff:.1e}."]


if __name__ == "__main__":
  main()
