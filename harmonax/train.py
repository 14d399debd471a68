r"""Trains a harmonization model from a config.

  python -m harmonax.train --config=configs/issam.py:runlocal --workdir=/tmp/issam
  python -m harmonax.train --config=configs/idih.py:data=iharmony4 \
      --config.batch_size=32 --config.optim.lr=2e-4

`--config.x=y` overrides any config field. The workdir (default
./workdirs/<config name>) receives config.json, checkpoints/, TensorBoard event
files and metrics.jsonl. Running the same command again resumes from the newest
restorable checkpoint, data iterator included.

Multi-host (TPU pod slice): run the same command on every host with
`--distributed` (all arguments detected); elsewhere pass
`--coordinator_address=HOST:PORT --num_processes=N --process_id=I` on each.
Each host reads its own shard of the data; the global batch is
config.batch_size, rounded up to a multiple of the device count (with a
warning) when it does not split evenly. SIGTERM (preemption) and a first
Ctrl-C save a checkpoint and exit cleanly; a second Ctrl-C aborts. A second
trainer on a workdir in use refuses to start.
"""

import contextlib
import copy
import os
import signal
from collections.abc import Callable
from typing import Any, NamedTuple

from absl import app
from absl import flags
from absl import logging
from etils import epath
from flax import nnx
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np
import optax

