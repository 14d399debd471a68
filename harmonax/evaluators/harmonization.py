"""The iHarmony4 metrics of the model's output and of the input composite.

MSE, PSNR, fMSE, fPSNR and SSIM per image on 0..255 pixels (harmonax.metrics,
with the protocol's PSNR peak and SSIM window); the same code scores the
unmodified composite as the identity row ('composite_' columns), where the
family has a composite input.
"""

from flax import nnx
import jax
import ml_collections

from harmonax import metrics

COLUMNS = metrics.METRIC_NAMES
COMPOSITE_PREFIX = "composite_"


def score(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
          batch: dict[str, jax.Array], pred: jax.Array, protocol) -> dict[str, jax.Array]:
  """{'mse', 'psnr', 'fmse', 'fpsnr', 'ssim'} and their 'composite_' twins, [B] each."""
  del config, networks
  real, mask = batch["real"] * 255.0, batch["mask"]
  valid = batch.get("valid_pixels")
  scores = metrics.compute_all(pred * 255.0, real, mask, protocol.psnr_peak, protocol.ssim,
                               valid=valid)
  if "composite" in batch:
    identity = metrics.compute_all(batch["composite"] * 255.0, real, mask,
                                   protocol.psnr_peak, protocol.ssim, valid=valid)
    scores.update({COMPOSITE_PREFIX + k: v for k, v in identity.items()})
  return scores
