"""torchvision VGG16 `features` (frozen feature extractor for losses).

Parameters sit at the torchvision state dict's paths ('features.0.weight',
...), so a torchvision VGG16 state dict loads with `load_features`. Only the
convolutions up to the deepest requested tap are built.
"""

from flax import nnx
import jax

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
