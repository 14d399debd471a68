"""Runs the trainer with the fake family in a fresh process (for multiprocess_test.py).

  python tests/train_worker.py WORKDIR --total_steps=4 --devices=4 \
      [--num_processes=2 --process_id=0 --port=12345]

The device count is set before JAX starts, which pytest's process cannot do.
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
  args = parser.parse_args()

  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  os.environ["JAX_PLATFORMS"] = "cpu"
  here = os.path.dirname(os.path.abspath(__file__))
  sys.path[:0] = [here, os.path.dirname(here)]

  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.mark_as_parsed()
  import jax  # pylint: disable=g-import-not-at-top
  import fake_family  # pylint: disable=g-import-not-at-top
  from harmonax import sharding  # pylint: disable=g-import-not-at-top
  from harmonax import train  # pylint: disable=g-import-not-at-top

  fake_family.enable_compilation_cache()
  if args.num_processes > 1:
    sharding.initialize_distributed(f"localhost:{args.port}", args.num_processes,
                                    args.process_id)
  assert jax.local_device_count() == args.devices, jax.devices()
  fake_family.register()
  fake_family.install_synthetic_data(setattr)
  if args.sigterm_at_batch:
    original, calls = sharding.global_batch, []

    def global_batch(local, mesh):
      calls.append(1)
      if len(calls) == args.sigterm_at_batch:
        os.kill(os.getpid(), signal.SIGTERM)
      return original(local, mesh)

    sharding.global_batch = global_batch
  config = fake_family.get_config()
  config.total_steps = args.total_steps
  config.checkpoint_every = args.checkpoint_every
  train.train_and_evaluate(config, args.workdir)


if __name__ == "__main__":
  main()
