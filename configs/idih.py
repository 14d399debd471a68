r"""iDIH256 (Sofiiuk et al., WACV 2021) trained with FN-MSE, the official recipe.

  python -m harmonax.train --config=configs/idih.py --workdir=/tmp/idih
  python -m harmonax.train --config=configs/idih.py:data=iharmony4 --workdir=/tmp/idih
  python -m harmonax.train --config=configs/idih.py:runlocal --workdir=/tmp/idih_local

Full size: depth 7, 64 base channels, 8.30M parameters, 256x256 crops, batch
16, Adam 1e-3 for 120 epochs with lr x0.1 at epochs 105 and 115. `runlocal`: a
depth-4, 8-channel model at 64x64 for ~20 steps (about a minute on 2 CPU cores).
"""

import ml_collections

from harmonax import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The iDIH config; `arg` as 'runlocal,data=coco' (see config_args.parse_arg)."""
  arg = config_args.parse_arg(arg, runlocal=False, data="sample")
  config = ml_collections.ConfigDict()

  config.model = dict(
      name="dih",
      variant="idih",  # harmonax.models.dih network: 'idih' or 'issam'.
      depth=7,            # Encoder/decoder levels; inputs must be multiples of 2**depth.
      ch=64,              # Channels of the first level.
      max_channels=512,
      batchnorm_from=2,   # Batch norm from this encoder level on (decoder: everywhere).
      image_fusion=True,  # Learned blending map with the input image.
      # Test-time padding: 'centered_zero' is the official predictor's (zeros
      # around the image to a multiple of 2**(depth + 1)); 'edge' is cheaper.
      padding="centered_zero",
      init_magnitude=2.0,  # XavierGluon(gaussian, magnitude=2) as the official recipe.
      # Not in the paper (runlocal uses it): the blending map starts at 0.9975
      # everywhere (dih.start_near_input), so the untrained model returns the
      # composite (but for 0.25% of its RGB head) instead of half a random image.
      identity_init=False,
  )
  # FN-MSE: squared error over all pixels / (3 * max(mask area, min_area)).
  config.loss = dict(min_area=100.0)
  config.data = config_args.data_config(arg.data, image_size=256)
  config.batch_size = 16
  config.num_epochs = 120
  config.optim = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                      decay_epochs=(105, 115), decay_factor=0.1)
  config_args.add_loop_config(config, arg.runlocal)

  if arg.runlocal:
    config.model.update(depth=4, ch=8, max_channels=32, identity_init=True)
  return config
