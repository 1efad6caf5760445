"""Ctrl-C and SIGTERM in a command-line process: each ends the command with its exit code and one line,
and none can be swallowed.

A handler raises :class:`KeyboardInterrupt` (Ctrl-C) or :class:`~linumpy_motor.errors.Terminated`
(SIGTERM) in the main thread at once, so a wait or a long computation stops, and records the request.
Python drops an exception raised while a finalizer or a weak-reference callback runs ("Exception
ignored in ..."); such a drop is silenced here and the record stays, so the next safe point
(:func:`check`: each progress step, each job's end before its output is stamped, the command's end)
raises it again, and the next signal raises too. Only the first request raises otherwise: a second
SIGTERM during the clean-up is recorded, not raised, so the clean-up finishes. After :func:`finish`
the command's outcome is settled and signals change nothing more.

Running out of memory in a thread's start is dropped the same way, and would leave the thread that
started it waiting forever for it (Python's ``Thread.start``): a ``MemoryError`` that Python drops in
another thread is raised in the main thread instead, as a signal raises its exception there.

Nothing here imports more than the standard library, so a console script can install the handlers
before it imports the program.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import NoReturn

from linumpy_motor.errors import Terminated

__all__ = ["EXIT_INTERRUPTED", "EXIT_TERMINATED", "STARVED_SIGNAL", "check", "deferred", "end_process", "finish",
           "install", "outcome", "requested", "restore", "watch_memory"]

EXIT_INTERRUPTED = 130
"""Ctrl-C (128 + SIGINT, as a shell reports it)."""
EXIT_TERMINATED = 143
"""SIGTERM, as a scheduler's time limit sends (128 + SIGTERM)."""

SIGNALS = (signal.SIGINT, signal.SIGTERM)
STARVED_SIGNAL = signal.SIGUSR1
"""Sent by a thread to the main thread of its process when it dropped a ``MemoryError`` (:func:`_unraisable`)."""
_requested: int | None = None
"""The first signal received since :func:`install`."""
_dropped = False
"""The exception last raised for it was dropped by Python (raised inside a finalizer or callback)."""
_finished = False
_deferring = 0
"""Inside :func:`deferred`: a request is recorded, and raised only when the block ends."""
_starved = False
"""Another thread dropped a ``MemoryError``: the main thread raises it (:func:`_unraisable`)."""
_main_ident: int | None = None
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


def _raise_starved(signum: int | None = None, frame: FrameType | None = None) -> None:
    """Raise the ``MemoryError`` another thread dropped (not inside :func:`deferred`: at its end); the handler of
    :data:`STARVED_SIGNAL`."""
    global _starved
    if _starved and not _deferring and not _finished:
        _starved = False
        raise MemoryError("another thread ran out of memory")


def _unraisable(info) -> None:
    """Silence the drop of our own exception (it is raised again at the next safe point); raise a ``MemoryError``
    dropped in another thread in the main thread (:data:`STARVED_SIGNAL` ends its wait); report anything else."""
    global _dropped, _starved
    if _requested is not None and isinstance(info.exc_value, KeyboardInterrupt):
        _dropped = True
        return
    if isinstance(info.exc_value, MemoryError) and _main_ident is not None and threading.get_ident() != _main_ident:
        _starved = True
        signal.pthread_kill(_main_ident, STARVED_SIGNAL)
        _wake_starter(info.object)
        return
    _previous_hook(info)


def _wake_starter(function: object) -> None:
    """Wake whoever waits in ``Thread.start`` for the thread that dropped the error (Python reports the thread's
    ``_bootstrap`` method as the object of the drop).

    The signal alone could be lost: coming just before the starter's wait began (a loaded machine, 8 times in
    300 here), it was handled then, and nothing ended the wait. Woken, the starter's next step runs the
    signal's handler, which raises the error.
    """
    started = getattr(getattr(function, "__self__", None), "_started", None)  # no public way to end that wait
    if isinstance(started, threading.Event):
        started.set()


def install() -> bool:
    """Handle Ctrl-C and SIGTERM as described above (main thread only: elsewhere no handler can be set).

    A request recorded before (e.g. during the imports) is kept. Returns whether the handlers were
    installed now (False when not in the main thread or when they already were).
    """
    global _finished, _main_ident
    if threading.current_thread() is not threading.main_thread():
        return False
    _finished = False
    if signal.getsignal(signal.SIGTERM) is _handler:
        return False
    for signum in SIGNALS:
        _previous[signum] = signal.signal(signum, _handler)
    watch_memory()
    return True


def watch_memory() -> None:
    """Raise in the main thread a ``MemoryError`` that Python drops in another thread (a thread that could not
    start): what :func:`install` does besides the signals, and all a worker process needs (main thread only)."""
    global _main_ident
    if threading.current_thread() is not threading.main_thread():
        return
    _previous.setdefault(STARVED_SIGNAL, signal.signal(STARVED_SIGNAL, _raise_starved))
    _main_ident = threading.get_ident()
    sys.unraisablehook = _unraisable


def restore() -> None:
    """Put back the handlers :func:`install` replaced and forget any request (a command run in-process, by
    a test or a notebook, leaves its caller's signal handling as it was)."""
    global _requested, _dropped, _finished, _starved, _main_ident
    for signum, previous in _previous.items():
        signal.signal(signum, previous)  # type: ignore[arg-type]
    _previous.clear()
    sys.unraisablehook = _previous_hook
    _requested, _dropped, _finished, _starved, _main_ident = None, False, False, False, None


def requested() -> int | None:
    """The signal received since the handlers were installed, if any (SIGINT or SIGTERM)."""
    return _requested


def check() -> None:
    """A safe point: raise the exception of a request that was received (and perhaps dropped by Python), or the
    ``MemoryError`` another thread dropped.

    Call it only where the program may stop: between steps of work, never in a clean-up.
    """
    if _finished:
        return
    _raise_starved()
    if _requested is not None:
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


def end_process(code: int) -> NoReturn:
    """End the process of an interrupted command with ``code``, without finalizing the interpreter.

    The command's outcome is settled, its one line printed and its work in progress cleaned up, but threads
    of the libraries may still run work the interruption abandoned (zarr's I/O loop and its codec threads,
    a thread pool's last task), and objects the interruption left half-built may still be collected.
    Finalizing the interpreter under those threads aborted the process once in about 500 interruptions
    (SIGABRT, "Fatal Python error: PyThreadState_Get ... finalizing") instead of ending it with its code, and
    it waits for any still busy; collecting an asyncio event loop whose construction a Ctrl-C cut short
    printed "Exception ignored in ... BaseEventLoop.__del__" after the one line. The logs and the standard
    streams are flushed first.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more can be said on it
            pass
    os._exit(code)
