"""harmonax: image harmonization in JAX/Flax.

`harmonax.load(DIR)` returns a callable model (harmonax.api); JAX and the
model code are imported on first use, so `import harmonax` stays light.
"""

__version__ = "0.1.0"


def load(directory, dtype="float32"):
  """A model from a converted checkpoint or a training workdir: see harmonax.api.load."""
  from harmonax import api  # pylint: disable=g-import-not-at-top
  return api.load(directory, dtype=dtype)
