r"""BargainNet (Cong et al., ICME 2021), the official training recipe.

  python -m harmonax.train --config=configs/bargainnet.py --workdir=/tmp/bargainnet
  python -m harmonax.train --config=configs/bargainnet.py:data=iharmony4 --workdir=/tmp/bargainnet
  python -m harmonax.train --config=configs/bargainnet.py:runlocal --workdir=/tmp/bargainnet_local

Full size (as the official README: --netG s2ad --norm batch --input_nc 20
--lr 1e-4 --beta1 0.9 --lr_policy step --lr_decay_iters 6574200): attention
U-Net with batch norm and a 16-d background code input (54.78M parameters),
domain code extractor (3.92M), random resized crops 256 (scale 0.5-1) + flip,
batch 1, Adam(1e-4, 0.9, 0.999) for 200 epochs (niter 100 + niter_decay 100)
at a constant rate (the step decay at 6574200 epochs never happens).
`runlocal`: 64x64 input, 6 downsamplings, 8 channels, batch 8, 10 steps.
"""

import ml_collections

from harmonax import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The BargainNet config; `arg` as 'runlocal,data=coco' (see config_args.parse_arg)."""
  arg = config_args.parse_arg(arg, runlocal=False, data="sample")
  config = ml_collections.ConfigDict()

  config.model = dict(
      name="bargainnet",
      num_downs=8,       # U-Net levels; inputs are padded to multiples of 2**num_downs.
      ngf=64,            # Generator channels of the first level.
      norm="batch",      # The official generator hard-codes batch norm.
      use_dropout=True,  # Dropout 0.5 in the 512-channel middle levels.
      ndf=64,            # Domain code extractor channels of the first level.
      code_dim=16,       # Domain code size (--style_dim).
      # Not in the paper (runlocal uses it): a residual output, tanh(atanh(composite)
      # + last layer), whose last layer starts at zero (attention_unet), so the
      # untrained generator returns the composite instead of a random image.
      identity_init=False,
  )
  # L1 + triplet * (two triplet losses on the domain codes, margin).
  config.loss = dict(triplet=0.01, margin=0.1)
  config.data = config_args.data_config(arg.data, image_size=256)
  config.batch_size = 1
  config.num_epochs = 200
  config.optim = dict(lr=1e-4, b1=0.9, b2=0.999, decay_epochs=6574200)
  # The official test computes PSNR with data_range = output.max() - output.min().
  config_args.add_loop_config(config, arg.runlocal, eval_every=50000, checkpoint_every=10000,
                              psnr_peak="pred_range", runlocal_steps=10,
                              eval_metrics=("harmonization", "harmony_score"))

  if arg.runlocal:
    config.model.update(num_downs=6, ngf=8, ndf=8, identity_init=True)
  return config
