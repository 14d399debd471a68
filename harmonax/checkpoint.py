"""Checkpoints: the training state with its data iterator, and networks for inference.

A training workdir holds `config.json` and `checkpoints/<step>/` with two orbax
items: `state` (the train state pytree of docs/architecture.md, as pure dicts,
with the parameter averages 'ema' when config.optim.ema_decay > 0) and
`data_iter` (the grain iterator state, one JSON file per process).

`save_networks` writes a standalone directory (`config.json` + `networks/`, the
full nnx state of every network) that `load_networks` reads back, as does a
training workdir.
"""

import json
import os
import sys
from typing import Any

from absl import logging
from etils import epath
from flax import nnx
import grain.python as grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from harmonax import cli
from harmonax import model_card
from harmonax import models
from harmonax import optimizers
from harmonax import variables

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_DIR = "corrupt_checkpoints"
NETWORKS_DIR = "networks"
STATE_ITEM = "state"
DATA_ITER_ITEM = "data_iter"

PyTree = Any

# What a resumed run may change: how long it trains and what it logs, saves and
# evaluates (a field or a whole block). Any other difference (the model, the
# losses, the optimiser, the data, the seed) would go on from weights trained
# under another config, so resuming refuses it (check_resumable).
RESUMABLE_CHANGES = (
    "total_steps", "num_epochs", "log_every", "eval_every", "checkpoint_every",
    "image_every", "keep_checkpoints", "eval", "evals", "init",
    "data.data_dir", "data.num_workers", "data.eval_split", "data.max_eval_examples",
)


# harmonax.evaluate's tables in a checkpoint directory: <prefix><dataset>...{.md,.csv}.
EVAL_FILE_PREFIX = "eval_"
# config.json's record of config.batch_size as given, when the trainer rounded
# it up to split over the devices (config.batch_size is then the batch trained).
REQUESTED_BATCH_SIZE = "requested_batch_size"


class CheckpointMismatchError(cli.UserError, ValueError):
  """A checkpoint that does not belong to the config it is restored for."""


class OutputNotEmptyError(cli.UserError, FileExistsError):
  """save_networks was asked to write into a directory holding other things."""


def _path(path: str | os.PathLike) -> epath.Path:
  """An absolute path (orbax refuses relative ones); URLs such as gs:// as they are."""
  path = os.fspath(path)
  return epath.Path(path if "://" in path else os.path.abspath(path))


def save_config(directory: str | os.PathLike, config: ml_collections.ConfigDict,
                card: dict | None = None) -> None:
  """Writes `directory/config.json` (the ConfigDict as JSON) and the model card
  `README.md`: `card` if given (harmonax.model_card.make_card), else a
  "trained with harmonax" card unless one is there (a resumed run keeps it)."""
  directory = _path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  # Written aside, then renamed over: a reader (another host's check_resumable)
  # sees the old file or the new one, never half of one.
  partial = directory / f".{CONFIG_FILE}.{os.getpid()}.tmp"
  partial.write_text(config.to_json_best_effort(indent=2, sort_keys=True) + "\n")
  partial.replace(directory / CONFIG_FILE)
  try:
    if card is None and model_card.read(directory) is None:
      card = model_card.make_card(config)
    if card is not None:
      model_card.write(directory, card)
  except Exception as e:  # pylint: disable=broad-except
    # The card documents the weights; it must never stop a training run.
    logging.warning("Could not write the model card in %s: %s", directory, e)


def load_config(directory: str | os.PathLike) -> ml_collections.ConfigDict:
  """Reads `directory/config.json` back into a ConfigDict."""
  path = _path(directory) / CONFIG_FILE
  if not path.exists():
    raise FileNotFoundError(
        f"{path} not found: expected a training workdir or a save_networks "
        "directory holding config.json")
  try:
    return ml_collections.ConfigDict(json.loads(path.read_text()))
  except ValueError as e:
    raise CheckpointMismatchError(f"{path} is not valid JSON: {e}") from None


def _flat_json(tree: Any, prefix: str = "") -> dict[str, Any]:
  if isinstance(tree, dict) and tree:
    out = {}
    for key, value in tree.items():
      out.update(_flat_json(value, f"{prefix}{key}."))
    return out
  return {prefix[:-1]: tree}


