r"""iS2AM (Sofiiuk et al., WACV 2021) trained with FN-MSE, the official recipe.

  python -m harmonax.train --config=configs/issam.py --workdir=/tmp/issam
  python -m harmonax.train --config=configs/issam.py:data=iharmony4 --workdir=/tmp/issam
  python -m harmonax.train --config=configs/issam.py:runlocal --workdir=/tmp/issam_local

Full size: U-Net of depth 4, 32 base channels, spatial-separated attention from
decoder level 2 (mid-channel factor 0.5), 2.19M parameters, 256x256 crops,
batch 16, Adam 1e-3 for 120 epochs with lr x0.1 at epochs 105 and 115.
`runlocal`: a depth-3, 8-channel model at 64x64 for ~20 steps.
"""

import ml_collections

from harmonax import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The iS2AM config; `arg` as 'runlocal,data=coco' (see config_args.parse_arg)."""
  arg = config_args.parse_arg(arg, runlocal=False, data="sample")
  config = ml_collections.ConfigDict()

  config.model = dict(
      name="dih",
      variant="issam",  # harmonax.models.dih network: 'idih' or 'issam'.
      depth=4,            # U-Net levels; inputs must be multiples of 2**(depth - 1).
      ch=32,              # Channels of the first level.
      max_channels=512,
      batchnorm_from=2,   # Batch norm from this encoder level on (decoder: everywhere).
      attend_from=2,      # First decoder level with a spatial-separated attention module.
      attention_mid_k=0.5,
      image_fusion=True,  # Learned blending map with the input image.
      # Test-time padding: 'centered_zero' is the official predictor's (zeros
      # around the image to a multiple of 2**(depth + 1)); 'edge' is cheaper.
      padding="centered_zero",
      init_magnitude=1.0,  # XavierGluon(gaussian, magnitude=1) as the official recipe.
  )
  # FN-MSE: squared error over all pixels / (3 * max(mask area, min_area)).
  config.loss = dict(min_area=1000.0)
  config.data = config_args.data_config(arg.data, image_size=256)
  config.batch_size = 16
  config.num_epochs = 120
  config.optim = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                      decay_epochs=(105, 115), decay_factor=0.1)
  config_args.add_loop_config(config, arg.runlocal)

  if arg.runlocal:
    config.model.update(depth=3, ch=8, max_channels=32, attend_from=1)
  return config
