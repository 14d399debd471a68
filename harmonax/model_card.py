"""Model cards: README.md with YAML front matter next to every checkpoint.

`checkpoint.save_config` (the trainer) and `checkpoint.save_networks`
(`harmonax.convert`) write one; `harmonax.load` reads it into `model.info`;
`harmonax.evaluate` may add a small `metrics` block. The card says what the
weights are (model, variant, parameters), where they came from (the official
repository and commit with the SHA-256 of every imported file, or harmonax
training) and under which license the upstream released them.
"""

import datetime
import hashlib
import os
from typing import Any

from etils import epath
import ml_collections
import yaml  # PyYAML, a dependency of flax.

CARD_FILE = "README.md"
CARD_VERSION = 1

# Official code and weights of each family (variant) and their licenses, as the
# repositories state them (LICENSE file or README's license section).
OFFICIAL: dict[str, dict[str, str]] = {
    "dih": {"repository": "https://github.com/SamsungLabs/image_harmonization",
            "license": "MPL-2.0"},
    "dovenet": {"repository": "https://github.com/bcmi/Image-Harmonization-Dataset-iHarmony4",
                "license": "MIT"},
    # The repository has no LICENSE file and its README states none.
    "bargainnet": {"repository": "https://github.com/bcmi/BargainNet-Image-Harmonization",
                   "license": "unspecified (no license in the repository: all rights reserved)"},
    # README: "released under the Creative Commons Attribution NonCommercial
    # ShareAlike 4.0 license": the weights are for non-commercial use only.
    "harmonizer": {"repository": "https://github.com/ZHKKKe/Harmonizer",
                   "license": "CC-BY-NC-SA-4.0"},
    # LICENSE: MPL-2.0; PCTNet_CNN.pth and PCTNet_ViT.pth are in the repository.
    "pctnet": {"repository": "https://github.com/rakutentech/PCT-Net-Image-Harmonization",
               "license": "MPL-2.0"},
    # No LICENSE file, and the README states none (its issam256.pth is the
    # dih family's MPL-2.0 release).
    "cdtnet": {"repository": "https://github.com/bcmi/CDTNet-High-Resolution-Image-Harmonization",
               "license": "unspecified (no license in the repository: all rights reserved)"},
}
TRAINED_LICENSE = "set by whoever trained it (harmonax code: Apache-2.0; check the data's terms)"


def model_name(config: ml_collections.ConfigDict) -> str:
  """The display name (model cards, export file names, messages).

  The dih family's variants are models of their own ('idih', 'issam'); other
  variants follow their family ('pctnet_vit', 'deep_compositing_alpha'); a
  backbone comes first ('hrnet18_idih').
  """
  model = config.model
  variant = model.get("variant")
  if model.name == "dih" and variant:
    name = variant
  else:
    name = f"{model.name}_{variant}" if variant else model.name
  if backbone := model.get("backbone"):
    name = f"{backbone.name}{backbone.get('width', '')}_{name}"
  return name


def sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file, read in chunks."""
  digest = hashlib.sha256()
  with epath.Path(path).open("rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  return digest.hexdigest()


def parameter_counts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """Trainable parameters per network, from abstract networks (no memory, no compute)."""
  from flax import nnx  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from harmonax import checkpoint  # pylint: disable=g-import-not-at-top
  networks = checkpoint.abstract_networks(config)
  return {name: sum(int(np.prod(v.shape))
                    for _, v in nnx.to_flat_state(nnx.state(net, nnx.Param)))
          for name, net in networks.items()}


def make_card(config: ml_collections.ConfigDict, *, config_name: str | None = None,
              source_files: dict[str, str] | None = None, repository: str | None = None,
              commit: str | None = None) -> dict[str, Any]:
  """The card's fields. `source_files` ({role: path}) marks an import of official
  weights: their SHA-256 are recorded with the repository (default: the family's
  official one) and its license."""
  from harmonax import __version__  # pylint: disable=g-import-not-at-top
  params = parameter_counts(config)
  card: dict[str, Any] = {
      "harmonax_card": CARD_VERSION,
      "model": model_name(config),
      "family": config.model.name,
      "variant": config.model.get("variant"),
      "config_name": config_name,
      "parameters": sum(params.values()),
      "networks": params,
      "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "harmonax_version": __version__,
  }
  official = OFFICIAL.get(config.model.name, {})
  if source_files is not None:
    card["source"] = {
        "kind": "imported official weights",
        "repository": repository or official.get("repository", "unknown"),
        "commit": commit or "unknown",
        "files": {role: {"name": os.path.basename(path), "sha256": sha256(path)}
                  for role, path in sorted(source_files.items())},
    }
    card["license"] = official.get("license", "unknown: check the source repository")
  else:
    card["source"] = {"kind": "trained with harmonax",
                      "official_code": official.get("repository")}
    card["license"] = TRAINED_LICENSE
  return {k: v for k, v in card.items() if v is not None}


def _body(card: dict[str, Any]) -> str:
  source = card.get("source", {})
  lines = [f"# {card['model']} (harmonax `{card['family']}` family)", "",
           f"{card['parameters']:,} parameters. Source: {source.get('kind', 'unknown')}"
           + (f" from {source['repository']} at commit {source.get('commit')}"
              if "repository" in source else "") + ".", "",
           f"License of the weights: **{card.get('license', 'unknown')}**.", "",
           "```python", "import harmonax",
           "model = harmonax.load(\"THIS_DIRECTORY\")",
           "out = model(composite, mask)  # numpy arrays or PIL images", "```", ""]
  return "\n".join(lines)


def write(directory: str | os.PathLike, card: dict[str, Any]) -> None:
  """Writes `directory/README.md`: the card as YAML front matter and a short body."""
  text = "---\n" + yaml.safe_dump(card, sort_keys=False) + "---\n\n" + _body(card)
  (epath.Path(directory) / CARD_FILE).write_text(text)


def read(directory: str | os.PathLike) -> dict[str, Any] | None:
  """The front matter of `directory/README.md`, or None without a card."""
  path = epath.Path(directory) / CARD_FILE
  if not path.exists():
    return None
  text = path.read_text()
  if not text.startswith("---\n"):
    return None
  front, sep, _ = text[4:].partition("\n---\n")
  if not sep:
    return None
  card = yaml.safe_load(front)
  return card if isinstance(card, dict) and "harmonax_card" in card else None


def update_metrics(directory: str | os.PathLike, name: str, metrics: dict[str, float]) -> None:
  """Sets `metrics[name]` (e.g. 'iharmony4/all test 256') in an existing card,
  floats rounded to 4 digits, integers (a training step) as they are; no
  card, no change."""
  card = read(directory)
  if card is None:
    return
  card.setdefault("metrics", {})[name] = {
      k: v if isinstance(v, int) else round(float(v), 4) for k, v in metrics.items()}
  write(directory, card)