def check_resumable(workdir: str | os.PathLike, config: ml_collections.ConfigDict) -> None:
  """Refuses to resume checkpoints of `workdir` that another config trained.

  When `workdir` holds a checkpoint and the config.json of the run that wrote
  it, the two configs may differ only in RESUMABLE_CHANGES (and in the batch
  trained, when the same batch asked for rounds up differently on another
  device count); the changes that are allowed are logged. `config` is the
  trainer's, batch_size rounded (train.py records requested_batch_size).

  Raises:
    CheckpointMismatchError: naming each other field that differs, with its
      value in the workdir and in `config`.
  """
  workdir = _path(workdir)
  path = workdir / CONFIG_FILE
  if not path.exists() or not good_steps(workdir / CHECKPOINT_DIR):
    return
  # Both through JSON, as config.json holds them (tuples become lists).
  saved, now = (_flat_json(json.loads(c.to_json_best_effort()))
                for c in (load_config(workdir), config))
  # The batch asked for must match. The batch trained is it rounded up to a
  # multiple of the device count (the trainer records both), so it may differ
  # on another count; config.json files written before requested_batch_size
  # was recorded hold only the batch trained.
  recorded = REQUESTED_BATCH_SIZE in saved
  saved_trained, now_trained = saved.pop("batch_size", None), now.pop("batch_size", None)
  saved_asked = saved.pop(REQUESTED_BATCH_SIZE, saved_trained)
  now_asked = now.pop(REQUESTED_BATCH_SIZE, now_trained)
  if saved_asked != now_asked and (recorded or saved_trained != now_trained):
    saved["batch_size"], now["batch_size"] = saved_asked, now_asked  # Refused below.
  elif saved_trained != now_trained:
    logging.warning(
        "Resuming with a batch of %s instead of %s (config.batch_size=%s rounded up to "
        "this run's device count): steps per epoch and the schedule follow it.",
        now_trained, saved_trained, now_asked)
  missing = "(absent)"
  changed = [k for k in sorted(saved.keys() | now.keys())
             if saved.get(k, missing) != now.get(k, missing)]
  allowed = lambda key: any(key == f or key.startswith(f + ".") for f in RESUMABLE_CHANGES)
  describe = lambda keys: "; ".join(
      f"{k}: {json.dumps(saved.get(k, missing))} -> {json.dumps(now.get(k, missing))}"
      for k in keys)
  if refused := [k for k in changed if not allowed(k)]:
    raise CheckpointMismatchError(
        f"{workdir} holds checkpoints trained with another config ({path} -> "
        f"this run): {describe(refused)}. Resume with the config in {path} (a "
        f"resumed run may change only {', '.join(RESUMABLE_CHANGES)}), or train "
        "in a new --workdir.")
  if changed:
    logging.info("Resuming with a changed config: %s", describe(changed))


def _check_no_rng_state(name: str, network: nnx.Module) -> None:
  # Typed PRNG keys are not checkpointable as plain arrays, and the family
  # contract keeps randomness in the `rng` argument of compute_losses.
  if nnx.state(network, nnx.RngState):
    raise ValueError(
        f"Network {name!r} holds nnx.RngState; model families must not keep RNG "
        "state in modules (use the rng passed to compute_losses)")


def network_states(networks: dict[str, nnx.Module], filt=...) -> dict[str, dict]:
  """The state of each network matching `filt`, as nested pure dicts."""
  for name, net in networks.items():
    _check_no_rng_state(name, net)
  return {name: nnx.state(net, filt).to_pure_dict() for name, net in networks.items()}


def update_networks(networks: dict[str, nnx.Module], states: dict[str, dict]) -> None:
  """Writes pure-dict states (as from `network_states`) into the networks in place."""
  for name, net in networks.items():
    if name not in states:
      raise KeyError(f"No state for network {name!r}; got {sorted(states)}")
    state = nnx.state(net)
    nnx.replace_by_pure_dict(state, states[name])
    nnx.update(net, state)


