r"""Easy-to-hard self-taught rounds of Deep Image Compositing (Zhang et al., WACV 2021),
as a library (the command line is harmonax.self_taught).

A model trained on the easy composites (ground-truth masks) writes harder
training triplets for the next round; the next round trains on them through
the normal trainer:

  python -m harmonax.train --config=configs/deep_compositing.py:runlocal --workdir=/tmp/dic_r0
  python -m harmonax.self_taught --workdir=/tmp/dic_r0 --output=/tmp/dic_r1_data
  python -m harmonax.train \
      --config=configs/deep_compositing.py:runlocal,self_taught=/tmp/dic_r1_data \
      --workdir=/tmp/dic_r1

The paper states the idea, not the recipe, so what "harder" means is an
assumption, chosen with `harder` (ROUND_FILE records it):
  'mask'        the input mask is the previous model's refined mask (soft,
                0..255), predicted from the foreground photo: the fusion network
                must composite well with the masks it will get at test time;
  'foreground'  the foreground photo is the previous model's composite (made
                with the triplet's input mask): the network repairs its own
                output.
The target (`real`), `alpha`, `background`, `name` and `category` are the
source triplet's bytes, unchanged; the test split is copied unchanged, so a
round is scored on the same held-back triplets as round 0. Every triplet is
run at its own size, padded (edge) to a multiple of `bucket` so that few shapes
compile. Rounds chain: a model trained on round k writes round k + 1 from the
original triplets (the ones round k was made from).
"""

import json
import os
import sys
from typing import Any, Iterator

from absl import logging
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
import tqdm

from data_builders.compositing_triplets import compositing_triplets_dataset_builder as triplets
from data_builders.harmonization_composites import compose
from harmonax import checkpoint
from harmonax import inference
from harmonax import input_pipeline
from harmonax.models import deep_compositing

# The TFDS name of a round in its output directory (a TFDS data dir).
DATASET = "compositing_self_taught/harder"
ROUND_FILE = "self_taught.json"
HARDER = ("mask", "foreground")
_SPLITS = ("train", "test")


class RoundBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes one round's triplets (features of compositing_triplets) as ArrayRecord."""

  name = DATASET.split("/", maxsplit=1)[0]
  VERSION = tfds.core.Version("1.0.0")
  BUILDER_CONFIGS = [tfds.core.BuilderConfig(name=DATASET.split("/")[1])]

  def __init__(self, *, splits: dict[str, Iterator[tuple[str, dict]]], description: str,
               **kwargs):
    self._splits, self._description = splits, description
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # In the source's order (not by key hash): a split's first N examples (a
    # runlocal evaluation's 16) are the source's first N.
    return tfds.core.DatasetInfo(builder=self, description=self._description,
                                 features=triplets.features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(examples) for split, examples in self._splits.items()}

  def _generate_examples(self, examples):
    yield from examples


def read_round(directory: str) -> dict[str, Any]:
  """The ROUND_FILE of a round's output directory.

  Raises:
    FileNotFoundError: the directory holds no round written by this module.
  """
  path = os.path.join(os.path.expanduser(directory), ROUND_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{directory} is not a self-taught round: no {ROUND_FILE} "
                            "(write one with python -m harmonax.self_taught)")
  with open(path) as f:
    return json.load(f)


def source_data(config: ml_collections.ConfigDict) -> tuple[str, str | None, int]:
  """(dataset, data dir, round) of the original triplets behind config.data, and
  the round config.data is (0: the original triplets themselves)."""
  if config.data.name == DATASET and config.data.data_dir:
    info = read_round(config.data.data_dir)
    return info["source"]["name"], info["source"]["data_dir"], int(info["round"])
  return config.data.name, config.data.data_dir, 0


def _decode(data: bytes) -> np.ndarray:
  """uint8 HxWxC of PNG/JPEG bytes (a 1-channel image as HxWx1)."""
  image = np.asarray(input_pipeline._open(data, "triplet"))  # pylint: disable=protected-access
  return image[..., None] if image.ndim == 2 else image[..., :3]


def _padded(image: np.ndarray, bucket: int) -> np.ndarray:
  """[H,W,C] edge-padded at the bottom/right to multiples of `bucket`."""
  h, w = image.shape[:2]
  return np.pad(image, ((0, -h % bucket), (0, -w % bucket), (0, 0)), mode="edge")


def _forward(config: ml_collections.ConfigDict, harder: tuple[str, ...]):
  """Jitted (networks, fg, bg, mask) -> (input mask, foreground) [1,H,W,*] in [0, 1]."""
  binarize = config.model.get("assumption_binarize_train_mask", False)

  def forward(networks, fg, bg, mask):
    if "mask" in harder:
      mask = jax.nn.sigmoid(deep_compositing.mask_logits(networks, fg)[1])
    if "foreground" in harder:
      # Composited as the fusion network trained: binarized where it trained so.
      used = (mask >= 0.5).astype(jnp.float32) if binarize else mask
      fg = deep_compositing.compose_with_mask(config, networks, fg, bg, used)
    return mask, fg

  return inference.jit_networks(forward)  # Split once, not at every image (nnx.jit).