from harmonax import checkpoint
from harmonax import cli
from harmonax import evaluation
from harmonax import inference
from harmonax import input_pipeline
from harmonax import metric_writers
from harmonax import models
from harmonax import optimizers as optimizers_lib
from harmonax import sharding
from harmonax import variables
from harmonax import workdir_lock
from harmonax.models import layers

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Training config file, e.g. configs/issam.py:runlocal.",
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory (local or gs://); default ./workdirs/<config name>.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, when not auto-detected.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "With --coordinator_address.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "With --coordinator_address.")


def default_workdir(config_arg: str) -> str:
  """'configs/issam.py:runlocal,data=coco' -> './workdirs/issam_runlocal_data-coco'."""
  path, _, arg = config_arg.partition(":")
  name = os.path.splitext(os.path.basename(path))[0]
  if arg:
    name += "_" + arg.replace(",", "_").replace("=", "-")
  return os.path.join(".", "workdirs", name)


def total_steps(config: ml_collections.ConfigDict, steps_per_epoch: int) -> int:
  """config.total_steps if > 0, else config.num_epochs epochs."""
  if config.get("total_steps", 0) > 0:
    return config.total_steps
  return int(config.num_epochs * steps_per_epoch)


def learning_rates(opt_state) -> dict[str, jax.Array]:
  """Learning rates found in optax.inject_hyperparams states, by network name."""
  # Duck-typed: optax has several inject_hyperparams state classes.
  has_hyperparams = lambda x: isinstance(getattr(x, "hyperparams", None), dict)
  found = {}
  for name, state in opt_state.items():
    for node in jax.tree.leaves(state, is_leaf=has_hyperparams):
      if has_hyperparams(node) and "learning_rate" in node.hyperparams:
        found[name] = node.hyperparams["learning_rate"]
        break
  return found


def eval_variables(state: dict) -> dict:
  """{'params', 'rest'} of the networks to evaluate: the averages when kept."""
  return state.get("ema") or {"params": state["params"], "rest": state["rest"]}


def _all_finite(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


class TrainFns(NamedTuple):
  """The trainer's pure functions for one config."""
  init_state: Callable[[], dict]  # () -> state; jit with out_shardings.
  # (state, batch) -> (state, metrics); metrics['finite'] says whether the
  # new state's losses and variables are all finite.
  train_step: Callable[[dict, dict], tuple[dict, dict]]
  merge: Callable[[dict, dict], dict[str, nnx.Module]]  # (params, rest) -> networks.
  networks: list[str]
  trained: list[str]  # The networks make_optimizers trains (the rest are frozen).


def make_train_fns(config: ml_collections.ConfigDict, steps_per_epoch: int) -> TrainFns:
  """Builds the train state initializer and the update step of config's model family.

  The state is `{'params', 'rest', 'opt_state': {network: ...}, 'step'}`, plus
  `'ema': {'params', 'rest'}` when config.optim.ema_decay > 0 (Polyak averages of
  the networks' floating state, see optimizers.ema_update: what evaluation,
  the image grids and checkpoint.load_networks use); the step makes one forward
  pass and pulls back a one-hot cotangent per trained network. Batches may hold
  uint8 images: families convert them on the device.
  """
  # Networks -> (graphdef, Param state, other state) per network.
  family = models.get_family(config.model.name)
  abstract_nets = checkpoint.abstract_networks(config)
  graphdefs = {k: nnx.split(net, nnx.Param, ...)[0] for k, net in abstract_nets.items()}
  optimizers = family.make_optimizers(config, steps_per_epoch)
  ema_decay = optimizers_lib.ema_decay_of(config)
  if unknown := set(optimizers) - set(graphdefs):
    raise ValueError(f"make_optimizers names {sorted(unknown)}, which create_networks "
                     f"does not make (networks: {sorted(graphdefs)})")

  def init_state():
    nets = family.create_networks(config, variables.rngs(config.seed))
    params = checkpoint.network_states(nets, nnx.Param)
    state = {"params": params,
             "rest": checkpoint.network_states(nets, nnx.Not(nnx.Param)),
             "opt_state": {k: opt.init(params[k]) for k, opt in optimizers.items()},
             "step": jnp.zeros((), jnp.int32)}
    if ema_decay:
      state["ema"] = jax.tree.map(jnp.copy, {"params": params, "rest": state["rest"]})
    return state

  dtype = models.compute_dtype(config)

  def merge(params, rest):
    nets = {k: nnx.merge(graphdefs[k], params[k], rest[k]) for k in graphdefs}
    if dtype != "float32":  # Mixed precision: params and optimizer state stay float32.
      models.set_compute_dtype(nets, dtype)
    return nets

  def train_step(state, batch):
    rng = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), 1),
                             state["step"])

    def loss_fn(params):
      nets = merge(params, state["rest"])
      models.set_modes(nets, optimizers)
      losses, metrics, _ = family.compute_losses(config, nets, batch, rng)
      # Losses and metrics in float32 whatever config.dtype; the state keeps its dtypes.
      f32 = lambda x: x.astype(jnp.float32) if jnp.issubdtype(x.dtype, jnp.floating) else x
      losses, metrics = jax.tree.map(f32, losses), jax.tree.map(f32, metrics)
      rest = jax.tree.map(lambda new, old: new.astype(old.dtype),
                          checkpoint.network_states(nets, nnx.Not(nnx.Param)), state["rest"])
      return losses, (metrics, rest)

    losses, pullback, (metrics, rest) = jax.vjp(loss_fn, state["params"], has_aux=True)
    if missing := set(optimizers) - set(losses):
      raise ValueError(f"compute_losses returned no loss for trained networks "
                       f"{sorted(missing)} (losses: {sorted(losses)})")
    params, opt_state = dict(state["params"]), dict(state["opt_state"])
    metrics = dict(metrics)
    for k, optimizer in optimizers.items():
      # A one-hot cotangent: d losses[k] / d params, of which network k's part
      # is kept; e.g. a generator's adversarial loss trains only the generator.
      cotangent = {j: jnp.ones_like(v) if j == k else jnp.zeros_like(v)
                   for j, v in losses.items()}
      grads = pullback(cotangent)[0][k]
      updates, opt_state[k] = optimizer.update(grads, opt_state[k], params[k])
      params[k] = optax.apply_updates(params[k], updates)
      metrics[f"grad_norm/{k}"] = optax.global_norm(grads)
    metrics.update({f"loss/{k}": v for k, v in losses.items()})
    metrics.update({f"lr/{k}": v for k, v in learning_rates(opt_state).items()})
    new_state = {"params": params, "rest": rest, "opt_state": opt_state,
                 "step": state["step"] + 1}
    if ema_decay:
      new_state["ema"] = optimizers_lib.ema_update(
          state["ema"], {"params": params, "rest": rest}, ema_decay, new_state["step"])
    # Checked before every save, so a diverged state is never written.
    metrics["finite"] = _all_finite(losses) & _all_finite(params) & _all_finite(rest)
    return new_state, metrics

  return TrainFns(init_state, train_step, merge, sorted(graphdefs), sorted(optimizers))


# The initializer runs once: on CPU, LLVM's optimizations would cost far more
# time than they save (Harmonizer runlocal: 38 s of compile at the default
# level, 13 s at 0, for a function that runs for milliseconds).
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def initial_state(fns: TrainFns, out_shardings=None) -> dict:
  """fns.init_state() on the devices, compiled quickly on CPU.

  The random bits are the same; the float transforms of them (e.g. normal
  samples) may differ from a default-level compile in the last bit (LLVM fuses
  multiply-adds differently), which only matters against runs of older versions.
  """
  lowered = jax.jit(fns.init_state, out_shardings=out_shardings).lower()
  if jax.default_backend() == "cpu":
    return lowered.compile(compiler_options=_INIT_COMPILER_OPTIONS)()
  return lowered.compile()()


