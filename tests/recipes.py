"""Config helpers shared by tests that use a recipe's runlocal network."""

import ml_collections


def official_network(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the paper's network and random initialisation (in place, and returned).

  The runlocal and demo recipes start near the identity (`model.identity_init`:
  the untrained output is about the composite), and the Harmonizer's also give
  its regressor color statistics (`model.color_statistics`). Tests that compare
  implementations (PyTorch twins, exports), formats or dtypes need the official
  network and an output that depends on every weight, so they turn both off.
  """
  for key in ("identity_init", "color_statistics"):
    if key in config.model:
      config.model[key] = False
  return config
