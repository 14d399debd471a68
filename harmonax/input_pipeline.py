"""Input pipeline: TFDS ArrayRecord datasets read with grain.

See docs/architecture.md ("Input pipeline") for the contract.
"""

import os


def resolve_data_dir(data_dir: str | None) -> str:
  """The TFDS data dir: `data_dir`, else $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
  if data_dir:
    return os.path.expanduser(data_dir)
  env = os.environ.get("TFDS_DATA_DIR")
  if env:
    return os.path.expanduser(env)
  return os.path.expanduser(os.path.join("~", "tensorflow_datasets"))
