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
  )
  config.data = config_args.data_config(arg.data, image_size=256)
  config.batch_size = 1
  config.num_epochs = 200
  config.total_steps = 0
  config.optim = dict(lr=1e-4, b1=0.9, b2=0.999, decay_epochs=6574200)
  config.seed = 0
  config.log_every = 100
  config.eval_every = 50000
  config.checkpoint_every = 10000
  config.image_every = 10000
  config.keep_checkpoints = 3
  # The official test computes PSNR with data_range = output.max() - output.min().
  config.eval = dict(psnr_peak="pred_range", ssim="gaussian11")

  if arg.runlocal:
    config.model.update(num_downs=6, ngf=8, ndf=8)
    config.data.image_size = 64
    config.data.num_workers = 0
    config.data.max_eval_examples = 16
    config.batch_size = 8
    config.total_steps = 10
    config.log_every = 5
    config.eval_every = 10
    config.checkpoint_every = 10
    config.image_every = 10
  return config
