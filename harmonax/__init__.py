"""harmonax: image harmonization in JAX/Flax."""

__version__ = "0.1.0"

# Before any JAX backend starts: oneDNN on CPU where this jaxlib supports it.
from harmonax import xla_setup as _xla_setup  # noqa: E402,F401  pylint: disable=g-import-not-at-top