def apply_pretrained(config: ml_collections.ConfigDict, fns: TrainFns, state: dict,
                     sharding: jax.sharding.Sharding) -> dict:
  """config.init = {network: path} loaded by the family's `load_pretrained`,
  outside jit, into a freshly initialised state; empty paths are skipped.

  Runs once, before step 1 (a resumed run has the weights in its checkpoint),
  so a trained workdir never needs the pretrained files again.
  """
  paths = {k: v for k, v in (config.get("init") or {}).items() if v}
  if not paths:
    return state
  family = models.get_family(config.model.name)
  if not hasattr(family, "load_pretrained"):
    raise ValueError(f"config.init names {sorted(paths)} but model {config.model.name!r} "
                     "has no load_pretrained")
  if unknown := set(paths) - set(fns.networks):
    raise ValueError(f"config.init names networks {sorted(unknown)}; {config.model.name} "
                     f"has {fns.networks}")
  host = jax.tree.map(evaluation.host_local, {"params": state["params"], "rest": state["rest"]})
  nets = fns.merge(host["params"], host["rest"])
  family.load_pretrained(config, nets, paths)
  for name, path in paths.items():
    logging.info("Initialised %s from %s", name, path)
  loaded = {"params": checkpoint.network_states(nets, nnx.Param),
            "rest": checkpoint.network_states(nets, nnx.Not(nnx.Param))}
  loaded = jax.tree.map(np.asarray, loaded)
  return {**state, **checkpoint.placed(loaded, jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), loaded))}


def predict_images(config: ml_collections.ConfigDict, fns: TrainFns, state: dict,
                   batch: dict[str, np.ndarray], max_rows: int = 4, max_size: int = 256
                   ) -> np.ndarray:
  """An image grid (composite | output | real | mask) of a few training rows,
  predicted in eval mode (by the averaged networks when kept), at most
  `max_size` pixels a tile."""
  family = models.get_family(config.model.name)
  rows = {k: np.asarray(v[:max_rows]) for k, v in batch.items()}
  size = min(max_size, rows["real"].shape[1])
  if rows["real"].shape[1] > size:
    rows = {k: np.asarray(jax.image.resize(layers.to_float(jnp.asarray(v)),
                                           v.shape[:1] + (size, size) + v.shape[3:],
                                           "bilinear")) for k, v in rows.items()}
  host = jax.tree.map(evaluation.host_local, eval_variables(state))
  nets = fns.merge(host["params"], host["rest"])
  models.set_modes(nets)
  pred = inference.jitted_predict(ml_collections.FrozenConfigDict(config))(
      nets, {k: jnp.asarray(rows[k]) for k in family.INPUTS})
  floats = {k: np.asarray(layers.to_float(jnp.asarray(v))) for k, v in rows.items()}
  shown = floats.get("composite", floats.get(family.INPUTS[0]))
  return metric_writers.image_grid(shown, np.asarray(pred), floats["real"], floats["mask"])


class _Preemption:
  """Sets a flag on SIGTERM or a first Ctrl-C (single process); multi-host uses
  JAX's sync points. A second Ctrl-C raises KeyboardInterrupt (abort)."""

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    # With several processes, each host must stop at the same step: JAX's
    # preemption sync manager (started by jax.distributed) agrees on it, and a
    # Python handler here would replace its signal handler.
    if jax.process_count() == 1:
      for signum in (signal.SIGTERM, signal.SIGINT):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if signum == signal.SIGINT:
      if self.requested:
        raise KeyboardInterrupt
      logging.warning("Ctrl-C: saving a checkpoint after this step and stopping "
                      "(press Ctrl-C again to abort without saving).")
    else:
      logging.warning("Received signal %d: saving a checkpoint and stopping.", signum)
    self.requested = True

  def __exit__(self, *exc):
    for signum, previous in self._previous.items():
      signal.signal(signum, previous)


