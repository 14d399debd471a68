"""harmonax.variables: the same values as flax's variables, without the
quadratic cost of writing them under jit."""

from flax import nnx
import jax
from jax._src.interpreters import partial_eval
import jax.numpy as jnp
import numpy as np
import pytest

from harmonax import variables
from harmonax.models import layers
from harmonax.models import spectral_norm


@pytest.fixture
def origin_scans(monkeypatch):
  """Counts the scans of the traced program that flax's sharding check triggers."""
  calls = []
  scan = partial_eval.JaxprStackFrame.find_progenitors

  def counting(self, tracer):
    calls.append(1)
    return scan(self, tracer)

  monkeypatch.setattr(partial_eval.JaxprStackFrame, "find_progenitors", counting)
  return calls


def _draws(rngs, n=3):
  return [jax.random.key_data(rngs.params()) for _ in range(n)] + [
      jax.random.key_data(rngs.dropout()) for _ in range(n)]


def test_rngs_draw_the_same_keys_as_nnx_rngs_in_and_out_of_jit(origin_scans):
  make = lambda f: f(params=0, dropout=jax.random.key(5))
  for wrap in (lambda f: f(), lambda f: jax.jit(f)()):
    ours = wrap(lambda: _draws(make(variables.rngs)))
    theirs = wrap(lambda: _draws(make(nnx.Rngs)))
    np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  # flax's own counters scanned the program at each draw under jit; ours never.
  origin_scans.clear()
  jax.jit(lambda: _draws(make(variables.rngs)))()
  assert not origin_scans
  jax.jit(lambda: _draws(make(nnx.Rngs)))()
  assert len(origin_scans) >= 6


def test_statistics_written_under_jit_equal_flax_batch_norm(origin_scans):
  x = jnp.asarray(np.random.default_rng(0).normal(2, 3, (4, 5, 5, 6)), jnp.float32)
  ours = layers.statistics_as(nnx.BatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0)))
  theirs = nnx.BatchNorm(6, momentum=0.9, rngs=nnx.Rngs(0))
  step = nnx.jit(lambda bn, x: bn(x, use_running_average=False))
  origin_scans.clear()
  y_ours = step(ours, x)
  assert not origin_scans
  y_theirs = step(theirs, x)
  np.testing.assert_array_equal(np.asarray(y_ours), np.asarray(y_theirs))
  for name in ("mean", "var"):
    np.testing.assert_array_equal(np.asarray(getattr(ours, name)[...]),
                                  np.asarray(getattr(theirs, name)[...]))
  assert not np.allclose(np.asarray(ours.mean[...]), 0)  # They moved.
  assert isinstance(ours.mean, nnx.BatchStat)  # Filters see batch statistics.


def test_concrete_writes_and_partial_writes_keep_flax_semantics():
  stat = variables.Statistic(jnp.zeros((3,)))
  stat[...] = jnp.ones((3,))
  stat[1] = 5.0
  np.testing.assert_array_equal(np.asarray(stat[...]), [1, 5, 1])
  sn = spectral_norm.SpectralNorm(nnx.Linear(4, 3, rngs=nnx.Rngs(0)), rngs=nnx.Rngs(1))
  before = np.asarray(sn.u[...])
  nnx.jit(lambda m: m.normalized_kernel(update_stats=True))(sn)
  assert np.abs(np.asarray(sn.u[...]) - before).max() > 0
