r"""HRNet18 + iDIH256 (Sofiiuk et al., WACV 2021), and the other HRNet variants.

  python -m harmonax.train --config=configs/hrnet_idih.py:data=iharmony4 --workdir=/tmp/hrnet_idih
  python -m harmonax.train --config=configs/hrnet_idih.py:small --workdir=/tmp/hrnet18s_idih
  python -m harmonax.train --config=configs/hrnet_idih.py:base=issam --workdir=/tmp/hrnet_issam
  python -m harmonax.train --config=configs/hrnet_idih.py:width=32 --workdir=/tmp/hrnet32_idih
  python -m harmonax.train --config=configs/hrnet_idih.py:runlocal --workdir=/tmp/hrnet_local

Set config.init.generator (--config.init.generator=PATH) to the HRNet
ImageNet weights the official recipes start from (HRNet-Image-Classification:
hrnetv2_w18_imagenet_pretrained.pth; hrnet_w18_small_model_v2.pth for 'small';
hrnetv2_w32_imagenet_pretrained.pth for width=32); '' trains from scratch.

The official models/fixed256/hrnet18_idih.py (hrnet18s_idih.py, hrnet18_issam.py,
hrnet32_idih.py): HRNetV2 + OCR (64) whose 128-channel stride-4 output is
concatenated to the encoder's level-2 input; the mask enters HRNet through a
3x3 conv added after its first conv. 18.51M parameters (HRNet18 + iDIH256),
256x256 crops, batch 16, Adam 1e-3 for 180 epochs with lr x0.1 at epochs 160
and 175, HRNet's pretrained weights at lr x0.1, XavierGluon(gaussian, 2) init,
FN-MSE with min_area 100 (also for iS2AM). `runlocal`: a narrow, shallow HRNet
(width 4, stem 8, OCR 4, 1 block a branch, 1 module a stage) with a depth-4,
8-channel iDIH (depth 3 iS2AM) at 64x64.
"""

import ml_collections

from harmonax import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` as 'runlocal,base=issam,small,width=32,data=coco' (config_args.parse_arg)."""
  arg = config_args.parse_arg(arg, runlocal=False, data="sample", base="idih", width=18,
                              small=False)
  config = ml_collections.ConfigDict()
  # Residual blocks a branch and modules of stages 2-4 (hrnet_ocr.py's `small`).
  blocks, modules = (2, [1, 3, 2]) if arg.small else (4, [1, 4, 3])

  config.model = dict(
      name="dih",
      variant=arg.base,  # The base network: 'idih' (iDIH256) or 'issam' (iS2AM).
      depth=7 if arg.base == "idih" else 4,
      ch=64 if arg.base == "idih" else 32,
      max_channels=512,
      batchnorm_from=2,
      image_fusion=True,
      attend_from=2,        # iS2AM only: the first decoder level with S2AM.
      attention_mid_k=0.5,  # iS2AM only.
      # Test-time padding: zeros around the image to a multiple of 2**(depth + 1)
      # (the base network's official predictor; a no-op at 256 for iDIH).
      padding="centered_zero",
      init_magnitude=2.0,  # XavierGluon(gaussian, 2) for the whole model, iS2AM included.
      backbone=dict(
          name="hrnet",
          width=arg.width,    # HRNetV2-W18 (32: HRNet32 + iDIH256).
          blocks=blocks,      # 4; HRNet18s (`small`): 2.
          modules=modules,    # 1/4/3; HRNet18s: 1/3/2.
          ocr=64,             # OCR head width: the features have 2 * ocr channels.
          mode="cat",         # FeaturesConnector: concatenate to the encoder input.
          downsize_input=False,  # True only in the official 512 models.
          stem=64,            # HRNet's stem width (64 in every official model).
          lr_mult=0.1,        # HRNet's pretrained weights learn 10x slower.
      ),
      # Not in the paper (runlocal uses it): the blending map starts at 0.9975
      # everywhere (dih.start_near_input), so the untrained model returns the
      # composite (but for 0.25% of its RGB head) instead of half a random image.
      identity_init=False,
  )
  # HRNet ImageNet weights for the backbone (see the docstring); '' = random.
  config.init = dict(generator="")
  # FN-MSE: squared error over all pixels / (3 * max(mask area, min_area)).
  config.loss = dict(min_area=100.0)
  config.data = config_args.data_config(arg.data, image_size=256)
  config.batch_size = 16
  config.num_epochs = 180
  config.optim = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                      decay_epochs=(160, 175), decay_factor=0.1)
  config_args.add_loop_config(config, arg.runlocal)

  if arg.runlocal:
    config.model.update(depth=4 if arg.base == "idih" else 3, ch=8, max_channels=32,
                        attend_from=1, identity_init=True)
    # A narrow, shallow HRNet: XLA's CPU compile time grows with its ~300 convs.
    config.model.backbone.update(width=4, ocr=4, stem=8, blocks=1, modules=[1, 1, 1])
  return config
