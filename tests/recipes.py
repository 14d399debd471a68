"""Config helpers shared by tests that use a recipe's runlocal network."""

import ml_collections


def official_init(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the official random initialisation (in place, and returned).

  The runlocal and demo recipes of the Harmonizer and PCT-Net start from the
  identity (`model.identity_init`: the untrained output is the composite).
  Tests that compare implementations, formats or dtypes need an output that
  depends on every weight, so they turn it off.
  """
  if "identity_init" in config.model:
    config.model.identity_init = False
  return config
