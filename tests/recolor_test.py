"""In-step recoloring of training composites (harmonax.recolor), and the
families that use it."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from configs import issam as issam_config
import scenes
from harmonax import models
from harmonax import recolor
from harmonax import variables
from harmonax.models import dih


def test_lab_conversion_matches_the_dataset_builders():
  from data_builders.harmonization_composites import color_transfer  # pylint: disable=g-import-not-at-top
  rgb = np.random.default_rng(0).uniform(0.02, 1.0, (5, 7, 3))
  np.testing.assert_allclose(recolor.rgb_to_lab(jnp.asarray(rgb, jnp.float32)),
                             color_transfer.rgb_to_lab(rgb), atol=2e-6)
  np.testing.assert_allclose(recolor.lab_to_rgb(recolor.rgb_to_lab(jnp.asarray(
      rgb, jnp.float32))), rgb, atol=5e-6)


def test_transfer_composites_give_foregrounds_another_rows_statistics():
  size = 32
  real = scenes.smooth_scene(2, size, seed=1)
  real = real.at[0].set(jnp.mean(real[0], axis=-1, keepdims=True))  # Row 0 gray.
  mask = np.zeros((2, size, size, 1), np.float32)
  mask[0, 8:24, 4:20] = 1.0
  mask[1, 2:14, 10:30] = 1.0
  lab_stats = lambda lab, m: (np.sum(lab * m, (0, 1)) / m.sum(),)
  for seed in range(4):
    # With 2 rows each row's reference is the other one; strength 1: the whole way.
    made = np.asarray(recolor.transfer_composites(real, jnp.asarray(mask),
                                                     jax.random.key(seed), min_strength=1.0))
    np.testing.assert_array_equal(made[mask[..., 0] == 0], np.asarray(real)[mask[..., 0] == 0])
    lab = np.asarray(recolor.rgb_to_lab(jnp.asarray(made)))
    real_lab = np.asarray(recolor.rgb_to_lab(real))
    for i, ref in ((0, 1), (1, 0)):
      (got,) = lab_stats(lab[i], mask[i])
      (ref_fg,) = lab_stats(real_lab[ref], mask[ref])
      (ref_whole,) = lab_stats(real_lab[ref], np.ones_like(mask[ref]))
      # The new foreground mean is the reference's, of its foreground or its whole image.
      assert min(np.abs(got - ref_fg).max(), np.abs(got - ref_whole).max()) < 1e-3, (seed, i)
    # The gray row's foreground took the colored row's chroma (gray is within
    # 1e-3 of alpha = beta = 0: Reinhard's LMS rows sum to 0.9996-1.0002).
    assert np.abs(real_lab[0][mask[0, ..., 0] > 0, 1:]).mean() < 1e-3
    assert np.abs(lab[0][mask[0, ..., 0] > 0, 1:]).mean() > 0.01


def test_recolor_and_identity_rows_follow_their_fractions():
  real = scenes.smooth_scene(6, 16, seed=3)
  composite = jnp.zeros_like(real)
  mask = jnp.ones((6, 16, 16, 1))
  rng = jax.random.key(0)
  off = ml_collections.ConfigDict(dict(transfer_fraction=0.0, identity_fraction=0.0))
  assert recolor.recolor_rows(off, composite, real, mask, rng) is composite
  assert recolor.identity_rows(off, 6, rng) is None
  every = ml_collections.ConfigDict(dict(transfer_fraction=1.0, identity_fraction=1.0))
  made = recolor.recolor_rows(every, composite, real, mask, rng)
  assert float(jnp.min(jnp.abs(made).sum(axis=(1, 2, 3)))) > 0  # No row kept its composite.
  assert bool(jnp.all(recolor.identity_rows(every, 6, rng)))
  half = ml_collections.ConfigDict(dict(transfer_fraction=0.5))
  counts = [int(jnp.sum(jnp.any(recolor.recolor_rows(half, composite, real, mask,
                                                         jax.random.key(s)) != 0,
                                    axis=(1, 2, 3)))) for s in range(20)]
  assert 40 < sum(counts) < 80, counts  # Of 120 rows.


def test_issam_losses_train_on_recolored_and_real_foregrounds():
  config = issam_config.get_config("runlocal")
  nets = dih.create_networks(config, variables.rngs(0))
  models.set_modes(nets, ["generator"])
  real = scenes.smooth_scene(4, 64, seed=4)
  mask = np.zeros((4, 64, 64, 1), np.float32)
  mask[:, 16:48, 8:40] = 1.0
  batch = {"real": real, "mask": jnp.asarray(mask), "composite": real * 0.5}
  other = dict(batch, composite=real * 0.8)
  key = jax.random.key(1)

  def loss(cl, b):
    c = ml_collections.ConfigDict(config.to_dict())
    c.loss.update(cl)
    return float(dih.compute_losses(ml_collections.FrozenConfigDict(c), nets, b, key)[0]["generator"])

  # Off (the paper's recipe): the dataset's composite is the input.
  assert loss({}, batch) != loss({}, other)
  # Every row recolored in the step: the dataset's composite is not used.
  assert loss(dict(transfer_fraction=1.0), batch) == loss(dict(transfer_fraction=1.0), other)
  # Every row real: the input is the real image.
  assert (loss(dict(identity_fraction=1.0), batch)
          == loss({}, dict(batch, composite=real)))
