r"""Deep Image Compositing (Zhang et al., WACV 2021): segmentation, refinement and
multi-stream fusion, trained on compositing triplets.

  python -m harmonax.train --config=configs/deep_compositing.py:runlocal --workdir=/tmp/dic_local
  python -m harmonax.train --config=configs/deep_compositing.py --workdir=/tmp/dic \
      --config.init.vgg=/path/vgg16-397923af.pth     # turns the perceptual term on
  python -m harmonax.evaluate --workdir=/tmp/dic_local

No official code exists: every `assumption_*` field and the loss weights are
this implementation's choices (README, "Deep Image Compositing"). Baselines
through the same path: `--config.model.variant=alpha|feathered|laplacian`
(no networks; see harmonax.compositing.save_baseline).
`runlocal`: 64x64, 3-level networks with 8-32 channels, 20 steps.
`self_taught=DIR`: train the next easy-to-hard round on the triplets that
`python -m harmonax.self_taught --workdir=<round k> --output=DIR` wrote.
"""

import json
import os

import ml_collections

from harmonax import config_args

DATA_PRESETS = {
    "sample": "compositing_triplets/sample",
    "folder": "compositing_triplets/folder",
}


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """The config; `arg` as 'runlocal,data=folder' (see config_args.parse_arg)."""
  arg = config_args.parse_arg(arg, runlocal=False, data="sample", self_taught="")
  config = ml_collections.ConfigDict()
  config.model = dict(
      name="deep_compositing",
      variant="network",   # 'network', or a classical blend: 'alpha', 'feathered', 'laplacian'.
      trained=["segmentation", "refinement", "fusion"],  # The rest are frozen.
      # Assumptions (not in the paper's text): widths per level, finest first
      # (lists: config.json round-trips them unchanged).
      assumption_segmentation_channels=[32, 64, 128, 256],
      assumption_refinement_channels=[32, 64, 128],
      assumption_fusion_channels=[32, 64, 128, 256],
      assumption_dense=True,           # Each decoder level sees every coarser one.
      # Zero-initialised band heads make the untrained net alpha blending, but
      # stall learning (the decoder gets no gradient): off by default.
      assumption_zero_band_heads=False,
      # The finest decoder level also predicts a correction of the mask, and the
      # blend uses clip(mask + correction): soft edges from a binary mask are
      # one product away (False: the RGB bands alone, which stayed alpha blending).
      assumption_alpha_head=True,
      # The mask the fusion network trains with: 'given' (ground truth, the
      # easy composites) or 'refined' (the networks' own, end to end).
      assumption_train_mask="given",
      assumption_binarize_train_mask=True,  # Fusion input mask >= 0.5 in training.
      feather_sigma=2.0,   # Feathered blending: Gaussian sigma of the mask, pixels.
      pyramid_levels=6,    # Laplacian blending: levels (capped by the image size).
  )
  # Assumed losses: L1 + VGG16 perceptual (relu1_2, relu2_2, relu3_3) on the
  # composite, BCE of both mask networks. The perceptual term is on only when
  # config.init.vgg names torchvision VGG16 weights (logged otherwise).
  config.loss = dict(l1=1.0, perceptual=0.1, mask=1.0)
  # vgg: torchvision VGG16 weights; segmentation, refinement, fusion: a
  # deep_compositing workdir (or save_networks dir) to start that network from.
  config.init = dict(vgg="", segmentation="", refinement="", fusion="")
  # Assumption: the suggestion, train at 384 (test at 768: evals.full).
  config.data = config_args.data_config(DATA_PRESETS.get(arg.data, arg.data), image_size=384)
  # The images a batch carries: the family's INPUTS (+ mask) and the target.
  config.data.image_keys = ("foreground", "background", "real")
  # Assumption: the networks composite with a binary mask (a segmentation's),
  # so the evaluation binarizes the resized mask as well and the fusion network
  # trains on the binarized crop's mask; the target keeps the soft matte.
  config.data.binary_eval_mask = True
  config.batch_size = 16
  config.num_epochs = 100  # Assumption.
  config.optim = dict(lr=1e-4, b1=0.9, b2=0.999, eps=1e-8, decay_epochs=(80,),
                      decay_factor=0.1)  # Assumption.
  if arg.self_taught:
    _self_taught_round(config, arg.self_taught)
  config_args.add_loop_config(config, arg.runlocal, psnr_peak="255",
                              eval_metrics=("boundary",))
  config.eval.boundary_band = 5  # Boundary-band half width k (pixels, at eval size).
  if arg.runlocal:
    config.model.update(assumption_segmentation_channels=[8, 16, 32],
                        assumption_refinement_channels=[8, 16],
                        assumption_fusion_channels=[8, 16, 32], pyramid_levels=4)
    config.optim.lr = 1e-3  # A few hundred CPU steps: a faster start than 1e-4.
    # The untrained network is alpha blending (the composite), as the other
    # runlocal recipes start from their input (model.identity_init): with random
    # band heads the 20-step model scored fMSE 156.88 against the blend's 154.26
    # on the sample's test triplets, with zero heads 153.73.
    config.model.assumption_zero_band_heads = True
    config.eval.boundary_band = 2
  else:
    config.evals.full = dict(dataset="", split="", image_size=768, max_examples=-1)
  return config


def _self_taught_round(config: ml_collections.ConfigDict, directory: str) -> None:
  """Trains on a round written by `python -m harmonax.self_taught --output=directory`:
  its harder train triplets, the same held-back test split."""
  path = os.path.join(os.path.expanduser(directory), "self_taught.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"self_taught={directory}: no self_taught.json (write the round "
                            "with python -m harmonax.self_taught --workdir=... --output=...)")
  with open(path) as f:
    workdir = json.load(f)["workdir"]
  config.data.name = "compositing_self_taught/harder"
  config.data.data_dir = os.path.expanduser(directory)
  # Assumptions: each round starts from the networks of the round that wrote
  # its data, and trains the fusion network only: the mask networks would
  # otherwise learn their own predictions (the round's `mask`) as targets.
  config.init.update(segmentation=workdir, refinement=workdir, fusion=workdir)
  config.model.trained = ["fusion"]
