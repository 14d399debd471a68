"""Test images shared by the in-step recoloring tests."""

import jax
import jax.numpy as jnp
import numpy as np


def smooth_scene(b: int, size: int, seed: int) -> jax.Array:
  """[b, size, size, 3] images whose colors stay well inside [0, 1] after a
  mean/std transfer: one random color per image plus a gentle wave."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:size, 0:size] / size
  base = rng.uniform(0.35, 0.65, (b, 1, 1, 3))
  wave = 0.08 * np.sin(2 * np.pi * (xx[None, ..., None] * rng.uniform(1, 3, (b, 1, 1, 3))
                                    + yy[None, ..., None]))
  return jnp.asarray(base + wave, jnp.float32)
