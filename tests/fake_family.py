"""A tiny model family and a synthetic input pipeline, for fast trainer tests.

`register()` makes this module importable as `harmonax.models.fake`, so
`config.model.name = 'fake'` goes through the same lookup as real families.
`install_synthetic_data(patch)` replaces the input pipeline's train iterator
and example count with a deterministic in-memory dataset whose global batches
do not depend on the number of processes (rows are split across processes
in order, as `make_array_from_process_local_data` reassembles them).

The family has a generator with BatchNorm (non-Param state), dropout (uses
the step rng) and optionally a discriminator (`config.model.gan`), whose
generator loss depends on the discriminator.
"""

import functools
import os
import sys
import tempfile

from flax import nnx
import grain.python as grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

NAME = "fake"
INPUTS = ("composite", "mask")
PRESERVES_BACKGROUND = True


class Generator(nnx.Module):
  """conv -> BatchNorm -> relu -> dropout -> conv, predicting a color residual."""

  def __init__(self, width: int, rngs: nnx.Rngs):
    # No bias before BatchNorm: its gradient is pure rounding noise, which Adam
    # would amplify into device-count-dependent updates.
    self.conv1 = nnx.Conv(4, width, (3, 3), use_bias=False, rngs=rngs)
    self.norm = nnx.BatchNorm(width, momentum=0.9, rngs=rngs)
    self.dropout = nnx.Dropout(0.1)
    self.conv2 = nnx.Conv(width, 3, (3, 3), rngs=rngs)

  def __call__(self, composite, mask, rng=None):
    x = jnp.concatenate([composite, mask], axis=-1)
    h = nnx.relu(self.norm(self.conv1(x)))
    h = self.dropout(h, rngs=None if rng is None else nnx.Rngs(dropout=rng))
    out = jnp.clip(composite + 0.1 * jnp.tanh(self.conv2(h)), 0.0, 1.0)
    return out * mask + composite * (1.0 - mask)


class Discriminator(nnx.Module):
  """A strided conv and a linear score per image."""

  def __init__(self, width: int, rngs: nnx.Rngs):
    self.conv = nnx.Conv(4, width, (3, 3), strides=(2, 2), rngs=rngs)
    self.head = nnx.Linear(width, 1, rngs=rngs)

  def __call__(self, image, mask):
    h = nnx.leaky_relu(self.conv(jnp.concatenate([image, mask], -1)), 0.2)
    return self.head(h.mean(axis=(1, 2)))[:, 0]


def create_networks(config: ml_collections.ConfigDict, rngs: nnx.Rngs
                    ) -> dict[str, nnx.Module]:
  """{'generator'} or {'generator', 'discriminator'} when config.model.gan."""
  nets = {"generator": Generator(config.model.width, rngs)}
  if config.model.get("gan", False):
    nets["discriminator"] = Discriminator(config.model.width, rngs)
  return nets


