"""Training composites made in the step from real photos (the demo recipes).

A small dataset's fixed composites recolor each photo the same few ways, and a
network trained on them learns one correction per photo instead of reading
the foreground (README, Quick start). These functions make new composites in
the training step instead, from the batch's `real` images and masks:

- `transfer_composites`: Reinhard transfer in l-alpha-beta (the dataset
  builders' `color_transfer`, in jax) of each row's foreground toward another
  row's foreground or whole image, so that the correction a row needs depends
  on a random reference, not on which photo it is;
- `recolor_rows`: that for a random `transfer_fraction` of the rows;
- `identity_rows`: a random `identity_fraction` of the rows that keep their
  real foreground (a foreground that fits needs no correction);
- `training_composites`: both, as a family's `compute_losses` applies them.

Both fractions live in `config.loss` and default to 0 (off): the papers'
recipes never call these.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from data_builders.harmonization_composites import color_transfer
from harmonax import filters

# The dataset builders' Reinhard l-alpha-beta transform, in float32 for the step.
_RGB_TO_LMS = color_transfer.RGB_TO_LMS.astype(np.float32)
_LOGLMS_TO_LAB = color_transfer.LOGLMS_TO_LAB.astype(np.float32)
_LMS_TO_RGB = np.linalg.inv(_RGB_TO_LMS)
_LAB_TO_LOGLMS = np.linalg.inv(_LOGLMS_TO_LAB)


def rgb_to_lab(rgb: jax.Array) -> jax.Array:
  """[0, 1] RGB -> Reinhard's l-alpha-beta (color_transfer.rgb_to_lab in jax)."""
  lms = jnp.maximum(rgb @ _RGB_TO_LMS.T, color_transfer.LMS_FLOOR)
  return jnp.log10(lms) @ _LOGLMS_TO_LAB.T


def lab_to_rgb(lab: jax.Array) -> jax.Array:
  return (10.0 ** (lab @ _LAB_TO_LOGLMS.T)) @ _LMS_TO_RGB.T


def transfer_composites(real: jax.Array, mask: jax.Array, key: jax.Array,
                        min_strength: float = 0.5) -> jax.Array:
  """Composites made in the step, as the dataset's Reinhard ones: each row's
  masked foreground takes the l-alpha-beta mean and std of another row's
  foreground (or, with p 0.5, of that row's whole image), moved by a random
  strength in [min_strength, 1]; std ratios are clipped to [1/4, 4]. The
  reference is another row of the batch (every row shifted by one random
  offset), so the correction a row needs depends on its foreground, not on
  which photo it is. Background pixels are `real`'s."""
  b = real.shape[0]
  k_shift, k_whole, k_strength = jax.random.split(key, 3)
  shift = jax.random.randint(k_shift, (), 1, max(b, 2))
  ref, ref_mask = jnp.roll(real, shift, axis=0), jnp.roll(mask, shift, axis=0)
  whole = jax.random.bernoulli(k_whole, 0.5, (b, 1, 1, 1))
  ref_mask = jnp.where(whole, jnp.ones_like(ref_mask), ref_mask)

  def stats(lab, weights):
    area = jnp.sum(weights, axis=(1, 2), keepdims=True) + 1e-6
    mean = jnp.sum(lab * weights, axis=(1, 2), keepdims=True) / area
    var = jnp.sum(jnp.square(lab - mean) * weights, axis=(1, 2), keepdims=True) / area
    return mean, jnp.sqrt(var + 1e-8)

  lab = rgb_to_lab(real)
  mean, std = stats(lab, mask)
  ref_mean, ref_std = stats(rgb_to_lab(ref), ref_mask)
  moved = (lab - mean) * jnp.clip(ref_std / std, 0.25, 4.0) + ref_mean
  strength = jax.random.uniform(k_strength, (b, 1, 1, 1), minval=min_strength, maxval=1.0)
  recolored = jnp.clip(lab_to_rgb(lab + strength * (moved - lab)), 0, 1)
  return filters.blend(recolored, mask, real)


def recolor_rows(cl: ml_collections.ConfigDict, composite: jax.Array, real: jax.Array,
                 mask: jax.Array, rng: jax.Array) -> jax.Array:
  """`composite` with a random `cl.transfer_fraction` of its rows replaced by
  `transfer_composites` of their real images (all of them at 1; none at 0)."""
  fraction = cl.get("transfer_fraction", 0.0)
  if fraction <= 0:
    return composite
  k_made, k_use = jax.random.split(jax.random.fold_in(rng, 11))
  use = jax.random.bernoulli(k_use, fraction, (composite.shape[0], 1, 1, 1))
  return jnp.where(use, transfer_composites(real, mask, k_made), composite)


def identity_rows(cl: ml_collections.ConfigDict, batch_size: int, rng: jax.Array
                  ) -> jax.Array | None:
  """[B, 1, 1, 1] flags of the rows that keep their real foreground (a random
  `cl.identity_fraction` of them), or None when the fraction is 0."""
  fraction = cl.get("identity_fraction", 0.0)
  if fraction <= 0:
    return None
  return jax.random.bernoulli(jax.random.fold_in(rng, 13), fraction, (batch_size, 1, 1, 1))


def training_composites(cl: ml_collections.ConfigDict, composite: jax.Array,
                        real: jax.Array, mask: jax.Array, rng: jax.Array
                        ) -> tuple[jax.Array, jax.Array | None]:
  """A training batch's input composites: `recolor_rows`, then the real image in
  the `identity_rows`. Returns (composite, identity flags or None)."""
  composite = recolor_rows(cl, composite, real, mask, rng)
  same = identity_rows(cl, composite.shape[0], rng)
  if same is not None:
    composite = jnp.where(same, real, composite)
  return composite, same
