"""SIGTERM handled as Ctrl-C: what `kill`, a service manager, a scheduler's time limit or a closing terminal send.

`term_as_interrupt()` installs a SIGTERM handler that does whatever the current SIGINT handler would do: in a
running `generate` (train's step-boundary flag) the run checkpoints at the next step and stops, a second signal stops
at once; elsewhere KeyboardInterrupt unwinds. A process whose SIGINT is ignored (an idle `batch` pool worker) exits
with 143. `train()` turns the Interrupted of a run stopped this way into `Terminated` (exit 143, same checkpoint and
message). `parent_death_signal()` asks Linux to send SIGTERM to a worker when its parent dies, however it dies, so
`batch`'s pool workers never outlive it.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import threading

from dreammapping.errors import EXIT_TERMINATED

_received = threading.Event()  # a SIGTERM arrived while the handler was installed


def sigterm_received() -> bool:
    return _received.is_set()


def note_sigterm() -> None:
    """For a SIGTERM handler of its own (batch's driver): make `sigterm_received()` true."""
    _received.set()


def _handle(signum, frame) -> None:
    _received.set()
    handler = signal.getsignal(signal.SIGINT)
    if handler is signal.SIG_IGN:  # nothing of ours runs here (an idle pool worker): just end
        raise SystemExit(EXIT_TERMINATED)
    if callable(handler):
        handler(signal.SIGINT, frame)
        return
    raise KeyboardInterrupt


@contextlib.contextmanager
def term_as_interrupt():
    """SIGTERM acts as Ctrl-C inside the `with` body (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = signal.signal(signal.SIGTERM, _handle)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def install_term_as_interrupt() -> None:
    """The same for the rest of the process (pool workers, which have no `with` around their life)."""
    _received.clear()
    signal.signal(signal.SIGTERM, _handle)


def parent_death_signal(signum: int = signal.SIGTERM) -> bool:
    """Linux: deliver `signum` to this process when its parent exits (prctl PR_SET_PDEATHSIG); False elsewhere."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(1, int(signum), 0, 0, 0) == 0  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return False
