r"""CDTNet and CDTNet(sim) (Cong et al., CVPR 2022): high-resolution harmonization.

  # HAdobe5k, base 256 -> 1024 (the default), from the official iS2AM weights:
  python -m harmonax.train --config=configs/cdtnet.py:data=iharmony4/hadobe5k \
      --config.init.base=/path/issam256.pth --workdir=/tmp/cdtnet_1024
  # base 512 -> 2048, and CDTNet(sim) (the LUT branch alone) at 1024:
  python -m harmonax.train --config=configs/cdtnet.py:hr=2048,data=iharmony4/hadobe5k \
      --config.init.base=/path/issam256.pth --workdir=/tmp/cdtnet_2048
  python -m harmonax.train --config=configs/cdtnet.py:sim,data=iharmony4/hadobe5k \
      --config.init.base=/path/issam256.pth --workdir=/tmp/cdtnet_sim
  python -m harmonax.train --config=configs/cdtnet.py:runlocal --workdir=/tmp/cdtnet_local

The official recipe (train.sh, models/CDTNet.py): iS2AM base (depth 4, 32
channels; the released issam256.pth) frozen in eval mode; 4 LUTs of 33^3;
refinement of 64 channels; FN-MSE (min area 100), weight 1, on the final, LUT
and base outputs; Adam 1e-3, x0.1 at epochs 50 and 100 of 120; random resized
crops at the high resolution (scale 0.5-1) + flips; batch 4 at 1024, 2 at 2048.
2.74M parameters with 4 LUTs. Evaluation at the high resolution (a square resize
of every test image, as the official evaluate_model.py), SSIM with a 7x7 window.
`runlocal`: a depth-3, 8-channel base at 64 inside 128x128 images, ~20 steps.

Deviations (also in the README): the refinement runs at the input's own size
(the official resizes to its configured hr x hr, equal in its evaluation);
harmonax's LUT is per image at batch > 1 (the official CUDA kernel mixes
images' channels); one Adam per trained network (equivalent: Adam is per
parameter); the weight predictor's hidden conv bias starts at zero.
"""

import ml_collections

from harmonax import config_args


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """`arg` as 'hr=2048', 'sim', 'runlocal,data=iharmony4/hadobe5k' (config_args.parse_arg).

  hr: the full (training crop and evaluation) resolution; lr: the base
  resolution (0: 256 up to hr 1024, else 512, as the released models).
  """
  arg = config_args.parse_arg(arg, runlocal=False, data="sample", hr=1024, lr=0, sim=False)
  lr = arg.lr or (256 if arg.hr <= 1024 else 512)
  config = ml_collections.ConfigDict()
  config.model = dict(
      name="cdtnet",
      sim=arg.sim,          # CDTNet(sim): the LUT branch alone (no refinement).
      base_size=lr,         # The base sees a bilinear (no antialias) lr x lr resize.
      finetune_base=False,  # Official default: base frozen, eval-mode batch norm.
      # The iS2AM base, as configs/issam.py (init_magnitude: XavierGluon).
      base=dict(depth=4, ch=32, max_channels=512, batchnorm_from=2, attend_from=2,
                attention_mid_k=0.5, image_fusion=True, init_magnitude=1.0),
      n_luts=4, lut_dim=33,
      lut_hidden=256,       # Weight predictor: 1x1 conv to this width, then fg/bg pools.
      lut_chunk=2 ** 18,    # Pixels per LUT gather pass (memory at 4K).
      refine_channels=64,
      refine_init_magnitude=2.0,  # XavierGluon(gaussian, 2) as models/CDTNet.py.
      refine_rows=256,      # Inference: refinement in strips of rows (0: whole image).
      # Not in the paper (runlocal uses it): the refinement's blending map starts
      # at 0.9975 everywhere (dih.start_near_input), so the untrained model returns
      # the composite (but for 0.25% of its RGB head) instead of half a random image.
      identity_init=False,
  )
  config.loss = dict(min_area=100.0, pixel_weight=1.0, lut_weight=1.0, base_weight=1.0)
  # {'base': an official issam256.pth, an .npz of it, or a harmonax iS2AM checkpoint}.
  config.init = dict(base="")
  config.data = config_args.data_config(arg.data, image_size=arg.hr)
  config.batch_size = {256: 16, 1024: 4}.get(arg.hr, 2)
  config.num_epochs = 120
  config.optim = dict(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8,
                      decay_epochs=(50, 100), decay_factor=0.1)
  config_args.add_loop_config(config, arg.runlocal)
  # The official SSIM: a 7x7 Gaussian window; PSNR's peak is the target's maximum.
  config.eval.ssim = "gaussian7"
  # Scored at config.data.image_size (hr): the official square resize.
  config.evals.val.image_size = -1

  if arg.runlocal:
    config.data.image_size = 128
    config.model.update(base_size=64, lut_hidden=16, refine_channels=8, refine_rows=48,
                        identity_init=True)
    config.model.base.update(depth=3, ch=8, max_channels=32, attend_from=1)
  return config