def abstract_networks(config: ml_collections.ConfigDict) -> dict[str, nnx.Module]:
  """The config's networks with ShapeDtypeStruct leaves (no memory, no compute)."""
  family = models.get_family(config.model.name)
  return nnx.eval_shape(lambda: family.create_networks(config, variables.rngs(0)))


def _key(path: tuple) -> str:
  # Dict keys, sequence indices and (optax's namedtuples) attribute names alike:
  # orbax's metadata holds namedtuples as dicts.
  parts = (getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))) for k in path)
  return "/".join(map(str, parts))


def _listed(names: list[str], most: int = 5) -> str:
  """The first `most` names, and how many more."""
  more = f" and {len(names) - most} more" if len(names) > most else ""
  return ", ".join(names[:most]) + more


def _check_layout(directory: epath.Path, target: PyTree, *, partial: bool = False) -> None:
  """Checks that the orbax tree in `directory` has `target`'s leaves and shapes.

  orbax restores numpy arrays at the shapes saved and, with partial_restore,
  leaves absent leaves as they were: a checkpoint of another model would
  restore without a word. `partial` allows leaves that `target` lacks.

  Raises:
    CheckpointMismatchError: naming the missing and unexpected leaves and the
      shapes that differ.
  """
  metadata = ocp.PyTreeCheckpointHandler().metadata(directory).tree
  saved = {_key(p): tuple(getattr(m, "shape", None) or ())
           for p, m in jax.tree_util.tree_leaves_with_path(metadata)}
  wanted = {_key(p): tuple(x.shape) for p, x in jax.tree_util.tree_leaves_with_path(target)}
  problems = []
  params_first = lambda k: (not k.startswith("params/"), k)
  if missing := sorted(wanted.keys() - saved.keys(), key=params_first):
    problems.append(f"{len(missing)} leaves missing ({_listed(missing)})")
  if not partial and (extra := sorted(saved.keys() - wanted.keys(), key=params_first)):
    problems.append(f"{len(extra)} unexpected leaves ({_listed(extra)})")
  if shapes := [f"{k} {saved[k]} (expected {wanted[k]})"
                for k in sorted(wanted, key=params_first)
                if k in saved and saved[k] != wanted[k]]:
    problems.append(f"{len(shapes)} shapes differ: {_listed(shapes)}")
  if problems:
    raise CheckpointMismatchError(
        f"{directory} does not hold the model its config.json describes (was it "
        f"written with another config or harmonax version?): {'; '.join(problems)}")


def _numpy_restore_args(tree: PyTree) -> PyTree:
  # Host numpy arrays: the caller decides placement; jnp.asarray later gives
  # uncommitted arrays that jit may move to whatever mesh it runs on.
  return jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)


def placed(tree: PyTree, abstract: PyTree) -> PyTree:
  """Host arrays onto the shardings of `abstract`'s ShapeDtypeStructs, the same
  bytes: this host's in one batched transfer; a sharding that spans other
  hosts' devices too (multi-host) takes each addressable shard of the array.
  Restored train states and pretrained weights (train.apply_pretrained) both
  come this way."""
  treedef = jax.tree.structure(abstract)
  leaves, targets = treedef.flatten_up_to(tree), jax.tree.leaves(abstract)
  local = [i for i, t in enumerate(targets) if t.sharding.is_fully_addressable]
  out = list(leaves)
  moved = jax.device_put([leaves[i] for i in local], [targets[i].sharding for i in local])
  for i, x in zip(local, moved):
    out[i] = x
  for i, (x, target) in enumerate(zip(leaves, targets)):
    if not target.sharding.is_fully_addressable:
      out[i] = jax.make_array_from_callback(
          target.shape, target.sharding, lambda index, x=x: np.asarray(x)[index])
  return treedef.unflatten(out)


def _materialize(networks: dict[str, nnx.Module], states: dict[str, dict]) -> None:
  update_networks(networks, jax.tree.map(jnp.asarray, states))
  for net in networks.values():
    net.eval()


