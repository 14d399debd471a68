"""Runs the trainer with the fake family in a fresh process (for multiprocess_test.py).

  python tests/train_worker.py WORKDIR --total_steps=4 --devices=4 \
      [--num_processes=2 --process_id=0 --port=12345] [--slurm] \
      [--num_workers=2] [--sigterm_at_batch=3] [--sigint_at_batch=3 --sigints=2]

The device count is set before JAX starts, which pytest's process cannot do.
The run goes through harmonax.cli as the trainer's command line does (one-line
errors, exit status 130 after an abort). --slurm leaves the distributed
settings to jax.distributed.initialize()'s detection (from the SLURM_*
variables the caller sets, as srun does).
"""

import argparse
import os
import signal
import sys


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("workdir")
  parser.add_argument("--total_steps", type=int, required=True)
  parser.add_argument("--devices", type=int, required=True)
  parser.add_argument("--checkpoint_every", type=int, default=2)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--sigterm_at_batch", type=int, default=0,
                      help="send SIGTERM to this process when it reads this batch")
  parser.add_argument("--sigint_at_batch", type=int, default=0,
                      help="send SIGINT (Ctrl-C) when it reads this batch")
  parser.add_argument("--sigints", type=int, default=1, help="how many SIGINTs then")
  parser.add_argument("--num_workers", type=int, default=0, help="grain worker processes")
  parser.add_argument("--slurm", action="store_true",
                      help="jax.distributed.initialize() detects everything")
  args = parser.parse_args()

  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:0] = [here, os.path.dirname(here)]

  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  logging.use_absl_handler()  # The progress lines, formatted as the trainer's CLI.
  logging.set_verbosity(logging.INFO)
  import jax  # pylint: disable=g-import-not-at-top
  import fake_family  # pylint: disable=g-import-not-at-top
  from harmonax import cli  # pylint: disable=g-import-not-at-top
  from harmonax import sharding  # pylint: disable=g-import-not-at-top
  from harmonax import train  # pylint: disable=g-import-not-at-top

  from harmonax import metric_writers  # pylint: disable=g-import-not-at-top
  metric_writers.quiet_library_logs()
  fake_family.enable_compilation_cache()
  if args.slurm:
    sharding.initialize_distributed()
  elif args.num_processes > 1:
    sharding.initialize_distributed(f"localhost:{args.port}", args.num_processes,
                                    args.process_id)
  assert jax.local_device_count() == args.devices, jax.devices()
  fake_family.register()
  fake_family.install_synthetic_data(setattr)
  signals = {args.sigterm_at_batch: [signal.SIGTERM],
             args.sigint_at_batch: [signal.SIGINT] * args.sigints}
  signals.pop(0, None)
  if signals:
    original, calls = sharding.global_batch, []

    def global_batch(local, mesh):
      calls.append(1)
      for signum in signals.get(len(calls), []):
        os.kill(os.getpid(), signum)
      return original(local, mesh)

    sharding.global_batch = global_batch
  config = fake_family.get_config()
  config.total_steps = args.total_steps
  config.checkpoint_every = args.checkpoint_every
  config.data.num_workers = args.num_workers

  def run(argv):
    del argv
    train.train_and_evaluate(config, args.workdir)

  sys.exit(cli.guarded(run)([]))


if __name__ == "__main__":
  main()
