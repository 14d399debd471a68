"""BargainNet's harmony score of the output and of the composite.

exp(-0.04212 ||E(image, fg) - E(image, bg)||) with the family's domain code
extractor ('encoder'), at 256x256, as the official harmony predictor and
libcom compute it: 1 means foreground and background share one domain.
"""

from flax import nnx
import jax
import ml_collections

from harmonax.models import bargainnet


def score(config: ml_collections.ConfigDict, networks: dict[str, nnx.Module],
          batch: dict[str, jax.Array], pred: jax.Array, protocol) -> dict[str, jax.Array]:
  """{'harmony_score', 'harmony_score_composite'} [B]."""
  del config, protocol
  if "encoder" not in networks:
    raise ValueError("The harmony_score evaluator needs a BargainNet domain encoder "
                     f"(network 'encoder'); this model has {sorted(networks)}")
  enc, mask = networks["encoder"], batch["mask"]
  scores = {"harmony_score": bargainnet.harmony_score(enc, pred, mask)}
  if "composite" in batch:
    scores["harmony_score_composite"] = bargainnet.harmony_score(enc, batch["composite"], mask)
  return scores
