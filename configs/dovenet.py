r"""DoveNet (Cong et al., CVPR 2020), the official training recipe.

  python -m harmonax.train --config=configs/dovenet.py --workdir=/tmp/dovenet
  python -m harmonax.train --config=configs/dovenet.py:data=iharmony4 --workdir=/tmp/dovenet
  python -m harmonax.train --config=configs/dovenet.py:runlocal --workdir=/tmp/dovenet_local

Full size (as `scripts/train_pix2pix.sh` of the official code: --netG s2ad
--norm instance --gan_mode wgangp --no_flip --preprocess none): attention U-Net
with 8 downsamplings and 64 base channels (54.76M parameters), domain
verification discriminator (17.79M), whole images resized to 256x256, batch 1,
Adam(2e-4, 0.5, 0.999) for 100 epochs, then linear decay to 0 over 100 more.
`runlocal`: 64x64 input, 6 downsamplings, 8 channels, 4 strided discriminator
layers, batch 8, 10 steps (about a minute on 2 CPU cores).
"""

import ml_collections

from harmonax import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The DoveNet config; `arg` as 'runlocal,data=coco' (see config_args.parse_arg)."""
  arg = config_args.parse_arg(arg, runlocal=False, data="sample")
  config = ml_collections.ConfigDict()

  config.model = dict(
      name="dovenet",
      num_downs=8,        # U-Net levels; inputs are padded to multiples of 2**num_downs.
      ngf=64,             # Generator channels of the first level.
      # 'batch' as the official README says of the released generator; the
      # released file's keys decide on import (harmonax.convert reads them).
      norm="batch",
      use_dropout=True,   # Dropout 0.5 in the 512-channel middle levels.
      ndf=64,             # Discriminator channels of the first level.
      d_num_strided=6,    # Stride-2 partial convs before the stride-1 one (needs >= 255 px).
      # Not in the paper (runlocal uses it): a residual output, tanh(atanh(composite)
      # + last layer), whose last layer starts at zero (attention_unet), so the
      # untrained generator returns the composite instead of a random image.
      identity_init=False,
  )
  # DoveNet resizes whole images to 256 (no crop: scale 1) and never flips.
  config.loss = dict(l1=100.0, gp=10.0)  # lambda_L1; lambda_gp (gp_ratio 1).
  config.data = config_args.data_config(arg.data, image_size=256, hflip=False)
  config.data.crop_scale = (1.0, 1.0)
  config.batch_size = 1
  config.num_epochs = 200
  config.optim = dict(lr=2e-4, b1=0.5, b2=0.999, epochs_constant=100, epochs_decay=100)
  # The official test computes PSNR with data_range = output.max() - output.min().
  config_args.add_loop_config(config, arg.runlocal, eval_every=50000, checkpoint_every=10000,
                              psnr_peak="pred_range", runlocal_steps=10)

  if arg.runlocal:
    config.model.update(num_downs=6, ngf=8, ndf=8, d_num_strided=4, identity_init=True)
  return config
