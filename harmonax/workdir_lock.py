"""One trainer per workdir: an advisory lock on `<workdir>/train.lock`.

Two trainers on one workdir overwrite each other's config and delete each
other's in-progress checkpoints. `hold(workdir)` takes an exclusive
`fcntl.flock` on the lock file for the duration of a run; a second trainer
fails at once with `WorkdirBusyError`, naming the process that holds it. The
kernel drops the lock when its process ends, however it ends (kill -9, a
crash, a reboot), so a dead run never leaves the workdir stuck; the file itself
stays, holding the last owner's pid, host and start time for the message.

Only local paths are locked (flock needs a file system; over NFS Linux maps it
to a POSIX lock). gs:// workdirs are not locked: object stores have no locks.
The trainer takes the lock on process 0 only.
"""

from collections.abc import Iterator
import contextlib
import errno
import os
import socket
import time

from harmonax import cli

try:
  import fcntl  # pylint: disable=g-import-not-at-top
except ImportError:  # Windows: no locking.
  fcntl = None

LOCK_FILE = "train.lock"


class WorkdirBusyError(cli.UserError):
  """Another live trainer holds the workdir's lock."""


class WorkdirUnusableError(cli.UserError):
  """The workdir cannot be created or written (a file in its path, no permission)."""


def _owner(path: str) -> str:
  try:
    with open(path, encoding="utf-8") as f:
      return f.read().strip() or "an unknown process"
  except OSError:
    return "an unknown process"


@contextlib.contextmanager
def hold(workdir: str | os.PathLike, enabled: bool = True) -> Iterator[None]:
  """Holds `<workdir>/train.lock` (created with the workdir) until the block ends.

  Args:
    workdir: the training workdir; URLs (gs://...) are not locked.
    enabled: False makes this a no-op (processes other than 0).

  Raises:
    WorkdirBusyError: another live process holds the lock.
    WorkdirUnusableError: the workdir or its lock file cannot be created.
  """
  workdir = os.fspath(workdir)
  if not enabled or fcntl is None or "://" in workdir:
    yield
    return
  path = os.path.join(workdir, LOCK_FILE)
  try:
    os.makedirs(workdir, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
  except OSError as e:
    raise WorkdirUnusableError(
        f"cannot use {workdir} as the workdir ({e.strerror or e}: {e.filename or path}); "
        "pass a writable --workdir") from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      if e.errno not in (errno.EWOULDBLOCK, errno.EACCES, errno.EAGAIN):
        raise
      raise WorkdirBusyError(
          f"workdir {workdir} is in use by another trainer ({_owner(path)}); "
          "wait for it, stop it (SIGTERM or Ctrl-C saves a checkpoint), or pass "
          "another --workdir") from None
    os.ftruncate(fd, 0)
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}, "
                 f"started {started}\n".encode())
    try:
      yield
    finally:
      fcntl.flock(fd, fcntl.LOCK_UN)
  finally:
    os.close(fd)
