"""Optimizers shared by model families."""

import ml_collections
import optax


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
