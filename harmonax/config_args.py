"""Helpers shared by every `configs/<model>.py`: the config argument and data presets.

A config is chosen on the command line as `--config=configs/issam.py:runlocal,data=coco`;
the text after ':' reaches `get_config(arg)`, which calls `parse_arg` on it.
"""

import ml_collections
from ml_collections import config_dict

# `data=<preset>` in a config argument -> the TFDS dataset it trains and evaluates on.
DATA_PRESETS = {
    "sample": "harmonization_composites/sample",
    "coco": "harmonization_composites/coco",
    "folder": "harmonization_composites/folder",
    "iharmony4": "iharmony4/all",
}


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses 'runlocal,data=coco' into ConfigDict(runlocal=True, data='coco').

  Keys must be among `defaults`; values are cast to the default's type. A bare
  key sets a boolean to True.

  Raises:
    ValueError: on an unknown key, naming the valid ones.
  """
  result = ml_collections.ConfigDict(dict(defaults))
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, sep, value = item.partition("=")
    if key not in defaults:
      raise ValueError(
          f"Unknown config argument {key!r} in {arg!r}; valid: {sorted(defaults)}")
    default = defaults[key]
    if not sep:
      if not isinstance(default, bool):
        raise ValueError(f"Config argument {key!r} needs a value: {key}=...")
      result[key] = True
    elif isinstance(default, bool):
      result[key] = value.lower() in ("1", "true", "yes", "y")
    elif default is None:
      result[key] = value
    else:
      result[key] = type(default)(value)
  return result


def data_config(data: str, image_size: int = 256, *, hflip: bool = True,
                data_dir: str | None = None) -> ml_collections.ConfigDict:
  """The `config.data` block for a data preset name or a full TFDS name.

  Args:
    data: a preset of DATA_PRESETS ('sample', 'coco', 'folder', 'iharmony4')
      or a TFDS name such as 'iharmony4/hadobe5k'.
    image_size: training crop size and evaluation resize.
    hflip: random horizontal flips in training.
    data_dir: TFDS data dir; None means $TFDS_DATA_DIR, else ~/tensorflow_datasets.
  """
  name = DATA_PRESETS.get(data, data)
  if "/" not in name:
    raise ValueError(
        f"Unknown data {data!r}: use one of {sorted(DATA_PRESETS)} or a "
        "'<dataset>/<config>' TFDS name")
  return ml_collections.ConfigDict({
      "name": name,
      # A typed None: --config.data.data_dir=DIR can set it (a plain None
      # refuses any override).
      "data_dir": data_dir if data_dir is not None else config_dict.placeholder(str),
      "train_split": "train",
      "eval_split": "test",
      "image_size": image_size,
      "crop_scale": (0.5, 1.0),
      "hflip": hflip,
      "keep_empty_mask_prob": 0.05,
      "binary_eval_mask": False,
      "num_workers": 2,
      "shuffle_seed": 0,
      "max_eval_examples": -1,  # -1: the whole eval split.
  })


def add_loop_config(config: ml_collections.ConfigDict, runlocal: bool, *,
                    eval_every: int = 5000, checkpoint_every: int = 5000,
                    psnr_peak: str = "real_max", runlocal_steps: int = 20,
                    eval_metrics: tuple[str, ...] = ("harmonization",)) -> None:
  """Sets the training-loop fields every config shares, and the `runlocal` loop.

  Call after `config.data` and `config.batch_size` are set. `runlocal` shrinks the
  data side (64x64 crops, batch 8, in-process loading, 16 eval images, a few
  steps); each config shrinks its own model. `config.demo_model` records it
  (a config's `demo` recipe sets it too): `harmonax.harmonize` warns that such
  a model is a demo. Evaluation runs at the training size (config.evals).

  Args:
    config: the config being built; modified in place.
    runlocal: whether this is the tiny CPU variant.
    eval_every: steps between evaluations (full size).
    checkpoint_every: steps between checkpoints and TensorBoard image grids.
    psnr_peak: the evaluation's PSNR peak, as the model's own paper computed it.
    runlocal_steps: training steps of the runlocal variant.
    eval_metrics: evaluator modules (harmonax.evaluators.<name>) run on every
      evaluation set.
  """
  config.total_steps = 0  # 0: config.num_epochs decides.
  config.seed = 0
  # Compute dtype of the networks' layers, 'float32' or 'bfloat16' (mixed
  # precision: parameters, optimizer state, losses and metrics stay float32).
  # Training and the trainer's evaluations; evaluate/harmonize take --dtype.
  config.dtype = "float32"
  config.log_every = 100
  config.eval_every = eval_every
  config.checkpoint_every = checkpoint_every
  config.image_every = checkpoint_every
  config.keep_checkpoints = 3
  # The evaluation protocol. background 'output' scores the model's image as
  # the official evaluation does; 'pasted' puts the composite's background back.
  config.eval = dict(psnr_peak=psnr_peak, ssim="gaussian11", background="output",
                     metrics=eval_metrics)
  # Evaluation sets run every eval_every steps, by name: dataset '' is
  # config.data.name, split '' its eval_split, image_size -1 its image_size
  # (0: full resolution), max_examples -1 every example.
  config.evals = dict(val=dict(dataset="", split="", image_size=-1, max_examples=-1))
  # A tiny model trained for minutes on a CPU: harmonize warns when it loads one.
  config.demo_model = bool(runlocal)
  if runlocal:
    config.data.image_size = 64
    config.data.num_workers = 0
    config.data.max_eval_examples = 16
    config.evals.val.max_examples = 16
    config.batch_size = 8
    config.total_steps = runlocal_steps
    config.log_every = 5
    config.eval_every = runlocal_steps
    config.checkpoint_every = runlocal_steps
    config.image_every = runlocal_steps


def set_demo_loop(config: ml_collections.ConfigDict, total_steps: int, *,
                  log_every: int = 100) -> None:
  """The loop of a config's `demo` recipe, on top of its runlocal variant.

  A demo recipe is the runlocal model and data trained for `total_steps`
  (minutes on a 2-core CPU) so that it harmonizes the sample's unseen test
  photos better than the composites; it is evaluated once, at the end, on the
  whole test split at its training size, and `config.demo_model` makes
  `harmonax.harmonize` say it is a demo.
  """
  config.demo_model = True
  config.total_steps = total_steps
  config.log_every = log_every
  config.eval_every = total_steps
  config.checkpoint_every = total_steps
  config.image_every = total_steps
  config.data.max_eval_examples = -1
  config.evals.val.max_examples = -1
