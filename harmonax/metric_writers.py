"""Where training metrics go: console, TensorBoard event files and metrics.jsonl.

Only process 0 writes; on other processes a writer is a silent no-op, so the
trainer can call it unconditionally.
"""

import json
import logging as pylogging
import os
import threading
import time
from typing import Mapping

from absl import logging
from etils import epath
import numpy as np

METRICS_FILE = "metrics.jsonl"


def image_grid(composite: np.ndarray, output: np.ndarray, real: np.ndarray,
               mask: np.ndarray, max_rows: int = 4) -> np.ndarray:
  """One row per example: composite | output | real | mask, as uint8 [R*H, 4*W, 3]."""
  n = min(max_rows, composite.shape[0])
  if n == 0:
    raise ValueError("image_grid needs at least one example")
  mask3 = np.broadcast_to(mask[:n], mask[:n].shape[:-1] + (3,))
  rows = [np.concatenate([composite[i], output[i], real[i], mask3[i]], axis=1)
          for i in range(n)]
  grid = np.concatenate(rows, axis=0)
  return (np.clip(grid, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class _LibraryInfoFilter(pylogging.Filter):
  """Drops INFO (and lower) records logged from inside the named packages
  (path fragments: 'orbax', 'jax/_src')."""

  def __init__(self, packages: tuple[str, ...]):
    super().__init__()
    self._parts = tuple(f"{os.sep}{p}{os.sep}" for p in packages)

  def filter(self, record: pylogging.LogRecord) -> bool:
    return record.levelno >= pylogging.WARNING or not any(
        part in record.pathname for part in self._parts)


def quiet_library_logs(packages: tuple[str, ...] = ("orbax", os.path.join("jax", "_src"),
                                                    "jax2onnx", "onnx_ir")) -> None:
  """Keeps the console to our progress lines: orbax logs ~30 INFO lines per save
  through absl logging, JAX one per missing backend on every start ("Unable to
  initialize backend 'tpu' ...") and jax2onnx a few per export; their warnings
  and errors still show."""
  handler = logging.get_absl_handler()
  if not any(isinstance(f, _LibraryInfoFilter) for f in handler.filters):
    handler.addFilter(_LibraryInfoFilter(packages))


class Phase:
  """Says what a long silent stretch is doing, with the elapsed time.

  Logs '<what> ...' on entry (or `start()`), '<what> ... (N s)' every `every` s while it
  runs (a heartbeat: a minute-long compilation otherwise looks like a hang), and
  '<what>: done in N s' on exit or on `done()`, whichever comes first. A no-op
  when not enabled (e.g. on processes other than 0).

    with metric_writers.Phase("compiling the update step"):
      state = train_step(state, batch)
  """

  def __init__(self, what: str, every: float = 30.0, enabled: bool = True):
    self._what = what
    self._every = every
    self._enabled = enabled
    self._stop = threading.Event()
    self._thread = None
    self._start = None

  def start(self) -> "Phase":
    """Starts the phase (as entering the `with` block); returns self."""
    if self._enabled and self._thread is None:
      self._start = time.monotonic()
      logging.info("%s ...", self._what)
      self._thread = threading.Thread(target=self._heartbeat, daemon=True,
                                      name="harmonax-phase")
      self._thread.start()
    return self

  def __enter__(self) -> "Phase":
    return self.start()

  def _heartbeat(self) -> None:
    while not self._stop.wait(self._every):
      logging.info("%s ... (%.0f s)", self._what, time.monotonic() - self._start)

  def done(self) -> None:
    """Ends the phase (idempotent): stops the heartbeat, logs the duration."""
    if self._thread is None or self._stop.is_set():
      return
    self._stop.set()
    self._thread.join()
    logging.info("%s: done in %.1f s", self._what, time.monotonic() - self._start)

  def __exit__(self, *exc) -> None:
    if exc[0] is not None and self._thread is not None:
      self._stop.set()  # Failed: the error says what happened.
      return
    self.done()


class ItemProgress:
  """Logs '<what>: N/total (x/s)' at most every `every` s while items are counted.

  For loops over files or frames (harmonize's folders and videos), where a
  long run would otherwise print nothing until its end:

    progress = metric_writers.ItemProgress("harmonized", total=len(files))
    for f in files:
      ...
      progress.tick()
  """

  def __init__(self, what: str, total: int | None = None, every: float = 10.0):
    self._what, self._total, self._every = what, total, every
    self.count = 0
    self._start = self._last = time.monotonic()

  def tick(self) -> None:
    self.count += 1
    now = time.monotonic()
    if now - self._last >= self._every:
      self._last = now
      of = f"/{self._total}" if self._total else ""
      logging.info("%s: %d%s (%.2f/s)", self._what, self.count, of,
                   self.count / (now - self._start))


class MetricWriter:
  """Scalars -> TensorBoard + metrics.jsonl; images -> TensorBoard.

  A run resumed from step `resume_step` first drops the metrics.jsonl lines of
  later steps (written by the previous run after its last checkpoint, and about
  to be written again) and a truncated last line, so each step appears once;
  TensorBoard is told to purge those steps from the older event files too.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True,
               resume_step: int | None = None):
    self._enabled = enabled
    self._tb = None
    self._path = epath.Path(workdir) / METRICS_FILE
    # GCS objects cannot be appended to: remote files are rewritten on flush.
    self._remote = "://" in os.fspath(workdir)
    self._pending: list[str] = []
    if not enabled:
      return
    self._path.parent.mkdir(parents=True, exist_ok=True)
    if resume_step is not None:
      self._drop_steps_after(resume_step)
    from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
    self._tb = SummaryWriter(
        logdir=os.fspath(workdir), flush_secs=30,
        purge_step=None if resume_step is None else resume_step + 1)

  def _drop_steps_after(self, step: int) -> None:
    """Rewrites metrics.jsonl without lines of steps > `step` or unreadable lines."""
    if not self._path.exists():
      return
    lines = self._path.read_text().splitlines()
    kept = []
    for line in lines:
      try:
        if int(json.loads(line)["step"]) <= step:
          kept.append(line)
      except (ValueError, KeyError, TypeError):
        pass  # A line cut off by a killed run.
    if len(kept) == len(lines):
      return
    text = "".join(line + "\n" for line in kept)
    if self._remote:
      self._path.write_text(text)
    else:
      tmp = self._path.parent / (self._path.name + ".tmp")
      tmp.write_text(text)
      tmp.replace(self._path)  # Atomic: a kill now leaves the old file.
    logging.info("Resuming at step %d: dropped %d lines of later steps from %s",
                 step, len(lines) - len(kept), self._path)

  def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
    """One JSON line {"step": step, **scalars} and one TensorBoard scalar each."""
    if not self._enabled:
      return
    values = {k: float(v) for k, v in scalars.items()}
    for key, value in values.items():
      self._tb.add_scalar(key, value, step)
    self._pending.append(json.dumps({"step": int(step), **values}))

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """Images as uint8 or [0, 1] floats, HWC."""
    if not self._enabled:
      return
    for key, image in images.items():
      self._tb.add_image(key, np.asarray(image), step, dataformats="HWC")

  def flush(self) -> None:
    """Writes pending JSON lines and TensorBoard events."""
    if not self._enabled:
      return
    if self._pending:
      text = "".join(line + "\n" for line in self._pending)
      if self._remote:
        old = self._path.read_text() if self._path.exists() else ""
        self._path.write_text(old + text)
      else:
        with self._path.open("a") as f:
          f.write(text)
      self._pending = []
    self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the event file."""
    if not self._enabled:
      return
    self.flush()
    self._tb.close()
    self._enabled = False


class Progress:
  """Steps/s, images/s and ETA between consecutive `report` calls."""

  def __init__(self, first_step: int, total_steps: int, batch_size: int):
    self._total = total_steps
    self._batch_size = batch_size
    self._last_step = first_step
    self._last_time = time.monotonic()

  def reset(self, step: int) -> None:
    """Restarts the clock (e.g. after compilation, evaluation or a checkpoint)."""
    self._last_step, self._last_time = step, time.monotonic()

  def report(self, step: int) -> dict[str, float]:
    """{'steps_per_sec', 'images_per_sec', 'eta_sec'} since the previous report.

    Empty when no step was made since then (e.g. right after `reset`).
    """
    now = time.monotonic()
    if step <= self._last_step:
      return {}
    rate = (step - self._last_step) / max(now - self._last_time, 1e-9)
    self._last_step, self._last_time = step, now
    return {"steps_per_sec": rate, "images_per_sec": rate * self._batch_size,
            "eta_sec": (self._total - step) / rate}


def console_line(step: int, total_steps: int, scalars: Mapping[str, float]) -> str:
  """'[step 10/100] loss/generator=0.0123 ... 3.2 steps/s, 25.6 img/s, ETA 0:00:28'."""
  speed = ("steps_per_sec", "images_per_sec", "eta_sec")
  parts = [f"{k}={v:.4g}" for k, v in sorted(scalars.items()) if k not in speed]
  if "steps_per_sec" in scalars:
    eta = scalars["eta_sec"]
    if eta < 86400:
      eta_text = time.strftime("%H:%M:%S", time.gmtime(eta))
    else:
      eta_text = f"{eta / 86400:.1f}d"
    parts.append(f"{scalars['steps_per_sec']:.3g} steps/s, "
                 f"{scalars['images_per_sec']:.3g} img/s, ETA {eta_text}")
  return f"[step {step}/{total_steps}] " + " ".join(parts)


def log_console(step: int, total_steps: int, scalars: Mapping[str, float],
                enabled: bool = True) -> None:
  """Logs `console_line` (INFO) on the writing process."""
  if enabled:
    logging.info("%s", console_line(step, total_steps, scalars))
