r"""Parameter counts and inference FLOPs of a config's model, without training.

  python -m harmonax.summary --config=configs/idih.py
  python -m harmonax.summary --config=configs/issam.py:runlocal [--image_size=512]

Prints a markdown table: one row per network (`create_networks`) with its
trainable parameters (nnx.Param) and other state (batch statistics, buffers),
and the GFLOPs of the family's `predict` for one image at
config.data.image_size (or --image_size).

FLOPs come from XLA's cost analysis of the *lowered* (unoptimized) HLO of
`jax.jit(predict)`: no compilation and no memory for weights are needed, since
the networks are abstract (`nnx.eval_shape`). XLA counts a multiply-add as 2
FLOPs (FLOPs = 2 x MACs; taps that fall on zero padding are not counted) and
adds elementwise work (normalization, activations, blending).
"""

from collections.abc import Callable
import dataclasses
import datetime

from absl import app
from absl import flags
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from harmonax import models



@dataclasses.dataclass(frozen=True)
class Summary:
  """Sizes of one family instance and its inference cost per image."""
  model: str
  image_size: int
  params: dict[str, int]        # network -> trainable parameters
  other_state: dict[str, int]   # network -> non-trainable elements (BN stats, buffers)
  gflops_per_image: float       # predict at image_size x image_size, batch 1


def _count(module: nnx.Module, filt) -> int:
  return sum(int(np.prod(v.shape)) for _, v in nnx.to_flat_state(nnx.state(module, filt)))


def lowered_flops(fn: Callable, *args) -> float:
  """FLOPs of jax.jit(fn)(*args) from XLA's cost analysis of the lowered HLO.

  `args` may be ShapeDtypeStructs (nothing is computed or compiled).
  """
  cost = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per device program.
    cost = cost[0]
  if not cost or "flops" not in cost:
    raise RuntimeError(f"XLA cost analysis reported no 'flops' (got {cost})")
  return float(cost["flops"])


def summarize(config: ml_collections.ConfigDict, image_size: int | None = None) -> Summary:
  """Parameter counts and predict GFLOPs for `config`, using abstract networks."""
  family = models.get_family(config.model.name)
  size = image_size or config.data.image_size
  if not size:
    raise ValueError("config.data.image_size is unset: pass --image_size")
  networks = nnx.eval_shape(lambda: family.create_networks(config, nnx.Rngs(0)))
  for net in networks.values():
    net.eval()
  graphdef, state = nnx.split(networks)

  def run(state, composite, mask):
    return family.predict(nnx.merge(graphdef, state), composite, mask)

  composite = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  mask = jax.ShapeDtypeStruct((1, size, size, 1), jnp.float32)
  flops = lowered_flops(run, state, composite, mask)
  return Summary(
      model=config.model.name, image_size=size,
      params={n: _count(net, nnx.Param) for n, net in networks.items()},
      other_state={n: _count(net, nnx.Not(nnx.Param)) for n, net in networks.items()},
      gflops_per_image=flops / 1e9)


def format_table(summary: Summary) -> str:
  """The summary as a markdown table (plus a line on how it was measured)."""
  lines = [f"model `{summary.model}`, predict at {summary.image_size}x{summary.image_size}, "
           f"batch 1 ({datetime.date.today().isoformat()}; FLOPs from XLA lowered-HLO cost "
           "analysis, 2 FLOPs per multiply-add)",
           "",
           "| network | params | params (M) | other state |",
           "|---|---:|---:|---:|"]
  for name, count in summary.params.items():
    lines.append(f"| {name} | {count:,} | {count / 1e6:.2f} | {summary.other_state[name]:,} |")
  total = sum(summary.params.values())
  lines.append(f"| **total** | {total:,} | {total / 1e6:.2f} | "
               f"{sum(summary.other_state.values()):,} |")
  lines += ["", f"GFLOPs per image (predict): {summary.gflops_per_image:.3f}"]
  return "\n".join(lines)


def define_flags() -> None:
  """Defines --config and --image_size (not at import: other tools define them too)."""
  if "config" not in flags.FLAGS:
    config_flags.DEFINE_config_file("config", None, "Config file, e.g. configs/idih.py.",
                                    lock_config=False, allow_override=True)
  if "image_size" not in flags.FLAGS:
    flags.DEFINE_integer("image_size", None, "Default: config.data.image_size.",
                         allow_override=True)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if flags.FLAGS.config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/idih.py")
  print(format_table(summarize(flags.FLAGS.config, flags.FLAGS.image_size)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
