"""iS2AM family (improved Spatial-Separated Attention Module, Sofiiuk et al. 2021).

One network, 'generator': `dih.SSAMImageHarmonization` with the config's
`model.depth`, `model.ch`, `model.max_channels`, `model.batchnorm_from`,
`model.attend_from`, `model.attention_mid_k`, `model.image_fusion`. Loss: FN-MSE
with minimum area 1000, as in the official recipe (models/fixed256/improved_ssam.py).
"""

from flax import nnx
import jax
import ml_collections
import numpy as np

from harmonax.models import dih

MIN_AREA = 1000.0

make_optimizers = dih.make_optimizers
predict = dih.predict


def create_networks(config: ml_collections.ConfigDict, rngs: nnx.Rngs
                    ) -> dict[str, nnx.Module]:
  """{'generator': SSAMImageHarmonization} built from config.model."""
  m = config.model
  return {"generator": dih.SSAMImageHarmonization(
      depth=m.depth, ch=m.ch, max_channels=m.max_channels,
      batchnorm_from=m.batchnorm_from, attend_from=m.attend_from,
      attention_mid_k=m.attention_mid_k, image_fusion=m.image_fusion,
      init=m.get("init_magnitude", 1.0), rngs=rngs)}


def compute_losses(networks: dict[str, nnx.Module], batch: dict[str, jax.Array],
                   rng: jax.Array, train: bool):
  """({'generator': fn_mse}, {'fn_mse'}, {'harmonized'}); see dih.compute_losses."""
  del rng  # Deterministic network.
  return dih.compute_losses(networks, batch, train, MIN_AREA)


def convert_torch(state_dicts: dict[str, dict[str, np.ndarray]],
                  config: ml_collections.ConfigDict) -> dict[str, nnx.State]:
  """Official iS2AM weights (issam256.pth) -> {'generator': state}."""
  return dih.convert_torch(state_dicts, config, create_networks)
