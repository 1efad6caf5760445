"""The server that forks the embedded runner's worker processes, started as early as a command allows.

A worker started from scratch (``spawn``) pays a Python start and the library's imports, about a second
of CPU each, while the main process waits for it. The fork server (multiprocessing's ``forkserver``)
pays them once, then forks each worker ready to run. :func:`start` is cheap and returns at once: the
console script calls it before its own imports when ``run --workers N`` (N > 1) asks for workers, so the
server's imports run on another core while the main process imports and checks its inputs.

This module imports nothing of the library: the console script imports it before the rest.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Sequence
from multiprocessing import forkserver
from multiprocessing.context import BaseContext

__all__ = ["PRELOAD", "context", "let_server_end", "start", "stop", "workers_asked"]

PRELOAD = ["linumpy_motor.pipeline.jobs", "linumpy_motor.pipeline.steps", "linumpy_motor.stitch.assemble",
           "scipy.fft", "scipy.ndimage", "scipy.sparse.linalg"]
"""What the server imports once for every worker: the job runner, the steps' modules and the SciPy modules the
measurement and the stitch use (the library imports SciPy's modules where it first uses them, so that a resumed
run with nothing to do never imports them)."""

_started = False
"""Whether :func:`start` started the server (multiprocessing restarts it by itself if it ended)."""


def context() -> BaseContext:
    """The multiprocessing context the workers come from (the fork server, running: :func:`start`)."""
    start()
    return multiprocessing.get_context("forkserver")


def start() -> None:
    """Start the fork server, if it is not running, and return without waiting for its imports.

    It is started with Ctrl-C ignored, which it keeps (Python leaves an ignored SIGINT alone), and so is every
    worker it forks: a Ctrl-C at the terminal reaches every process of the run, and only the main process
    handles it (it stops the workers), so it prints one line and no traceback from a worker's start-up. The
    server ends when the main process does (its pipe to the main process closes).
    """
    global _started
    if _started:
        return
    multiprocessing.set_forkserver_preload(PRELOAD)
    # Blocked before it is ignored, a Ctrl-C that comes meanwhile waits (Linux keeps a blocked signal pending even
    # while it is ignored) and reaches this process's own handler once that is back.
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forkserver.ensure_running()
    finally:
        signal.signal(signal.SIGINT, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
    _started = True


def stop() -> None:
    """End the fork server :func:`start` started, now, and reap it (the command is done: its workers are gone).

    Left to end by itself, a server still importing for a run that had nothing to do (a resumed run) lives on up
    to a second after the command's last line, holding the command's standard output and error open: whatever
    reads them (a pipe, Nextflow, a CI log) waits for it. Its workers, if any were left, die with it.
    """
    global _started
    if not _started:
        return
    pid = getattr(forkserver._forkserver, "_forkserver_pid", None)  # no public way to end it at once
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        forkserver._forkserver._stop()  # type: ignore[attr-defined]  # closes its pipes, reaps it, removes its socket
    _started = False


def let_server_end() -> None:
    """In a worker: close its copy of the server's liveness pipe, which multiprocessing gives every process the
    server forks so that the server outlives them. The server then ends as soon as the main process does, and
    the worker with the server (its parent-death signal): nothing outlives a killed run."""
    fd = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)  # no public way to let go of it
    if fd is not None:
        os.close(fd)
        setattr(forkserver._forkserver, "_forkserver_alive_fd", None)  # noqa: B010 (typeshed lacks it)


def workers_asked(argv: Sequence[str]) -> int:
    """The ``--workers`` of a ``run`` command line, read before the program is imported (1 when not given or
    not a number: the command's own parser says what is wrong with it)."""
    if "run" not in argv:
        return 1
    args = list(argv[list(argv).index("run") + 1:])
    for k, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--workers=") else (
            args[k + 1] if arg == "--workers" and k + 1 < len(args) else None)
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return 1
    return 1
