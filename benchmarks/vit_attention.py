r"""PCT-Net ViT's attention on CPU: XLA's matrix products against PyTorch's, side by side.

  python benchmarks/vit_attention.py                    # 2 threads, XLA flags of the CLIs
  python benchmarks/vit_attention.py --threads=1 --repeats=21

Why the ViT's inference is slower than the official code's at 1024 (BENCHMARKS.md):
nearly all of its time is the nine layers' attention over the 256 view's 4,096
tokens, and that is two matrix products per block of 512 queries. One process,
pinned to `--threads` cores, times in turn (median of `--repeats` after a warm-up):
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
"""

import argparse
import datetime
import os
import platform
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results", "vit_attention.md")
TOKENS, HEADS, HEAD_DIM, BLOCK = 4096, 2, 128, 512


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--threads", type=int, default=2)
  parser.add_argument("--repeats", type=int, default=11)
  parser.add_argument("--output", default=RESULTS)
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
  load_before = os.getloadavg()[0]
  rows = []
  for name, (gflop, exact, xla_fn, torch_fn) in cases.items():
    t = {k: 1000 * v for k, v in
         vs_pytorch.alternate({"xla": xla_fn, "torch": torch_fn}, args.repeats).items()}
    errors = [float(np.abs(np.asarray(fn()) - exact).max()) for fn in (xla_fn, torch_fn)]
    rows.append((name, t["xla"], t["torch"], gflop, *errors))
  load_after = os.getloadavg()[0]

  flags = os.environ.get("XLA_FLAGS", "") or "none"
  lines = [
      f"\n### {datetime.datetime.now():%Y-%m-%d %H:%M}, {platform.machine()}, "
      f"{args.threads} thread(s), jax {jax.__version__}, torch {torch.__version__}, "
      f"load {load_before:.1f}/{load_after:.1f}, XLA_FLAGS: `{flags}`\n",
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


if __name__ == "__main__":
  main()