def harder_examples(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
                    source, harder: tuple[str, ...], bucket: int = 64
                    ) -> Iterator[tuple[str, dict[str, Any]]]:
  """(key, example) of each source triplet (encoded images) with harder inputs."""
  forward = _forward(config, harder)
  for i in range(len(source)):
    example = source[i]
    fg, bg, mask = (_decode(example[k]) for k in ("foreground", "background", "mask"))
    h, w = mask.shape[:2]
    inputs = [jnp.asarray(_padded(x, bucket)[None].astype(np.float32) / 255.0)
              for x in (fg, bg, mask)]
    new_mask, new_fg = (np.asarray(x)[0, :h, :w] for x in forward(networks, *inputs))
    out = dict(example)
    if "mask" in harder:
      out["mask"] = compose.encode_png(np.round(new_mask * 255.0).astype(np.uint8))
    if "foreground" in harder:
      out["foreground"] = compose.encode_png(np.round(new_fg * 255.0).astype(np.uint8))
    yield _key(example, i), out


def _key(example: dict[str, Any], index: int) -> str:
  name = example.get("name", b"")
  name = name.decode("utf-8") if isinstance(name, bytes) else str(name)
  return f"{index:06d}/{name}"


def _copied(source) -> Iterator[tuple[str, dict[str, Any]]]:
  for i in range(len(source)):
    yield _key(source[i], i), dict(source[i])


def _progress(examples, total: int, what: str):
  with tqdm.tqdm(total=total, desc=what, unit=" triplets", mininterval=1.0,
                 file=sys.stderr) as bar:
    for item in examples:
      bar.update(1)
      yield item


def write_round(workdir: str, output: str, harder: tuple[str, ...] = ("mask",),
                bucket: int = 64, max_examples: int = -1) -> dict[str, Any]:
  """Writes the next round's triplets from the model in `workdir` into `output`.

  `output` becomes a TFDS data dir holding DATASET (train: harder inputs; test:
  the source's test split, copied) and ROUND_FILE. Returns ROUND_FILE's content.

  Raises:
    FileNotFoundError: no workdir or no checkpoint in it.
    ValueError: not a deep_compositing 'network' model, an unknown or empty
      `harder`, a non-empty output, or source data without triplets.
  """
  workdir, output = os.path.expanduser(workdir), os.path.expanduser(output)
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"--workdir {workdir} does not exist")
  if not harder or set(harder) - set(HARDER):
    raise ValueError(f"harder={list(harder)}: name one or more of {list(HARDER)}")
  config, networks = checkpoint.load_networks(workdir)
  if config.model.name != "deep_compositing" or config.model.variant != "network":
    raise ValueError(f"{workdir} holds a {config.model.name} model (variant "
                     f"{config.model.get('variant')!r}); self-taught rounds need a "
                     "deep_compositing 'network' model (its segmentation and fusion networks)")
  if os.path.isdir(output) and os.listdir(output):
    raise ValueError(f"--output {output} is not empty: give a new directory per round")
  name, data_dir, previous = source_data(config)
  builder = input_pipeline.get_builder(name, data_dir)
  if missing := {"foreground", "background", "mask", "real"} - set(builder.info.features):
    raise ValueError(f"{name} has no {sorted(missing)}: self-taught rounds read "
                     "compositing triplets (compositing_triplets/*)")
  skip = {k: tfds.decode.SkipDecoding() for k, f in builder.info.features.items()
          if isinstance(f, tfds.features.Image)}
  sources = {s: builder.as_data_source(split=s, decoders=skip) for s in _SPLITS}
  train = sources["train"]
  if max_examples > 0:
    train = [train[i] for i in range(min(max_examples, len(train)))]
  info = {"round": previous + 1, "workdir": os.path.abspath(workdir),
          "harder": list(harder), "bucket": bucket, "runlocal": bool(config.demo_model),
          "source": {"name": name, "data_dir": data_dir},
          "examples": {"train": len(train), "test": len(sources["test"])}}
  logging.info("Self-taught round %d: %s's model makes %d harder %s triplets of %s -> %s",
               info["round"], workdir, len(train), "+".join(harder), name, output)
  splits = {"train": _progress(harder_examples(config, networks, train, harder, bucket),
                               len(train), "Harder train"),
            "test": _copied(sources["test"])}
  round_builder = RoundBuilder(
      splits=splits, data_dir=output, file_format="array_record",
      description=f"Self-taught round {info['round']}: {json.dumps(info)}")
  shown = tfds.core.utils.tqdm_utils._active  # pylint: disable=protected-access
  tfds.display_progress_bar(False)  # Ours counts the triplets (TFDS' would be a second bar).
  try:
    round_builder.download_and_prepare()
  finally:
    tfds.display_progress_bar(shown)
  with open(os.path.join(output, ROUND_FILE), "w") as f:
    json.dump(info, f, indent=1)
  return info
