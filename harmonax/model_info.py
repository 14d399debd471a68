"""Model sizes and inference cost: parameters per network and predict GFLOPs.

The library behind `python -m harmonax.summary`; FLOPs come from XLA's cost
analysis of the lowered predict (nothing is computed or compiled).
"""

from collections.abc import Callable
import dataclasses
import datetime

from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from harmonax import model_card
from harmonax import models
from harmonax import variables


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


def _xla_flops(fn: Callable, *args) -> float:
  cost = jax.jit(fn).lower(*args).cost_analysis()
  if isinstance(cost, (list, tuple)):  # Older JAX: one dict per device program.
    cost = cost[0]
  if not cost or "flops" not in cost:
    raise RuntimeError(f"XLA cost analysis reported no 'flops' (got {cost})")
  return float(cost["flops"])


def _sub_jaxprs(params: dict):
  for value in params.values():
    for item in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(item, jax.extend.core.ClosedJaxpr):
        yield item
      elif isinstance(item, jax.extend.core.Jaxpr):
        yield jax.extend.core.ClosedJaxpr(item, ())


def _loop_repeats(jaxpr: jax.extend.core.ClosedJaxpr) -> float:
  """FLOPs that XLA's cost analysis leaves out of `jaxpr`: it counts a loop's
  body once, and every scan (lax.scan, lax.map, fori_loop with static bounds)
  runs its body `length` times."""
  extra = 0.0
  for eqn in jaxpr.jaxpr.eqns:
    if eqn.primitive.name == "scan":
      body, length = eqn.params["jaxpr"], eqn.params["length"]
      # Unrolled k times, the HLO holds k copies of the body in the loop and
      # length % k more after it: XLA counts those k + length % k.
      unroll = eqn.params.get("unroll", 1)
      unroll = length if unroll is True else max(1, min(int(unroll), length))
      counted = unroll + length % unroll if unroll < length else length
      avals = [jax.ShapeDtypeStruct(v.aval.shape, v.aval.dtype) for v in body.jaxpr.invars]
      once = _xla_flops(jax.extend.core.jaxpr_as_fun(body), *avals)
      extra += (length - counted) * once + length * _loop_repeats(body)
    elif eqn.primitive.name == "cond":  # One branch runs.
      extra += max((_loop_repeats(b) for b in eqn.params["branches"]), default=0.0)
    else:
      extra += sum(_loop_repeats(sub) for sub in _sub_jaxprs(eqn.params))
  return extra


def lowered_flops(fn: Callable, *args) -> float:
  """FLOPs of jax.jit(fn)(*args) from XLA's cost analysis of the lowered HLO.

  `args` may be ShapeDtypeStructs (nothing is computed or compiled). Scan
  loops count their body once per iteration (XLA alone counts it once).
  """
  return _xla_flops(fn, *args) + _loop_repeats(jax.make_jaxpr(fn)(*args))


def summarize(config: ml_collections.ConfigDict, image_size: int | None = None) -> Summary:
  """Parameter counts and predict GFLOPs for `config`, using abstract networks."""
  family = models.get_family(config.model.name)
  size = image_size or config.data.image_size
  if not size:
    raise ValueError("config.data.image_size is unset: pass --image_size")
  networks = nnx.eval_shape(lambda: family.create_networks(config, variables.rngs(0)))
  for net in networks.values():
    net.eval()
  graphdef, state = nnx.split(networks)

  def run(state, inputs):
    return family.predict(config, nnx.merge(graphdef, state), inputs)

  inputs = {k: jax.ShapeDtypeStruct((1, size, size, 1 if k == "mask" else 3), jnp.float32)
            for k in family.INPUTS}
  flops = lowered_flops(run, state, inputs)
  return Summary(
      model=model_card.model_name(config), image_size=size,
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


