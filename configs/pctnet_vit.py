r"""PCT-Net ViT (Guerreiro et al., CVPR 2023), the official PCTNet_ViT recipe.

  python -m harmonax.train --config=configs/pctnet_vit.py:data=iharmony4 --workdir=/tmp/pctnet_vit
  python -m harmonax.train --config=configs/pctnet_vit.py:runlocal --workdir=/tmp/pctnet_vit_local
  python -m harmonax.convert --model=pctnet_vit --torch_checkpoint=PCTNet_ViT.pth --output=/tmp/pctnet_vit_official

Full size: 4x4 patches of the 256 view (image + mask), Linear(64->256), 9
post-LN transformer layers (2 heads, FFN 512, GELU, dropout 0.1, no positional
embedding), ConvTranspose2d(256->12, k4 s4) + tanh, 1x1 conv: a 12-channel
affine colour-transform map applied at full resolution on [0, 1] RGB and
blended with the soft mask: 4,809,896 parameters. Adam 1e-4 x batch/16,
50 epochs constant, then linear to 0 over 50 (per epoch).
Losses as configs/pctnet_cnn.py (the 0.01 contrastive term needs
--config.init.vgg=vgg16-397923af.pth; without it the term is OFF, logged).
Deviations: as configs/pctnet_cnn.py (fixed-size crops instead of variable
full-resolution crops of 0.7-1 of each side; grid-fitted negatives' tone curve).
`runlocal`: a 2-layer, 32-wide transformer on 96x96 crops with a 64x64 view.
"""

import ml_collections

from harmonax import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The PCT-Net ViT config; `arg` as 'runlocal,data=iharmony4'."""
  arg = config_args.parse_arg(arg, runlocal=False, data="sample")
  config = ml_collections.ConfigDict()
  config.model = dict(
      name="pctnet",
      variant="vit",
      low_res=256,   # Square, a multiple of the patch (the official view reshape).
      patch=4, dim=256, heads=2, num_layers=9, ffn=512, dropout=0.1,
      chunk_pixels=1 << 18,  # Pixels per chunk of the fused upsample-and-apply.
      # Not in the paper (runlocal uses it): get_params starts as the identity
      # transform (zero kernel, identity bias), so the untrained model returns
      # the composite instead of a random recoloring.
      identity_init=False,
  )
  config.loss = dict(pixel=1.0, min_area=1000.0, smoothness=0.1, contrastive=0.01,
                     contrastive_negatives=5)
  config.init = dict(vgg="")
  config.data = config_args.data_config(arg.data, image_size=512)
  config.data.crop_scale = (0.49, 1.0)
  config.batch_size = 16
  config.num_epochs = 100
  config.optim = dict(schedule="constant_then_linear", lr=1e-4, b1=0.9, b2=0.999,
                      eps=1e-8, constant_epochs=50, linear_epochs=50)
  config_args.add_loop_config(config, arg.runlocal, psnr_peak="255")
  config.evals = dict(
      val256=dict(dataset="", split="", image_size=256, max_examples=-1),
      fullres=dict(dataset="", split="", image_size=0, max_examples=-1))
  if arg.runlocal:
    config.model.update(low_res=64, dim=32, heads=2, num_layers=2, ffn=64,
                        identity_init=True)
    config.data.image_size = 96
    config.evals = dict(val=dict(dataset="", split="", image_size=-1, max_examples=16))
  return config
