"""benchmarks/torch_models: every PyTorch twin loads its harmonax network's
weights strictly and predicts the same image (runlocal sizes); the twins of the
full-resolution families compute the family's loss."""

import importlib
import time

from flax import nnx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import vs_pytorch
from harmonax import models
import recipes


def _eval_pair(name):
  """The runlocal harmonax networks and the twin holding their weights, both in eval mode."""
  config = recipes.official_network(vs_pytorch.load_config(name, "runlocal"))
  family = models.get_family(config.model.name)
  twin = importlib.import_module(f"benchmarks.torch_models.{vs_pytorch.TWINS[name]}")
  nets = family.create_networks(config, nnx.Rngs(0))
  model = twin.build(config)
  getattr(twin, "load", vs_pytorch.load_twin)(model, nets)
  for net in nets.values():
    net.eval()
  model.eval()
  return config, family, twin, nets, model


@pytest.mark.parametrize("name", vs_pytorch.MODELS)
def test_twin_predicts_like_harmonax(name):
  config, family, twin, nets, model = _eval_pair(name)
  rng = np.random.default_rng(0)
  composite = rng.uniform(size=(2, 64, 64, 3)).astype(np.float32)
  mask = np.zeros((2, 64, 64, 1), np.float32)
  mask[:, 16:48, 8:40] = 1.0
  got = nnx.jit(vs_pytorch.predict_fn(family, config))(
      nets, jnp.asarray(composite), jnp.asarray(mask))
  to_torch = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.inference_mode():
    want = twin.predict(model, to_torch(composite), to_torch(mask)).numpy()
  np.testing.assert_allclose(np.asarray(got), want.transpose(0, 2, 3, 1), atol=1e-4)


def test_cdtnet_twin_trilinear_equals_harmonax_lut_and_official_kernel():
  from benchmarks.torch_models import cdtnet  # pylint: disable=g-import-not-at-top
  from harmonax.models import lut  # pylint: disable=g-import-not-at-top
  from lut_test import official_kernel  # pylint: disable=g-import-not-at-top
  from lut_test import random_images  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  table = (lut.identity_lut(9) + rng.normal(0, 0.1, (3, 9, 9, 9))).astype(np.float32)
  images = random_images(2, 6, 7)
  got = np.asarray(lut.apply_lut(jnp.asarray(table), jnp.asarray(images)))
  for b in range(2):
    want = cdtnet.trilinear(torch.from_numpy(table),
                            torch.from_numpy(images[b].transpose(2, 0, 1).copy())).numpy()
    np.testing.assert_allclose(got[b], want.transpose(1, 2, 0), atol=1e-6)
    official = official_kernel(table, images[b:b + 1].transpose(0, 3, 1, 2), False)[0]
    np.testing.assert_allclose(want, official, atol=1e-6)


@pytest.mark.parametrize("name", ["pctnet_cnn", "pctnet_vit", "cdtnet"])
def test_twin_loss_equals_family_loss(name):
  """The full-resolution families' losses (eval mode: no dropout, running BN
  statistics) at 96, above their runlocal low-resolution view (64). HRNet+iDIH's
  twin uses the dih twin's loss."""
  config, family, twin, nets, model = _eval_pair(name)
  rng = np.random.default_rng(1)
  batch = {k: rng.uniform(size=(2, 96, 96, c)).astype(np.float32)
           for k, c in (("composite", 3), ("real", 3), ("mask", 1))}
  batch["mask"] = (batch["mask"] > 0.7).astype(np.float32)
  losses, _, _ = nnx.jit(lambda n, b: family.compute_losses(config, n, b, jax.random.key(0)))(
      nets, {k: jnp.asarray(v) for k, v in batch.items()})
  to_torch = lambda x: torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    want = twin.train_loss(model, {k: to_torch(v) for k, v in batch.items()}, None)
  for loss in losses.values():
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-5)


def test_vit_attention_variants_compute_the_same_attention():
  # benchmarks/vit_attention.py --variants times other ways of writing the ViT's
  # attention against harmonax's; each is attention (but the floor, which is not).
  from benchmarks import vit_attention  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  q, k, v = (rng.normal(0, 2, (1, 2048, 2, 8)).astype(np.float32) for _ in range(3))
  expected = np.asarray(jax.nn.dot_product_attention(q, k, v))
  for name, attention in vit_attention.variants().items():
    got = np.asarray(jax.jit(attention)(q, k, v))
    if name.startswith("products only"):
      assert np.abs(got - expected).max() > 1, name
    else:
      np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5, err_msg=name)


def test_three_bfloat16_products_come_near_float32():
  # vit_attention.py --bf16 times three bfloat16 products as the cheapest split
  # near float32 accuracy; one bfloat16 product is far from it.
  from benchmarks import vit_attention  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(2, 16, 128)), rng.normal(size=(2, 128, 24))
  exact = a @ b
  a, b = a.astype(np.float32), b.astype(np.float32)
  error = lambda fn: np.abs(np.asarray(jax.jit(fn)(a, b), np.float64) - exact).max()
  one = error(lambda a, b: vit_attention.bf16_matmul(a.astype(jnp.bfloat16),
                                                     b.astype(jnp.bfloat16)))
  three, single = error(vit_attention.three_bf16_matmuls), error(lambda a, b: a @ b)
  assert three < 1e-3 < 1e-2 < one, (three, one)
  assert three < 20 * single, (three, single)


def test_alternate_takes_turns_after_a_pause_it_does_not_time():
  # Short calls alternated back to back ran while the other framework's threads
  # still spun (BENCHMARKS.md); alternate() sleeps before each call, untimed.
  calls = []

  def fn(name):
    return lambda: calls.append((name, time.perf_counter()))
  medians = vs_pytorch.alternate({"a": fn("a"), "b": fn("b")}, repeats=3, pause_s=0.03)
  assert [name for name, _ in calls] == ["a", "b"] + ["a", "b"] * 3  # Warm-up, then turns.
  gaps = np.diff([t for _, t in calls[2:]])
  assert gaps.min() >= 0.03, gaps
  assert set(medians) == {"a", "b"} and max(medians.values()) < 0.03, medians
