"""nnx variables whose writes under jit cost what the write costs.

`v[...] = x` on an nnx.Variable (flax 0.12) compares x's sharding with the
stored value's. A tracer answers `.sharding` with an AttributeError whose
message names the value's origin, found by scanning every equation traced so
far: each write costs time in proportion to the program traced before it, so
a program's writes cost the square of its size. Writes are frequent: every
rng draw counts itself (`nnx.Rngs`), every batch norm and spectral norm stores
its statistics. Abstract construction of HRNet18 + iDIH256 (991 draws) took
about 60 s, a third of a DoveNet train step's trace was these writes.

The classes here store the same value without the check when it is a tracer
of the stored shape and dtype (concrete arrays take flax's path unchanged);
`rngs` is `nnx.Rngs` with such counters. `averaging_rate` is the warm-up weight
of the running averages kept in such variables.
"""

from flax import nnx
import jax
import jax.numpy as jnp


class _TracedWrites:
  """Mixin for an nnx.Variable subclass: whole-value tracer writes skip the check."""

  def __setitem__(self, key, value) -> None:
    stored = self.get_value()
    if (key is Ellipsis and isinstance(value, jax.core.Tracer)
        and value.shape == stored.shape and value.dtype == stored.dtype):
      self.set_value(value)
    else:
      super().__setitem__(key, value)


class Statistic(_TracedWrites, nnx.BatchStat):
  """An nnx.BatchStat: running statistics, power-iteration vectors."""


class RngCount(_TracedWrites, nnx.RngCount):
  """An rng stream's draw counter."""


def rngs(*args, **kwargs) -> nnx.Rngs:
  """nnx.Rngs(*args, **kwargs) (same streams, same keys) counting in `RngCount`s."""
  out = nnx.Rngs(*args, **kwargs)
  for name in out:
    stream = out[name]
    stream.count = RngCount(stream.count.get_value(), tag=stream.tag)
  return out


def averaging_rate(decay: float, count: jax.Array) -> jax.Array:
  """max(1 - decay, 1 / (count + 1)), float32: the weight of the newest value in a
  running average after `count` earlier updates (layers.BatchNorm's statistics,
  optimizers.ema_update's parameter averages). While 1 / (count + 1) is larger,
  the average is the plain mean of every value so far, so the initial value fades
  as fast as it can; after 1 / (1 - decay) updates it is the usual exponential
  moving average."""
  return jnp.maximum(1.0 - decay, 1.0 / (jnp.asarray(count).astype(jnp.float32) + 1.0))
