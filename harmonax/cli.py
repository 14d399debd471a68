"""One-line errors for the command lines: `cli.run(main)` instead of `app.run(main)`.

A routine mistake (a missing workdir, an unbuilt dataset, a state dict of the
wrong model) should read as one line that says what to do, not as a traceback:

  def main(argv):
    ...
    raise cli.UserError(f"{path} is not a training workdir: run harmonax.train first")

  if __name__ == "__main__":
    cli.run(main, user_errors=(FileNotFoundError,))

`run` prints `error: <message>` on stderr and exits with status 1 for
`UserError` and the exception types the tool lists as routine (each tool knows
which library errors are the user's: e.g. convert's StateDictMismatchError);
every other exception is a bug and keeps its traceback. `--verbose` shows the
traceback of routine errors too. Ctrl-C prints `interrupted` and exits with
status 130. The module depends on absl only, so library modules may raise
`UserError` (or subclass it) without importing any tool.
"""

from collections.abc import Callable, Sequence
import sys

from absl import app
from absl import flags

EXIT_USER_ERROR = 1
EXIT_INTERRUPTED = 130  # 128 + SIGINT, what shells report for Ctrl-C.


class UserError(Exception):
  """An error the user can fix; the message says how. Printed without a traceback."""


def _define_verbose() -> None:
  if "verbose" not in flags.FLAGS:
    flags.DEFINE_bool("verbose", False, "Print full tracebacks for routine errors too.")


def _verbose() -> bool:
  f = flags.FLAGS
  return "verbose" in f and f.is_parsed() and bool(f.verbose)


def guarded(main: Callable[[list[str]], int | None],
            user_errors: Sequence[type[BaseException]] = ()
            ) -> Callable[[list[str]], int | None]:
  """`main` with routine errors turned into `error: ...` lines and exit status 1.

  Args:
    main: an absl main, `(argv) -> exit status or None`.
    user_errors: exception types that are the user's to fix in this tool,
      in addition to `UserError`.

  Returns:
    A main for `app.run` (or to call directly): it returns main's status,
    EXIT_USER_ERROR after a routine error, EXIT_INTERRUPTED after Ctrl-C.
  """
  routine = (UserError, *user_errors)

  def wrapped(argv: list[str]) -> int | None:
    try:
      return main(argv)
    except app.UsageError as e:
      # absl would print the module's whole docstring above the one line that matters.
      if _verbose():
        raise
      print(f"error: {e} (--help for usage)", file=sys.stderr)
      return EXIT_USER_ERROR
    except routine as e:
      if _verbose():
        raise
      print(f"error: {e}", file=sys.stderr)
      return EXIT_USER_ERROR
    except KeyboardInterrupt:
      if _verbose():
        raise
      print("interrupted", file=sys.stderr)
      return EXIT_INTERRUPTED

  return wrapped


def _verbose_in(argv: list[str]) -> bool:
  """Whether argv sets --verbose (before the flags are parsed)."""
  return any(a in ("--verbose", "-verbose") or a.split("=", 1)[0] in ("--verbose", "-verbose")
             and a.split("=", 1)[1].lower() in ("1", "t", "true", "y", "yes") for a in argv)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with a mistyped config field as one line.

  `--config.modle.ch=3` (`--config.model.chh=3`) raises a KeyError
  (AttributeError) with ml_collections' "Did you mean" hint while the flags
  are parsed, before any main runs and outside `guarded`. Only one naming a
  part of a `--config.` override is taken for a typo; any other (a bug in a
  config file) keeps its traceback.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (KeyError, AttributeError) as e:  # A missing block, a missing leaf.
    text = e.args[0] if e.args else ""
    while isinstance(text, KeyError) and text.args:  # An AttributeError wraps one.
      text = text.args[0]
    text = str(text)
    first = text.splitlines()[0:1] or [""]
    key = first[0].strip("'\"")
    overrides = [a.split("=", 1)[0] for a in argv if a.startswith("--config.")]
    # ml_collections names the path it looked up ("Attempting to lookup:
    # model.ch.x") where the missing part is an attribute of a value.
    looked_up = text.rpartition("Attempting to lookup:")[2].strip()
    if looked_up and any(o == f"--config.{looked_up}" for o in overrides):
      key = looked_up.rpartition(".")[2]
    if _verbose_in(argv) or not key or not any(
        key in o.split(".")[1:] for o in overrides):
      raise
    hint = " ".join(text.split()[1:])  # "Did you mean ...", if any.
    print(f"error: bad flag: no such config field {key!r}{' ' + hint if hint else ''} "
          f"(in {', '.join(o for o in overrides if key in o.split('.'))})", file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)


def run(main: Callable[[list[str]], int | None],
        user_errors: Sequence[type[BaseException]] = ()) -> None:
  """`app.run(guarded(main, user_errors))`, with a `--verbose` flag; does not return.

  Sets harmonax's default XLA flags first (`xla_setup.configure`: oneDNN on
  CPU where supported), before main can start a JAX backend, and keeps
  orbax's and JAX's INFO lines off the console
  (`metric_writers.quiet_library_logs`).
  """
  from harmonax import metric_writers  # pylint: disable=g-import-not-at-top
  from harmonax import xla_setup  # pylint: disable=g-import-not-at-top
  xla_setup.configure()
  metric_writers.quiet_library_logs()
  _define_verbose()
  app.run(guarded(main, user_errors), flags_parser=_parse_flags)