def save_networks(directory: str | os.PathLike, config: ml_collections.ConfigDict,
                  networks: dict[str, nnx.Module], card: dict | None = None) -> None:
  """Writes `directory/config.json`, the model card (see save_config) and an
  orbax checkpoint of the networks' full state.

  Raises:
    OutputNotEmptyError: `directory` holds files of its own (e.g. a training
      workdir); a previous save_networks directory is overwritten.
  """
  directory = _path(directory)
  # A previous save_networks directory is overwritten; anything else (a
  # training workdir, whose config.json and model card would be replaced and
  # whose checkpoints networks/ would shadow for load_networks) is refused.
  ours = {CONFIG_FILE, model_card.CARD_FILE, NETWORKS_DIR}
  is_ours = lambda name: name in ours or (  # Or harmonax.evaluate's tables.
      name.startswith(EVAL_FILE_PREFIX) and name.endswith((".md", ".csv")))
  if directory.is_dir() and (others := sorted(
      p.name for p in directory.iterdir() if not is_ours(p.name))):
    what = ("a training workdir" if CHECKPOINT_DIR in others
            else f"not empty ({_listed(others)})")
    raise OutputNotEmptyError(
        f"{directory} is {what}: write the networks to a new or empty directory")
  save_config(directory, config, card)
  path = directory / NETWORKS_DIR
  if path.exists():
    path.rmtree()
  if not networks:  # A parameter-free model (a classical blend): orbax saves no empty tree.
    path.mkdir(parents=True)
    return
  with ocp.PyTreeCheckpointer() as checkpointer:
    checkpointer.save(path, network_states(networks))


def good_steps(checkpoint_dir: str | os.PathLike) -> list[int]:
  """Finalized checkpoint steps in `checkpoint_dir`, newest first.

  Orbax writes each step to a temporary directory and renames it when complete,
  so unfinished saves are excluded; a finalized step can still be corrupt (e.g.
  a truncated file), which only a restore reveals.
  """
  checkpoint_dir = _path(checkpoint_dir)
  if not checkpoint_dir.exists():
    return []
  steps = [int(p.name) for p in checkpoint_dir.iterdir()
           if p.is_dir() and p.name.isdigit() and (p / STATE_ITEM).exists()]
  return sorted(steps, reverse=True)


