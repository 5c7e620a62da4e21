"""Writing files safely: the one atomic writer every output of the project goes through."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import shutil
from pathlib import Path

# `.NAME.PID.HEX.tmp`, the temporaries `atomic_path` makes (the pid says whether their writer can still finish them)
_TEMPORARY = re.compile(r"^\..+\.(\d+)\.[0-9a-f]{8}\.tmp$")
# errnos that mean "the disk (or a quota, or a file-size limit) is full" rather than "not allowed"
DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", errno.ENOSPC)})


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a fresh temporary path beside `path`; on success it replaces `path` in one `os.replace`, on any error it
    is removed. Every file the project writes goes through this, so a crash never leaves a half-written file.

    The temporary's name ends in `.tmp`: writers that pick a format from the extension (imageio, PIL) must be told
    the format explicitly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name created with O_EXCL (like mkstemp, but with the umask's permissions rather than 0600), so two
    # writers of the same file never share a temporary.
    tmp = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and e.filename is None:  # a failed write() names no file: name the target
            e.filename = str(path)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through `atomic_path`."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike):
    """Yield a fresh temporary folder beside `path` to fill; on success it takes the place of `path` (an old folder
    there is moved aside by one rename, replaced by another, then deleted), on any error it is deleted and the old
    folder stays as it was. For writers that make a folder of files (`save_pretrained`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}.{secrets.token_hex(4)}"
    tmp, old = path.parent / f".{path.name}.{tag}.tmpdir", path.parent / f".{path.name}.{tag}.old"
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            old.rename(path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def check_writable_folder(folder: str | os.PathLike) -> Path:
    """Create `folder` if needed and write (then delete) a probe file in it: an OSError now, before minutes of work,
    rather than when the result is saved."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    probe = folder / f".write-test.{os.getpid()}.{secrets.token_hex(4)}"
    probe.write_bytes(b"")
    probe.unlink()
    return folder


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporaries `atomic_path` left in `folder` when its writer was killed (SIGKILL, power cut): those
    whose writing process no longer runs. Returns what was removed; a missing folder has none."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = _TEMPORARY.match(entry.name)
        if m and entry.is_file() and not _alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                entry.unlink()
                removed.append(entry)
    return removed


def is_disk_full(error: BaseException) -> bool:
    """Whether an OSError says the disk (or quota, or the file-size limit) is full."""
    return isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS


def describe_write_error(error: OSError, what: str | os.PathLike) -> str:
    """One line for a failed write of `what` (an `atomic_path` temporary is named by its target), naming a full disk
    as such."""
    what = Path(what)
    m = _TEMPORARY.match(what.name)
    if m:
        what = what.parent / what.name[1:m.start(1) - 1]
    reason = error.strerror or str(error) or type(error).__name__
    if is_disk_full(error):
        return f"cannot write {what}: the disk is full ({reason})"
    return f"cannot write {what}: {reason}"
