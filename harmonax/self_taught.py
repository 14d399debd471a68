r"""Writes the next easy-to-hard self-taught round of Deep Image Compositing.

  python -m harmonax.self_taught --workdir=/tmp/dic_r0 --output=/tmp/dic_r1_data \
      [--harder=mask,foreground] [--bucket=64] [--max_examples=N]
  python -m harmonax.train \
      --config=configs/deep_compositing.py:runlocal,self_taught=/tmp/dic_r1_data \
      --workdir=/tmp/dic_r1

The model of --workdir (round k) runs on its original training triplets and
writes harder ones (its refined masks and/or its composites as inputs, the
targets unchanged) plus the unchanged test split into --output, a TFDS data dir
that `configs/deep_compositing.py:...,self_taught=DIR` trains on. What
"harder" means is an assumption (--harder; README, Deep Image Compositing).
The library is harmonax.self_taught_lib.
"""

from absl import app
from absl import flags

from harmonax import cli

_WORKDIR = flags.DEFINE_string("workdir", None, "The round-k deep_compositing workdir "
                               "(or save_networks directory).")
_OUTPUT = flags.DEFINE_string("output", None, "A new directory for round k + 1's data.")
_HARDER = flags.DEFINE_list("harder", ["mask"], "Which inputs the round-k model replaces: "
                            "'mask' (its refined mask), 'foreground' (its composite); an "
                            "assumption (harmonax.self_taught_lib).")
_BUCKET = flags.DEFINE_integer("bucket", 64, "Pad triplets to multiples of this (fewer compiles).")
_MAX_EXAMPLES = flags.DEFINE_integer("max_examples", -1, "Only the first N train triplets.")


def main(argv: list[str]) -> int:
  """The command line; returns the exit status."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if not (_WORKDIR.value and _OUTPUT.value):
    raise app.UsageError("--workdir and --output are required")
  from harmonax import self_taught_lib  # pylint: disable=g-import-not-at-top
  info = self_taught_lib.write_round(_WORKDIR.value, _OUTPUT.value, tuple(_HARDER.value),
                                     _BUCKET.value, _MAX_EXAMPLES.value)
  variant = "runlocal," if info["runlocal"] else ""
  print(f"Wrote self-taught round {info['round']} ({info['examples']['train']} train, "
        f"{info['examples']['test']} test triplets) to {_OUTPUT.value}; train on it with:\n"
        f"  python -m harmonax.train --config=configs/deep_compositing.py:{variant}"
        f"self_taught={_OUTPUT.value} --workdir=<round {info['round']} workdir>")
  return 0


if __name__ == "__main__":
  # Missing workdir, wrong family, bad flags: one line (--verbose for the traceback).
  cli.run(main, user_errors=(FileNotFoundError, ValueError))