def _drop_closed_loop_callbacks() -> None:
  """Silences the tracebacks a failed orbax restore leaves behind.

  When one array of a step cannot be read, orbax's restore raises and closes
  its asyncio event loop while tensorstore reads of the other arrays are still
  in flight; as each finishes, its callback finds the loop closed and prints
  'RuntimeError: Event loop is closed' (an unraisable exception, from a
  tensorstore thread), dozens of tracebacks around our one-line warning.
  From the first restore on, exactly those are dropped; every other
  unraisable exception still reaches the previous hook.
  """
  previous = sys.unraisablehook
  if getattr(previous, "harmonax_drops_closed_loop_callbacks", False):
    return

  def hook(unraisable):
    exc = unraisable.exc_value
    if not (isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"):
      previous(unraisable)

  hook.harmonax_drops_closed_loop_callbacks = True
  sys.unraisablehook = hook


def _restore_newest(checkpoint_dir: epath.Path, restore_one) -> tuple[Any, int]:
  """Calls restore_one(step) newest-first, falling back past corrupt steps."""
  steps = good_steps(checkpoint_dir)
  if not steps:
    raise FileNotFoundError(
        f"No checkpoint in {checkpoint_dir} yet: its run saved none (a checkpoint is "
        "written every config.checkpoint_every steps, at the end, and on SIGTERM or "
        "Ctrl-C); train (or resume) with harmonax.train first")
  errors = []
  _drop_closed_loop_callbacks()  # Before: callbacks may come before the exception.
  for step in steps:
    try:
      return restore_one(step), step
    except CheckpointMismatchError:
      raise  # Not corruption: every step of the run has the same layout.
    except Exception as e:  # pylint: disable=broad-except
      # Any failure (missing file, truncated tensorstore chunk, bad metadata)
      # means this step is unusable; an older one may still be fine.
      message = f"{type(e).__name__}: {str(e)[:300]}"  # tensorstore errors are long.
      logging.warning("Checkpoint step %d in %s could not be restored (%s); "
                      "falling back to an older step.", step, checkpoint_dir, message)
      errors.append(f"step {step}: {message}")
  raise FileNotFoundError(
      f"No restorable checkpoint in {checkpoint_dir} (steps tried: {steps}); "
      + "; ".join(errors))


def load_networks(path: str | os.PathLike, average: bool = True, *, return_step: bool = False
                  ) -> tuple[ml_collections.ConfigDict, dict[str, nnx.Module]]:
  """Loads (config, networks in eval mode) from a training workdir or a save_networks dir.

  A training workdir gives the networks of its newest restorable step: their
  Polyak averages (the state's 'ema', kept when config.optim.ema_decay > 0)
  unless `average` is False, then the last update's weights. With
  `return_step`, returns (config, networks, that step or None for a
  save_networks directory).
  """
  config, networks, step = _load_networks(_path(path), average)
  return (config, networks, step) if return_step else (config, networks)


def _load_networks(path: epath.Path, average: bool):
  config = load_config(path)
  networks = abstract_networks(config)
  full = network_states(networks)
  step = None
  if not networks and ((path / NETWORKS_DIR).exists() or (path / CHECKPOINT_DIR).exists()):
    return config, networks, step  # Parameter-free (save_networks wrote no orbax tree).
  if (path / NETWORKS_DIR).exists():
    _check_layout(path / NETWORKS_DIR, full)
    with ocp.PyTreeCheckpointer() as checkpointer:
      states = checkpointer.restore(
          path / NETWORKS_DIR,
          args=ocp.args.PyTreeRestore(item=full, restore_args=_numpy_restore_args(full)))
  elif (path / CHECKPOINT_DIR).exists():
    params = network_states(networks, nnx.Param)
    rest = network_states(networks, nnx.Not(nnx.Param))
    target = {"params": params, "rest": rest}
    if average and optimizers.ema_decay_of(config):
      target = {"ema": target}

    def restore_one(step):
      _check_layout(path / CHECKPOINT_DIR / str(step) / STATE_ITEM, target, partial=True)
      with ocp.PyTreeCheckpointer() as checkpointer:
        return checkpointer.restore(
            path / CHECKPOINT_DIR / str(step) / STATE_ITEM,
            args=ocp.args.PyTreeRestore(
                item=target, restore_args=_numpy_restore_args(target),
                partial_restore=True))

    restored, step = _restore_newest(path / CHECKPOINT_DIR, restore_one)
    restored = restored.get("ema", restored)
    logging.info("Loaded networks of step %d from %s%s", step, path,
                 " (parameter averages)" if "ema" in target else "")
    # Recombine Param and non-Param leaves into one pure dict per network.
    states = {}
    for name in networks:
      state = nnx.state(networks[name])
      nnx.replace_by_pure_dict(state, _merge(restored["params"][name],
                                              restored["rest"][name]))
      states[name] = state.to_pure_dict()
  else:
    raise FileNotFoundError(
        f"{path} holds neither {NETWORKS_DIR}/ (save_networks) nor "
        f"{CHECKPOINT_DIR}/ (a training workdir)")
  _materialize(networks, states)
  return config, networks, step


def _merge(a: dict, b: dict) -> dict:
  """Deep union of two nested dicts with disjoint leaves."""
  out = dict(a)
  for key, value in b.items():
    out[key] = _merge(out[key], value) if key in out else value
  return out


# ---------------------------------------------------------------------------
# Training checkpoints: state + data iterator, via an orbax CheckpointManager.


def make_manager(workdir: str | os.PathLike, keep: int, *,
                 async_save: bool = True) -> ocp.CheckpointManager:
  """A CheckpointManager over `<workdir>/checkpoints`, keeping the last `keep` steps.

  Saving is asynchronous: arrays are copied to host, then written in the
  background while training goes on. The trainer decides when to save.
  """
  options = ocp.CheckpointManagerOptions(
      max_to_keep=keep if keep > 0 else None,
      create=True,
      enable_async_checkpointing=async_save,
      # Unfinished saves of a killed run are left as temporaries; clean them.
      cleanup_tmp_directories=True,
  )
  return ocp.CheckpointManager(
      _path(workdir) / CHECKPOINT_DIR,
      options=options,
      item_handlers={STATE_ITEM: _state_handler(),
                     DATA_ITER_ITEM: grain.PyGrainCheckpointHandler()})


def _state_handler() -> ocp.PyTreeCheckpointHandler:
  """Orbax's handler; on CPU without replica-parallel writes.

  Replica-parallel saving slices every replicated array into one piece per
  device with eager JAX ops; on CPU that compiles a slice per array shape
  (seconds per save for nothing: all devices share the host's memory).
  """
  if jax.default_backend() != "cpu":
    return ocp.PyTreeCheckpointHandler()
  handlers = ocp.type_handlers
  registry = handlers.create_type_handler_registry(
      (jax.Array, handlers.ArrayHandler(use_replica_parallel=False)),
      (np.ndarray, handlers.NumpyHandler()),
      (np.number, handlers.ScalarHandler()),
      (int, handlers.ScalarHandler()),
      (float, handlers.ScalarHandler()))
  return ocp.PyTreeCheckpointHandler(type_handler_registry=registry)


def save_train_state(manager: ocp.CheckpointManager, step: int, state: PyTree,
                     data_iter: grain.DatasetIterator | None) -> None:
  """Starts saving (state, data iterator) as `step`; the write completes in the background."""
  items = {STATE_ITEM: ocp.args.PyTreeSave(state)}
  if data_iter is not None:
    items[DATA_ITER_ITEM] = grain.PyGrainCheckpointSave(data_iter)
  manager.save(step, args=ocp.args.Composite(**items), force=True)


def restore_train_state(manager: ocp.CheckpointManager, abstract_state: PyTree,
                        data_iter: grain.DatasetIterator | None
                        ) -> tuple[PyTree, int] | None:
  """Restores the newest restorable step onto `abstract_state`'s shardings.

  `abstract_state` holds jax.ShapeDtypeStructs with the shardings of *this* run,
  so a checkpoint written on another device count restores onto the current
  mesh. The data iterator is restored in place when its state for this process
  count exists; otherwise (a different number of hosts) it starts afresh with
  a warning. A corrupt newest step falls back to the previous one with a
  warning. Returns None when there is no checkpoint.
  """
  directory = _path(manager.directory)
  if not good_steps(directory):
    return None
  # Read as host arrays, then placed in one batched transfer: orbax's own
  # placement (a read and a transfer per array and device) took seconds for a
  # small state on 8 CPU devices.
  restore_args = _numpy_restore_args(abstract_state)

  def restore_one(step):
    _check_layout(directory / str(step) / STATE_ITEM, abstract_state)
    items = {STATE_ITEM: ocp.args.PyTreeRestore(item=abstract_state,
                                                restore_args=restore_args)}
    if data_iter is not None:
      index, count = jax.process_index(), jax.process_count()
      iter_file = (directory / str(step) / DATA_ITER_ITEM
                   / f"process_{index}-of-{count}.json")
      if iter_file.exists():
        items[DATA_ITER_ITEM] = grain.PyGrainCheckpointRestore(data_iter)
      else:
        logging.warning("No data iterator state for process %d of %d at step %d "
                        "(saved with another process count?): the data order "
                        "restarts from the beginning.", index, count, step)
    restored = manager.restore(step, args=ocp.args.Composite(**items))
    return placed(restored[STATE_ITEM], abstract_state)

  state, step = _restore_newest(directory, restore_one)
  if corrupt := [s for s in good_steps(directory) if s > step]:
    _quarantine(manager, corrupt)
  return state, step


def _quarantine(manager: ocp.CheckpointManager, steps: list[int]) -> None:
  """Moves unrestorable steps to <workdir>/corrupt_checkpoints/ (kept for inspection).

  Training goes on from an older step and will save these step numbers again.
  """
  directory = _path(manager.directory)
  target = directory.parent / CORRUPT_DIR
  if jax.process_index() == 0:
    target.mkdir(parents=True, exist_ok=True)
    for step in steps:
      destination = target / str(step)
      if destination.exists():
        destination.rmtree()
      (directory / str(step)).rename(destination)
      logging.warning("Moved unrestorable checkpoint step %d to %s", step, destination)
  ocp.multihost.sync_global_processes("harmonax_quarantine_checkpoints")
  manager.reload()