def check_config(config: ml_collections.ConfigDict) -> None:
  """Raises cli.UserError naming the first config field that cannot train.

  Checked before anything is written or read: the loop's counts, the batch,
  the crop size, and the model (its networks are built abstractly, so an
  unknown variant or a bad shape setting is found here, not mid-setup).
  """
  def need(name: str, value: Any, ok: bool, expected: str) -> None:
    if not ok:
      raise cli.UserError(f"config.{name}={value!r}: expected {expected}")

  is_int = lambda v: isinstance(v, int) and not isinstance(v, bool)
  need("batch_size", config.batch_size, is_int(config.batch_size) and config.batch_size > 0,
       "a positive integer")
  size = config.data.get("image_size")
  need("data.image_size", size, is_int(size) and size > 0,
       "a positive integer (the training crop size)")
  for name in ("total_steps", "num_epochs", "log_every", "eval_every", "checkpoint_every",
               "image_every", "keep_checkpoints"):
    if (value := config.get(name)) is not None:
      need(name, value, is_int(value) and value >= 0, "an integer >= 0")
  try:
    checkpoint.abstract_networks(config)
  except (ValueError, KeyError, TypeError) as e:
    raise cli.UserError(f"config.model ({config.model.get('name')!r}) cannot be built: "
                        f"{e}") from e


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (resuming from workdir's checkpoints) and returns the final train state.

  Raises:
    cli.UserError: a config field that cannot train (check_config), a config
      that differs from the one of workdir's checkpoints, a workdir in use by
      another live trainer (workdir_lock.WorkdirBusyError) or not writable.
  """
  # Before the workdir is touched: a config that cannot train leaves nothing
  # behind, and never replaces the config.json of a run's checkpoints.
  check_config(config)
  with workdir_lock.hold(workdir, enabled=jax.process_index() == 0):
    return _train_and_evaluate(config, workdir)


def _train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  is_writer = jax.process_index() == 0

  def phase(what: str) -> metric_writers.Phase:
    return metric_writers.Phase(what, enabled=is_writer)

  # ---- Mesh: data parallelism, batch split over 'data', state replicated.
  mesh = sharding.make_mesh()
  replicated = sharding.replicated(mesh)
  asked = config.get(checkpoint.REQUESTED_BATCH_SIZE, config.batch_size)
  batch_size = sharding.fit_batch_size(asked, mesh)
  if batch_size != config.batch_size or asked != config.batch_size:
    # config.json records the batch trained with, and the one asked for.
    config = copy.deepcopy(config)
    with config.unlocked():
      config[checkpoint.REQUESTED_BATCH_SIZE] = asked
    config.batch_size = batch_size
  # Before config.json is rewritten: it names the config the checkpoints have.
  checkpoint.check_resumable(workdir, config)

  # ---- Input: this host's shard; epochs -> steps.
  first_use = " (built on first use)" if config.data.name == input_pipeline.AUTO_BUILD else ""
  with phase(f"reading dataset {config.data.name}{first_use}"):
    train_examples = input_pipeline.num_examples(config.data, config.data.train_split)
  steps_per_epoch = train_examples // config.batch_size
  if steps_per_epoch < 1:
    raise cli.UserError(
        f"{config.data.name} {config.data.train_split!r} has {train_examples} examples, "
        f"fewer than config.batch_size={config.batch_size}: give it more examples, or "
        "pass a smaller --config.batch_size")
  num_steps = total_steps(config, steps_per_epoch)
  train_iter = input_pipeline.make_train_iterator(config.data, config.batch_size, config.seed)

  # ---- Model and update step.
  fns = make_train_fns(config, steps_per_epoch)
  train_step = jax.jit(fns.train_step, donate_argnums=(0,))
  # Once the data and the model are known to work with it: a run that cannot
  # start leaves no config.json behind.
  if is_writer:
    checkpoint.save_config(workdir, config)

  # ---- Checkpoint: resume from the newest restorable step, else initialize.
  manager = checkpoint.make_manager(workdir, config.get("keep_checkpoints", 3))
  abstract_state = sharding.abstract_like(jax.eval_shape(fns.init_state), replicated)
  with phase("initialising the model (or restoring the newest checkpoint)"):
    restored = checkpoint.restore_train_state(manager, abstract_state, train_iter)
    if restored is not None:
      state, start_step = restored
      logging.info("Resumed from step %d of %s", start_step, manager.directory)
    else:
      state, start_step = initial_state(fns, replicated), 0
      state = apply_pretrained(config, fns, state, replicated)
  # Lines of steps after start_step (a killed run's) are dropped: each step once.
  writer = metric_writers.MetricWriter(workdir, enabled=is_writer, resume_step=start_step)
  num_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  logging.info("%s: %d parameters in %s; %d steps (%d per epoch), global batch %d on "
               "%d devices, %d processes", config.model.name, num_params,
               fns.networks, num_steps, steps_per_epoch, config.batch_size,
               jax.device_count(), jax.process_count())

  # ---- Evals: each set of config.evals (dataset, split, size), averaged metrics.
  def run_eval(step):
    host = jax.tree.map(evaluation.host_local, eval_variables(state))
    nets = fns.merge(host["params"], host["rest"])
    models.set_modes(nets)
    scalars = {}
    with phase(f"evaluating {', '.join(config.get('evals', {}))}"):
      for name, results in evaluation.evaluate_sets(config, nets).items():
        scalars.update({f"eval/{name}/{k}": v for k, v in results.items()})
    writer.write_scalars(step, scalars)
    metric_writers.log_console(step, num_steps, scalars, is_writer)

  # Device metrics of steps not yet checked for NaN/Inf.
  pending: list[tuple[int, dict]] = []

  def check_pending() -> dict[str, float]:
    """Fetches pending metrics, stops on a non-finite step, returns their mean."""
    fetched = jax.device_get(pending)
    pending.clear()
    for step, metrics in fetched:
      if not metrics.pop("finite"):
        losses = ", ".join(f"{k}={float(v):.6g}" for k, v in sorted(metrics.items()))
        good = manager.latest_step()
        kept = (f"the last good checkpoint is step {good} in {manager.directory}"
                if good is not None else "no checkpoint was saved")
        raise FloatingPointError(
            f"Non-finite loss or parameters at step {step} ({losses}); training "
            f"stopped, {kept}.")
    if not fetched:
      return {}
    return {k: float(np.mean([m[k] for _, m in fetched])) for k in fetched[-1][1]}

  # ---- Loop.
  every = lambda n, step: n > 0 and step % n == 0
  log_every = config.get("log_every", 50)

  def should_log(step: int) -> bool:
    # Also at steps 2, 4, 8, ... after a (re)start until the first regular
    # line: full-size models on a CPU take many seconds a step.
    since = step - start_step
    return every(log_every, step) or (
        step < log_every and since >= 2 and since & (since - 1) == 0)

  progress = metric_writers.Progress(start_step, num_steps, config.batch_size)
  if start_step >= num_steps:
    logging.info("Nothing to do: step %d of %d already reached.", start_step, num_steps)
  try:
    with _Preemption() as preemption, jax.set_mesh(mesh):
      for step in range(start_step + 1, num_steps + 1):
        local = next(train_iter)
        first = step == start_step + 1
        compiling = (phase(f"compiling the update step and running step {step}")
                     if first else contextlib.nullcontext())
        with compiling:
          state, metrics = train_step(state, sharding.global_batch(local, mesh))
          if first:
            jax.block_until_ready(state)
        pending.append((step, metrics))
        if first:
          progress.reset(step)
        last = step == num_steps
        stop = preemption.requested or manager.reached_preemption(step)
        if should_log(step) or last or stop:
          scalars = check_pending()
          scalars.update(progress.report(step))
          writer.write_scalars(step, scalars)
          metric_writers.log_console(step, num_steps, scalars, is_writer)
        if is_writer and every(config.get("image_every", 0), step):
          # Process 0's own rows, predicted in eval mode by a small separate call.
          grid = predict_images(config, fns, state, local)
          writer.write_images(step, {"train/composite_output_real_mask": grid})
        if every(config.get("checkpoint_every", 0), step) or last or stop:
          check_pending()
          checkpoint.save_train_state(manager, step, state, train_iter)
        if every(config.get("eval_every", 0), step) or (last and config.get("eval_every", 0)):
          run_eval(step)
          progress.reset(step)
        if should_log(step):
          writer.flush()
        if stop:
          logging.warning("Stopped at step %d; checkpoint saved (run the same command to "
                          "resume).", step)
          break
  finally:
    # In-flight saves are of checked states: let them finish even on errors.
    manager.wait_until_finished()
    manager.close()
    writer.close()
    # Stops grain's worker processes now, not at interpreter exit.
    if hasattr(train_iter, "close"):
      train_iter.close()
  return state


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if _DISTRIBUTED.value or _COORDINATOR.value:
    sharding.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                    _PROCESS_ID.value)
  config = _CONFIG.value
  if config is None:
    raise app.UsageError("--config is required, e.g. --config=configs/issam.py:runlocal")
  workdir = _WORKDIR.value or default_workdir(
      config_flags.get_config_filename(flags.FLAGS["config"]))
  logging.info("Workdir: %s", epath.Path(workdir))
  train_and_evaluate(config, workdir)


if __name__ == "__main__":
  # Routine failures (missing dataset, busy workdir, NaN) as one line; --verbose
  # for their traceback.
  cli.run(main, user_errors=(FileNotFoundError, FloatingPointError))
