"""Tests of harmonax.summary: parameter counts and lowered-HLO FLOPs."""

import functools
import glob
import importlib
import os

from flax import nnx
import jax
import jax.numpy as jnp
import pytest

from harmonax import model_info as summary
from harmonax import variables
from harmonax.models import get_family

CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(
    os.path.join(os.path.dirname(__file__), "..", "configs", "*.py"))
                 if not os.path.basename(p).startswith("_"))


def _config(name, arg="runlocal"):
  return importlib.import_module(f"configs.{name}").get_config(arg)


def test_lowered_flops_counts_two_per_multiply_add():
  x = jax.ShapeDtypeStruct((1, 12, 10, 8), jnp.float32)
  k = jax.ShapeDtypeStruct((3, 3, 8, 4), jnp.float32)
  conv = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
  assert summary.lowered_flops(conv, x, k) == 2 * (10 * 8 * 4) * (8 * 9)


def test_loops_count_their_body_once_per_iteration():
  # XLA's cost analysis counts a while body once: PCT-Net ViT's blocked
  # attention (a fori_loop) read 60 GFLOPs instead of 196.
  x = jax.ShapeDtypeStruct((64, 64), jnp.float32)

  def unrolled(x, w):
    for _ in range(6):
      x = jnp.tanh(x @ w)
    return x

  def fori(x, w):
    return jax.lax.fori_loop(0, 6, lambda i, c: jnp.tanh(c @ w), x)

  def nested(x, w):  # A map of 4 row blocks inside a loop of 3 (inside a jit).
    rows = jax.jit(lambda c: jax.lax.map(lambda r: jnp.tanh(r @ w), c.reshape(4, 16, 64)))
    return jax.lax.fori_loop(0, 3, lambda i, c: rows(c).reshape(64, 64), x)

  def unrolled_scan(x, w, length, unroll):
    return jax.lax.scan(lambda c, _: (jnp.tanh(c @ w), None), x, None, length=length,
                        unroll=unroll)[0]

  once = 2 * 64 ** 3
  for length, unroll in ((6, 2), (7, 2), (8, 3), (5, 5)):
    assert summary.lowered_flops(
        functools.partial(unrolled_scan, length=length, unroll=unroll), x, x
    ) == pytest.approx(length * once, rel=1e-4), (length, unroll)
  assert summary.lowered_flops(unrolled, x, x) == 6 * once
  assert summary.lowered_flops(fori, x, x) == pytest.approx(6 * once, rel=1e-4)
  assert summary.lowered_flops(nested, x, x) == pytest.approx(3 * once, rel=1e-4)


@pytest.mark.parametrize("name, params", [("idih", 8_301_284), ("issam", 2_185_340)])
def test_full_size_summary(name, params):
  result = summary.summarize(_config(name, ""))
  assert result.params == {"generator": params}
  assert result.image_size == 256
  # Lower bounds from the biggest convolutions alone (2 FLOPs per multiply-add):
  # iDIH's 64->64 4x4 stride-2 conv at 128x128 -> 64x64; iS2AM's two 3x3 convs
  # on 64 and 32 channels at 256x256.
  bound = {"idih": 2 * 64 * 64 * 64 * 64 * 16,
           "issam": 2 * 256 * 256 * 32 * 9 * (64 + 32)}[name]
  assert bound / 1e9 < result.gflops_per_image < 20 * bound / 1e9
  table = summary.format_table(result)
  assert table.startswith(f"model `{name}`, predict at 256x256")  # Not the family, `dih`.
  assert f"| generator | {params:,} | {params / 1e6:.2f} |" in table
  assert "GFLOPs per image" in table


def test_flops_scale_with_pixels():
  config = _config("issam")
  small = summary.summarize(config, image_size=32).gflops_per_image
  large = summary.summarize(config, image_size=64).gflops_per_image
  assert large == pytest.approx(4 * small, rel=0.05)


@pytest.mark.parametrize("name", CONFIGS)
def test_every_runlocal_config_summarizes(name):
  config = _config(name)
  result = summary.summarize(config)
  family = get_family(config.model.name)
  networks = nnx.eval_shape(lambda: family.create_networks(config, variables.rngs(0)))
  assert set(result.params) == set(networks)
  assert all(count > 0 for count in result.params.values())
  assert result.gflops_per_image > 0
