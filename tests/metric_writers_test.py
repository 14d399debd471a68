"""Console hygiene: library INFO chatter is dropped, warnings and our lines kept."""

import logging as pylogging
import os

from absl import logging

from harmonax import metric_writers


def _record(pathname: str, level: int) -> pylogging.LogRecord:
  return pylogging.LogRecord("absl", level, pathname, 1, "message", None, None)


def _ours(handler) -> list[pylogging.Filter]:
  return [f for f in handler.filters if isinstance(f, metric_writers._LibraryInfoFilter)]  # pylint: disable=protected-access


def test_quiet_library_logs_drops_only_orbax_info():
  handler = logging.get_absl_handler()
  installed = _ours(handler)  # A CLI main() run by an earlier test may have added it.
  for f in installed:
    handler.removeFilter(f)
  try:
    metric_writers.quiet_library_logs()
    metric_writers.quiet_library_logs()  # Idempotent: one filter.
    assert len(_ours(handler)) == 1
    orbax_file = os.path.join(os.sep, "site-packages", "orbax", "checkpoint", "x.py")
    ours = os.path.join(os.sep, "repo", "harmonax", "train.py")
    assert not handler.filter(_record(orbax_file, pylogging.INFO))
    assert handler.filter(_record(orbax_file, pylogging.WARNING))
    assert handler.filter(_record(ours, pylogging.INFO))
    jax_file = os.path.join(os.sep, "site-packages", "jax", "_src", "xla_bridge.py")
    assert not handler.filter(_record(jax_file, pylogging.INFO))
    assert handler.filter(_record(jax_file, pylogging.WARNING))
  finally:
    for f in _ours(handler):
      handler.removeFilter(f)
    for f in installed:
      handler.addFilter(f)


def test_phase_says_what_runs_with_a_heartbeat_and_the_duration(caplog):
  import time  # pylint: disable=g-import-not-at-top
  with caplog.at_level(pylogging.INFO):
    with metric_writers.Phase("compiling the update step", every=0.05):
      time.sleep(0.3)
    with metric_writers.Phase("hidden", enabled=False):
      pass
  messages = [r.getMessage() for r in caplog.records]
  assert messages[0] == "compiling the update step ..."
  assert any(m.startswith("compiling the update step ... (") for m in messages[1:-1])
  assert messages[-1].startswith("compiling the update step: done in ")
  assert not any("hidden" in m for m in messages)


def test_item_progress_counts_with_the_total_and_a_rate(caplog, monkeypatch):
  clock = iter([0.0, 1.0, 5.0, 12.0, 13.0])  # start, then one time per tick.
  monkeypatch.setattr(metric_writers.time, "monotonic", lambda: next(clock))
  with caplog.at_level(pylogging.INFO):
    progress = metric_writers.ItemProgress("frames written", total=4, every=10.0)
    for _ in range(4):
      progress.tick()
  # Only the tick 10 s after the start is logged: 3 items in 12 s.
  assert [r.getMessage() for r in caplog.records] == ["frames written: 3/4 (0.25/s)"]
  assert progress.count == 4
