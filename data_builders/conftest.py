"""Test setup shared by every test: 8 fake CPU devices and parsed absl flags."""

import os

# Must happen before jax is imported anywhere: the tests exercise data
# parallelism over a ('data',) mesh of 8 CPU devices.
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402

# Grain workers and TFDS read absl flags; under pytest nobody parses them.
if not flags.FLAGS.is_parsed():
  flags.FLAGS.mark_as_parsed()
