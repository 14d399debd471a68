"""torchvision VGG16 `features` (frozen feature extractor for losses).

Parameters sit at the torchvision state dict's paths ('features.0.weight',
...), so a torchvision VGG16 state dict loads with `load_features`. Only the
convolutions up to the deepest requested tap are built.
"""

from absl import logging
from flax import nnx
import jax
import ml_collections

from harmonax import torch_import
from harmonax.models import layers

# (features index, in, out) of VGG16's 13 convolutions; each is followed by a
# ReLU at index + 1, and blocks 1-4 end with a max pool.
CONVS = ((0, 3, 64), (2, 64, 64),
         (5, 64, 128), (7, 128, 128),
         (10, 128, 256), (12, 256, 256), (14, 256, 256),
         (17, 256, 512), (19, 512, 512), (21, 512, 512),
         (24, 512, 512), (26, 512, 512), (28, 512, 512))
# The ReLU after each named conv (index of the conv in `features`).
TAPS = {"relu1_2": 2, "relu2_2": 7, "relu3_3": 14, "relu4_3": 21, "relu5_3": 28}
_POOL_AFTER = (2, 7, 14, 21)


class VGG16Features(nnx.Module):
  """VGG16 features returning the activations at `taps` (in the given order).

  `normalize`: the input is [0, 1] RGB and is ImageNet-normalised here (as
  torchvision expects); False feeds the input unchanged (PCT-Net feeds its
  network's normalised space, as the official code does).
  """

  def __init__(self, taps: tuple[str, ...], rngs: nnx.Rngs, normalize: bool = True):
    if unknown := set(taps) - set(TAPS):
      raise ValueError(f"VGG16 taps {sorted(unknown)}; valid: {list(TAPS)}")
    self.taps = tuple(taps)
    self.normalize = normalize
    last = max(TAPS[t] for t in taps)
    self.convs = tuple(i for i, _, _ in CONVS if i <= last)
    self.features = nnx.Dict({str(i): layers.conv(cin, cout, 3, padding=1, rngs=rngs)
                              for i, cin, cout in CONVS if i <= last})

  def __call__(self, images: jax.Array) -> list[jax.Array]:
    x = layers.imagenet_normalize(images) if self.normalize else images
    found = {}
    wanted = {TAPS[t]: t for t in self.taps}
    for i in self.convs:
      x = nnx.relu(self.features[str(i)](x))
      if i in wanted:
        found[wanted[i]] = x
      if i in _POOL_AFTER and i != self.convs[-1]:
        x = layers.max_pool2x2(x)
    return [found[t] for t in self.taps]


def load_features(net: VGG16Features, path: str) -> None:
  """Loads a torchvision VGG16 state dict file's `features.*` keys that `net`
  has (the deeper ones and the classifier are ignored)."""
  state = torch_import.load_state_dict(path)
  wanted = set(torch_import.expected_shapes(net))
  torch_import.load_into(net, {k: v for k, v in state.items() if k in wanted}, context=path)


def term_on(config: ml_collections.ConfigDict, term: str) -> bool:
  """Whether the VGG loss term config.loss.<term> is on: a weight > 0 and VGG16
  weights in config.init.vgg (nothing is downloaded)."""
  return (config.loss.get(term, 0.0) > 0
          and bool((config.get("init") or {}).get("vgg")))


def log_term_state(family: str, config: ml_collections.ConfigDict, term: str) -> None:
  """Says whether the VGG term is on; warns when its weight asks for it but no
  VGG16 weights were given (the term is then left out)."""
  weight = config.loss.get(term, 0.0)
  if term_on(config, term):
    logging.info("%s: %s VGG16 term ON (x %s, VGG16 from %s).", family, term, weight,
                 config.init.vgg)
  elif weight > 0:
    logging.warning("%s: config.loss.%s=%s but config.init.vgg is empty: the %s term is OFF "
                    "(pass torchvision VGG16 weights with --config.init.vgg=PATH).",
                    family, term, weight, term)


def load_pretrained(family: str, term: str, networks: dict[str, nnx.Module],
                    paths: dict[str, str]) -> None:
  """A family's `load_pretrained` when config.init can only name 'vgg': loads
  the torchvision VGG16 state dict into networks['vgg'] (built when `term` is on).

  Raises:
    ValueError: for any other name, or 'vgg' while the term is off (no network).
  """
  for name, path in paths.items():
    if name != "vgg" or name not in networks:
      raise ValueError(f"{family}: config.init names {name!r}; only 'vgg' (torchvision "
                       f"VGG16, with config.loss.{term} > 0) is loadable")
    load_features(networks["vgg"], path)