def make_optimizers(config: ml_collections.ConfigDict, steps_per_epoch: int
                    ) -> dict[str, optax.GradientTransformation]:
  """Adam per network; lr decays x0.5 per epoch; optim.nan_from_step poisons the lr."""
  nan_from = config.optim.get("nan_from_step", -1)

  def schedule(count):
    lr = config.optim.lr * 0.5 ** (count // max(steps_per_epoch, 1))
    if nan_from >= 0:
      lr = jnp.where(count >= nan_from, jnp.nan, lr)
    return lr

  names = ["generator"] + (["discriminator"] if config.model.get("gan", False) else [])
  # inject_hyperparams lets the trainer log the learning rate.
  return {name: optax.inject_hyperparams(optax.adam)(learning_rate=schedule)
          for name in names}


def compute_losses(config, networks, batch, rng):
  """MSE on the foreground (+ a non-saturating GAN loss when there is a discriminator)."""
  del config
  batch = {k: v.astype(jnp.float32) / 255.0 if v.dtype == jnp.uint8 else v
           for k, v in batch.items()}
  gen = networks["generator"]
  out = gen(batch["composite"], batch["mask"], rng)
  mse = jnp.mean((out - batch["real"]) ** 2)
  losses = {"generator": mse}
  metrics = {"mse": mse}
  if "discriminator" in networks:
    disc = networks["discriminator"]
    fake_score = disc(out, batch["mask"])
    real_score = disc(batch["real"], batch["mask"])
    g_adv = jnp.mean(nnx.softplus(-fake_score))
    d_loss = jnp.mean(nnx.softplus(fake_score)) + jnp.mean(nnx.softplus(-real_score))
    losses = {"generator": mse + 0.01 * g_adv, "discriminator": d_loss}
    metrics.update(g_adv=g_adv, d_loss=d_loss)
  return losses, metrics, {"harmonized": out}


def predict(config, networks, inputs):
  """Harmonized images (eval mode, no dropout)."""
  del config
  return networks["generator"](inputs["composite"], inputs["mask"])


def get_config(gan: bool = False) -> ml_collections.ConfigDict:
  """A trainer config for this family at 16x16, global batch 8."""
  config = ml_collections.ConfigDict()
  config.model = ml_collections.ConfigDict({"name": NAME, "width": 4, "gan": gan})
  config.data = ml_collections.ConfigDict({
      "name": "synthetic/fake", "data_dir": None, "train_split": "train",
      "eval_split": "test", "image_size": 16, "max_eval_examples": 16,
      "num_examples": 64})
  config.batch_size = 8
  config.num_epochs = 1
  config.total_steps = 4
  config.optim = ml_collections.ConfigDict({"lr": 1e-2})
  config.seed = 0
  config.log_every = 1
  config.eval_every = 0
  config.checkpoint_every = 2
  config.image_every = 2
  config.keep_checkpoints = 3
  config.eval = ml_collections.ConfigDict({"psnr_peak": "real_max", "ssim": "gaussian11",
                                           "background": "output",
                                           "metrics": ("harmonization",)})
  config.evals = ml_collections.ConfigDict(
      {"val": {"dataset": "", "split": "", "image_size": -1, "max_examples": 16}})
  return config


# Trainer tests compile the same tiny programs in several runs and processes; a
# persistent compilation cache turns the repeats into cache hits.
COMPILATION_CACHE = os.path.join(tempfile.gettempdir(), "harmonax_test_jax_cache")


def enable_compilation_cache() -> None:
  """Points JAX at COMPILATION_CACHE unless a cache directory is already set.

  No effect if JAX already compiled something in this process without one.
  """
  if not jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", COMPILATION_CACHE)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


def register() -> None:
  """Makes this module importable as `harmonax.models.fake`."""
  sys.modules[f"harmonax.models.{NAME}"] = sys.modules[__name__]


# ---------------------------------------------------------------------------
# Synthetic data.


def _example(index: int, size: int) -> dict[str, np.ndarray]:
  rng = np.random.default_rng(index)
  real = rng.uniform(0.2, 0.8, (size, size, 3)).astype(np.float32)
  mask = np.zeros((size, size, 1), np.float32)
  y, x = rng.integers(0, size // 2, 2)
  mask[y:y + size // 2, x:x + size // 2] = 1.0
  shift = rng.uniform(-0.2, 0.2, 3).astype(np.float32)
  foreground = np.clip(real + shift, 0, 1)
  composite = np.where(mask > 0, foreground, real)
  # foreground/background: the inputs of compositing families (INPUTS).
  return {"composite": composite, "mask": mask, "real": real,
          "foreground": foreground, "background": real}


def make_train_iterator(data_config, global_batch_size: int, seed: int
                        ) -> grain.DatasetIterator:
  """Shuffled, repeated global batches; this process gets its rows, in order.

  With data_config.num_workers > 0 the batches are made in grain worker
  processes set up as the real pipeline's (input_pipeline.prefetch_in_workers).
  """
  from harmonax import input_pipeline  # pylint: disable=g-import-not-at-top
  count, index = jax.process_count(), jax.process_index()
  local = global_batch_size // count
  size = data_config.image_size
  ds = (grain.MapDataset.range(data_config.num_examples)
        .shuffle(seed=seed).repeat()
        .batch(global_batch_size)
        .map(lambda ids: ids[index * local:(index + 1) * local])
        .map(lambda ids: _uint8_batch([_example(int(i), size) for i in ids])))
  # A short read-ahead, as the real pipeline's: grain's default (16 threads,
  # 500 batches ahead of an endless dataset) made batches that nobody read, on
  # the cores that compile the update step.
  ds = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
  return iter(input_pipeline.prefetch_in_workers(ds, data_config.get("num_workers", 0)))


def _uint8_batch(examples: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """uint8, as the real pipeline's batches (converted on the device)."""
  return {k: np.round(255 * np.stack([e[k] for e in examples])).astype(np.uint8)
          for k in examples[0]}


def num_examples(data_config, split: str) -> int:
  """The synthetic train split size (config.data.num_examples)."""
  del split
  return data_config.num_examples


def fake_evaluate_sets(config, networks):
  """{'val': mean MSE of the family's `predict`} over 16 synthetic examples."""
  from harmonax import models  # pylint: disable=g-import-not-at-top
  family = models.get_family(config.model.name)
  batch = [_example(10_000 + i, config.data.image_size) for i in range(16)]
  stack = {k: jnp.asarray(np.stack([b[k] for b in batch])) for k in batch[0]}
  out = nnx.jit(functools.partial(family.predict, config))(networks, stack)
  return {"val": {"mse": float(jnp.mean((out - stack["real"]) ** 2))}}


def install_synthetic_data(patch) -> None:
  """Points the trainer's input pipeline (and evaluation) at synthetic data.

  Args:
    patch: a `setattr(obj, name, value)`-like callable, e.g. pytest's
      `monkeypatch.setattr`, or plain `setattr` in a subprocess.
  """
  from harmonax import evaluation  # pylint: disable=g-import-not-at-top
  from harmonax import input_pipeline  # pylint: disable=g-import-not-at-top
  patch(input_pipeline, "make_train_iterator", make_train_iterator)
  patch(input_pipeline, "num_examples", num_examples)
  patch(evaluation, "evaluate_sets", fake_evaluate_sets)


def run_cli(module: str, args: list[str], register_fake: bool = True,
            timeout: float = 600, prelude: str = ""):
  """Runs `python -m harmonax.<module> ARGS` in a subprocess, as a user would
  (absl flags of different CLIs cannot share one process), with this fake
  family importable when register_fake and `prelude` (Python code) run first.
  Returns the completed process."""
  import subprocess  # pylint: disable=g-import-not-at-top
  code = ("import runpy, sys, fake_family\n"
          + ("fake_family.register()\n" if register_fake else "") + prelude + "\n"
          f"sys.argv = ['{module}'] + sys.argv[1:]\n"
          f"runpy.run_module('harmonax.{module}', run_name='__main__', alter_sys=True)\n")
  tests_dir = os.path.dirname(os.path.abspath(__file__))
  root = os.path.dirname(tests_dir)
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join([tests_dir, root, env.get("PYTHONPATH", "")])
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                        env=env, timeout=timeout, cwd=root)
