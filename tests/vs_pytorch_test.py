"""benchmarks/torch_models: every PyTorch twin loads its harmonax network's
weights strictly and predicts the same image (runlocal sizes)."""

import importlib

from flax import nnx
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from benchmarks import vs_pytorch
from harmonax import models


@pytest.mark.parametrize("name", vs_pytorch.MODELS)
def test_twin_predicts_like_harmonax(name):
  config = vs_pytorch.load_config(name, "runlocal")
  family = models.get_family(config.model.name)
  twin = importlib.import_module(f"benchmarks.torch_models.{vs_pytorch.TWINS[name]}")
  nets = family.create_networks(config, nnx.Rngs(0))
  model = twin.build(config)
  getattr(twin, "load", vs_pytorch.load_twin)(model, nets)
  for net in nets.values():
    net.eval()
  model.eval()
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
