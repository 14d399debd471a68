"""Console hygiene: library INFO chatter is dropped, warnings and our lines kept."""

import logging as pylogging
import os

from absl import logging

from harmonax import metric_writers


def _record(pathname: str, level: int) -> pylogging.LogRecord:
  return pylogging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_quiet_library_logs_drops_only_orbax_info():
  handler = logging.get_absl_handler()
  before = list(handler.filters)
  try:
    metric_writers.quiet_library_logs()
    metric_writers.quiet_library_logs()  # Idempotent: one filter.
    added = [f for f in handler.filters if f not in before]
    assert len(added) == 1
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "x.py")
    ours = os.path.join(os.sep, "repo", "harmonax", "train.py")
    assert not handler.filter(_record(orbax_file, pylogging.INFO))
    assert handler.filter(_record(orbax_file, pylogging.WARNING))
    assert handler.filter(_record(ours, pylogging.INFO))
  finally:
    for f in list(handler.filters):
      if f not in before:
        handler.removeFilter(f)
