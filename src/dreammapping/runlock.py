"""One writer per run folder: an advisory lock (`fcntl.flock`) on the folder itself, held for the whole run.

`generate`, `generate --resume` and every run of `batch` go through `train()`, which holds `run_lock(RUN)` from
before it looks at the folder until its last file is written. A second process that wants the same folder gets
`RunBusyError` (one line, exit 11) at once, before it reads or writes anything, instead of both runs writing
`loss.csv` and `checkpoint.pt` in turn. The lock is on the folder's own file descriptor (no lock file to leave
behind or to race over) and the kernel drops it when the process ends, however it ends (SIGKILL included), so a
killed run never leaves its folder locked. Advisory: only this program's writers honour it. Where the file system
has no flock (some network file systems), the run goes on unlocked.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from pathlib import Path

from dreammapping.errors import OutputError, RunBusyError


@contextlib.contextmanager
def run_lock(run_dir: str | os.PathLike, create: bool = True):
    """Hold the run folder's lock for the `with` body; create the folder first when `create` (a fresh run). A folder
    that does not exist and is not to be created is not locked (the caller reports that there is nothing to
    resume). RunBusyError when another process holds it; OutputError when the folder cannot be made or opened."""
    run_dir = Path(run_dir)
    try:
        if create:
            run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except FileNotFoundError:
        if create:
            raise OutputError(f"cannot create the run folder {run_dir}") from None
        yield
        return
    except NotADirectoryError:
        raise OutputError(f"cannot write to the output folder {run_dir}: it, or a folder above it, is a file") \
            from None
    except OSError as e:
        raise OutputError(f"cannot write to the output folder {run_dir}: {e.strerror or e}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunBusyError(f"{run_dir} is in use by another dreammapping process (a run or --resume of it is "
                               "going on); wait for it to finish, or choose another --out") from None
        except OSError as e:
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def is_locked(run_dir: str | os.PathLike) -> bool:
    """Whether some process holds `run_dir`'s lock now (for tests and tools; a snapshot, not a guarantee)."""
    try:
        fd = os.open(run_dir, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False
