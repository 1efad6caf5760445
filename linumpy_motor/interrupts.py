"""Ctrl-C and SIGTERM in a command-line process: each ends the command with its exit code and one line,
and none can be swallowed.

A handler raises :class:`KeyboardInterrupt` (Ctrl-C) or :class:`~linumpy_motor.errors.Terminated`
(SIGTERM) in the main thread at once, so a wait or a long computation stops, and records the request.
Python drops an exception raised while a finalizer or a weak-reference callback runs ("Exception
ignored in ..."); such a drop is silenced here and the record stays, so the next safe point
(:func:`check`: each progress step, each job's end before its output is stamped, the command's end)
raises it again, and the next signal raises too. Only the first request raises otherwise: a second
SIGTERM during the clean-up is recorded, not raised, so the clean-up finishes. After :func:`finish`
the command's outcome is settled and signals change nothing more. Nothing here imports more than the
standard library, so a console script can install the handlers before it imports the program.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

from linumpy_motor.errors import Terminated

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "check", "deferred", "finish", "install", "outcome", "requested",
           "restore"]

EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT, as a shell reports it)."""
EXIT_TERMINATED = 143
"""SIGTERM, as a scheduler's time limit sends (128 + SIGTERM)."""

SIGNALS = (signal.SIGINT, signal.SIGTERM)
_requested: int | None = None
"""The first signal received since :func:`install`."""
_dropped = False
"""The exception last raised for it was dropped by Python (raised inside a finalizer or callback)."""
_finished = False
_deferring = 0
"""Inside :func:`deferred`: a request is recorded, and raised only when the block ends."""
_previous: dict[int, object] = {}
_previous_hook = sys.unraisablehook


def _exception(signum: int) -> KeyboardInterrupt:
    return Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()


def _handler(signum: int, frame: FrameType | None) -> None:
    global _requested, _dropped
    if _finished:
        return
    first = _requested is None
    if first:
        _requested = signum
    if _deferring:
        return
    if first or _dropped:
        _dropped = False
        raise _exception(_requested if _requested is not None else signum)


def _unraisable(info) -> None:
    """Silence the drop of our own exception (it is raised again at the next safe point); report anything else."""
    global _dropped
    if _requested is not None and isinstance(info.exc_value, KeyboardInterrupt):
        _dropped = True
        return
    _previous_hook(info)


def install() -> bool:
    """Handle Ctrl-C and SIGTERM as described above (main thread only: elsewhere no handler can be set).

    A request recorded before (e.g. during the imports) is kept. Returns whether the handlers were
    installed now (False when not in the main thread or when they already were).
    """
    global _finished
    if threading.current_thread() is not threading.main_thread():
        return False
    _finished = False
    if signal.getsignal(signal.SIGTERM) is _handler:
        return False
    for signum in SIGNALS:
        _previous[signum] = signal.signal(signum, _handler)
    sys.unraisablehook = _unraisable
    return True


def restore() -> None:
    """Put back the handlers :func:`install` replaced and forget any request (a command run in-process, by
    a test or a notebook, leaves its caller's signal handling as it was)."""
    global _requested, _dropped, _finished
    for signum, previous in _previous.items():
        signal.signal(signum, previous)  # type: ignore[arg-type]
    _previous.clear()
    sys.unraisablehook = _previous_hook
    _requested, _dropped, _finished = None, False, False


def requested() -> int | None:
    """The signal received since the handlers were installed, if any (SIGINT or SIGTERM)."""
    return _requested


def check() -> None:
    """A safe point: raise the exception of a request that was received (and perhaps dropped by Python).

    Call it only where the program may stop: between steps of work, never in a clean-up.
    """
    if _requested is not None and not _finished:
        raise _exception(_requested)


@contextmanager
def deferred() -> Iterator[None]:
    """Run a block that an exception must not cut in the middle (spawning a worker process: cut between its
    start and its registration, the worker would be known to nothing that stops it); a Ctrl-C or SIGTERM
    received meanwhile is raised when the block ends."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1
    if not _deferring:
        check()


def finish() -> int | None:
    """Settle the command's outcome: from now on signals are ignored; return the request received, if any."""
    global _finished
    _finished = True
    return _requested


def outcome(exc: BaseException | None = None) -> tuple[int, str] | None:
    """The exit code and the words of the one line for an interruption (``exc``, or the recorded request),
    None when there was none."""
    signum = _requested if _requested is not None else (
        signal.SIGTERM if isinstance(exc, Terminated) else signal.SIGINT if isinstance(exc, KeyboardInterrupt)
        else None)
    if signum is None:
        return None
    if signum == signal.SIGTERM:
        return EXIT_TERMINATED, "terminated (rerun to resume)"
    return EXIT_INTERRUPTED, "interrupted (rerun to resume)"
