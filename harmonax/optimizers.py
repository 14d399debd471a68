"""Optimizers shared by model families, and the trainer's parameter averaging."""

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from harmonax import variables

PyTree = Any


def ema_decay_of(config: ml_collections.ConfigDict) -> float:
  """config.optim.ema_decay, 0 (no averaging) when absent."""
  return float((config.get("optim") or {}).get("ema_decay", 0.0) or 0.0)


def step_decay_adam(optim: ml_collections.ConfigDict,
                    steps_per_epoch: int) -> optax.GradientTransformation:
  """Adam(optim.lr, b1, b2, eps) with the rate multiplied by optim.decay_factor at
  each of optim.decay_epochs (PyTorch's MultiStepLR), converted to steps.

  Built with `optax.inject_hyperparams` so the trainer can log the current rate.
  """
  boundaries: dict[int, float] = {}
  for epoch in optim.decay_epochs:
    step = int(round(epoch * steps_per_epoch))
    # Two decays landing on one step (tiny epochs) must both apply.
    boundaries[step] = boundaries.get(step, 1.0) * optim.decay_factor
  schedule = optax.piecewise_constant_schedule(optim.lr, boundaries)
  return optax.inject_hyperparams(optax.adam)(
      learning_rate=schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)


def ema_update(average: PyTree, new: PyTree, decay: float, count: jax.Array) -> PyTree:
  """Polyak averaging: `average` moved toward `new`, the state after `count` updates.

  Each floating leaf becomes a + w (x - a) with w = max(1 - decay, 1 / (count + 1)):
  while 1 / (count + 1) is larger (the first 1 / (1 - decay) updates) the average
  is the plain mean of the initial state and every update so far, so the random
  initialisation fades as fast as it can (as layers.BatchNorm warms up); then an
  exponential moving average of horizon 1 / (1 - decay) updates. Other leaves
  (counters) take the new value.
  """
  weight = variables.averaging_rate(decay, count)

  def update(a, x):
    if not jnp.issubdtype(x.dtype, jnp.inexact):
      return x
    return (a + weight.astype(a.dtype) * (x - a)).astype(a.dtype)

  return jax.tree.map(update, average, new)
