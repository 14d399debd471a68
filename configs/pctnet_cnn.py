r"""PCT-Net CNN (Guerreiro et al., CVPR 2023), the official PCTNet_CNN recipe.

  python -m harmonax.train --config=configs/pctnet_cnn.py:data=iharmony4 --workdir=/tmp/pctnet_cnn
  python -m harmonax.train --config=configs/pctnet_cnn.py:runlocal --workdir=/tmp/pctnet_cnn_local
  python -m harmonax.convert --model=pctnet_cnn --torch_checkpoint=PCTNet_CNN.pth --output=/tmp/pctnet_cnn_official

Full size: the iS2AM U-Net (depth 4, 32 channels, S2AM from level 2) + a 1x1
conv to a 12-channel affine colour-transform map at 256, upsampled bicubically
and applied at full resolution, blended with the upsampled attention map:
2,185,736 parameters. Adam 1e-3 x batch/16, 180 epochs, lr x0.1 at 160 and 175.
Losses: FN-MSE (min area 1000) at full resolution + 0.1 x mean Sobel magnitude
of the map + 0.01 x the contrastive SS-CR + CS-CR term on VGG16 relu4_3
features of the 256 output (harmonax/models/pct_contrastive.py). The last
needs torchvision VGG16 ImageNet weights (vgg16-397923af.pth, a state dict):
  --config.init.vgg=/path/to/vgg16-397923af.pth
without them the term is OFF and the trainer logs a warning.
Deviations: fixed-size training crops (random 0.49-1 of the area, resized to
512x512) instead of variable full-resolution crops of 0.7-1 of each side
(batches need one shape); the negatives' luminance curve is fitted by grid
search instead of Nelder-Mead (pct_contrastive's docstring).
`runlocal`: a depth-3, 8-channel model on 96x96 crops with a 64x64 view.
"""

import ml_collections

from harmonax import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The PCT-Net CNN config; `arg` as 'runlocal,data=iharmony4'."""
  arg = config_args.parse_arg(arg, runlocal=False, data="sample")
  config = ml_collections.ConfigDict()
  config.model = dict(
      name="pctnet",
      variant="cnn",
      low_res=256,          # The network's input view; the map is predicted here.
      depth=4, ch=32, max_channels=512, batchnorm_from=2, attend_from=2,
      attention_mid_k=0.5,
      init_magnitude=2.0,   # XavierGluon(gaussian, magnitude=2) as models/PCTNet_CNN.py.
      # Pixels per chunk of the fused upsample-and-apply (bounds the full-res map).
      chunk_pixels=1 << 18,
      # Not in the paper (runlocal uses it): get_params starts as the identity
      # transform (zero kernel, identity bias) and the attention map, which
      # weights the transformed image, at 0.0025, so the untrained model returns
      # the composite instead of a random recoloring.
      identity_init=False,
  )
  # FN-MSE at full resolution + 0.1 x mean Sobel magnitude of the 256 map +
  # 0.01 x contrastive (VGG16 relu4_3, min(5, batch - 1) negatives): the last
  # only with config.init.vgg (torchvision VGG16 weights), else it is off.
  config.loss = dict(pixel=1.0, min_area=1000.0, smoothness=0.1, contrastive=0.01,
                     contrastive_negatives=5)
  config.init = dict(vgg="")
  # Full-resolution training crops (fixed size here: a deviation) from which
  # the family makes the 256 view. The official trainer skips HAdobe5k.
  config.data = config_args.data_config(arg.data, image_size=512)
  config.data.crop_scale = (0.49, 1.0)
  config.batch_size = 16
  config.num_epochs = 180
  # lr is for batch 16; make_optimizers scales it by batch_size / 16.
  config.optim = dict(schedule="step", lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                      decay_epochs=(160, 175), decay_factor=0.1)
  config_args.add_loop_config(config, arg.runlocal, psnr_peak="255")
  # PCT-Net reports both: the 256 view (LR) and the original size (FR).
  config.evals = dict(
      val256=dict(dataset="", split="", image_size=256, max_examples=-1),
      fullres=dict(dataset="", split="", image_size=0, max_examples=-1))
  if arg.runlocal:
    config.model.update(low_res=64, depth=3, ch=8, max_channels=32, attend_from=1,
                        identity_init=True)
    config.data.image_size = 96
    config.evals = dict(val=dict(dataset="", split="", image_size=-1, max_examples=16))
  return config
