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
      # Not in the paper (runlocal uses it): the blending map starts at 0.9975
      # everywhere (dih.start_near_input), so the untrained model returns the
      # composite (but for 0.25% of its RGB head) instead of half a random image.
      identity_init=False,
  )
  # FN-MSE: squared error over all pixels / (3 * max(mask area, min_area)).
  # Not in the paper (0 = off): the share of the rows whose composite is remade in
  # the step by Reinhard transfer toward another row (harmonax.recolor), and the
  # share left real, as the Harmonizer demo. Measured on the sample with the
  # runlocal network, 2,400 steps, transfer 1 and identity 0.25 (issue 16, test
  # split fMSE at 64x64, composites 1765): seeds 0/1/2 1511/1552/2181 (with
  # optim.ema_decay 0.998: seeds 0/2 1517/2123); min_area 62.5 (1000 scaled
  # to 64x64): seeds 0/1 1988/2211. Not a demo: the Harmonizer's is better.
  config.loss = dict(min_area=1000.0, transfer_fraction=0.0, identity_fraction=0.0)
  config.data = config_args.data_config(arg.data, image_size=256)
  config.batch_size = 16
  config.num_epochs = 120
  config.optim = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                      decay_epochs=(105, 115), decay_factor=0.1,
                      ema_decay=0.0)  # > 0: evaluate and save parameter averages.
  config_args.add_loop_config(config, arg.runlocal)

  if arg.runlocal:
    config.model.update(depth=3, ch=8, max_channels=32, attend_from=1, identity_init=True)
  return config
