"""Running the embedded runner's jobs: in this process, or in worker processes that Ctrl-C, SIGTERM and
the out-of-memory killer stop cleanly, with each job's output stamped as it finishes."""

from __future__ import annotations

import ctypes
import functools
import gc
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import resource_tracker
from multiprocessing.connection import Connection
from pathlib import Path

from tqdm.std import tqdm as std_tqdm

from linumpy_motor import interrupts, memory
from linumpy_motor.errors import InputError, OutOfMemory
from linumpy_motor.io import outputs
from linumpy_motor.parallel import threads_per_worker
from linumpy_motor.pipeline import logs, worker_server
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.pipeline.resume import Stamps, claimant
from linumpy_motor.qc.figures import FigureJob

__all__ = ["PROGRESS_UNITS", "WAIT_S", "Workers", "run_jobs", "threads_per_job"]

logger = logging.getLogger(__name__)


WAIT_S = 0.2
"""How often the main process, waiting for its workers, checks for a stop request (:func:`interrupts.check`)."""

_STARTED: Connection | None = None
"""In a worker process: the pipe it reports each job's start on (see :func:`_init_worker`)."""


PR_SET_PDEATHSIG = 1
"""Linux ``prctl`` option: the signal a process gets when its parent dies (``<linux/prctl.h>``)."""


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def _die_with(main: int) -> int:
    """Have Linux kill this process with SIGKILL when its parent dies, whatever kills it: the parent is the fork
    server (:mod:`~linumpy_motor.pipeline.worker_server`), which ends when the main process ``main`` ends. If
    the main process is already gone, end now. Returns the parent's pid."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    worker_server.let_server_end()
    parent = os.getppid()
    if not _alive(main):
        os._exit(1)
    return parent


def _check_claim(main: int, parent: int, outdir: Path, token: str | None) -> None:
    """Before a worker renames an output into place: the main process that started it is alive (and so is the
    worker's parent, which ends with it) and its run still holds the output folder (a rerun's outputs are never
    replaced by a worker of an earlier run)."""
    if os.getppid() != parent or not _alive(main):
        raise InputError(outdir, "the run this worker belonged to has ended; its output is not kept")
    if claimant(outdir) != token:
        raise InputError(outdir, "another linumpy-motor run took over this folder; this worker's output is not kept")


def _init_worker(started, log_config: logs.LogConfig, main: int, outdir: Path, token: str | None) -> None:
    """Set up a worker: it dies with the main process ``main`` and renames an output into place only
    while that process lives and its run (``token``) holds ``outdir`` (:func:`_check_claim`); Ctrl-C is
    left to the main process (it stops the workers: one message, no tracebacks), progress bars lock with a
    thread lock (tqdm's default semaphore would leak when the worker is stopped), and each job's start is
    reported on the pipe ``started`` as ``(pid, label)`` (one short message per write, so writes from
    several workers do not interleave); a job's thread that cannot start for lack of memory ends the job with a
    ``MemoryError`` (:func:`interrupts.watch_memory`)."""
    global _STARTED
    parent = _die_with(main)
    memory.limit_arenas()
    interrupts.watch_memory()  # a thread of a job that cannot start ends the job, not waits for ever
    outputs.set_claim(functools.partial(_check_claim, main, parent, outdir, token))
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # so it was since its birth (worker_server.start)
    std_tqdm.set_lock(threading.RLock())  # set on tqdm's base class: every bar class uses it
    logs.init_worker(log_config)
    _STARTED = started


def _call(step: str, label: str, function: Callable, kwargs: dict) -> None:
    """Run one job; running out of memory is one line naming the step and the slice (:func:`memory.out_of_memory`)."""
    try:
        function(**kwargs)
    except memory.OUT_OF_MEMORY_ERRORS as exc:
        if not memory.is_out_of_memory(exc):
            raise
        raise memory.out_of_memory(step, label, exc) from None


def _call_in_worker(step: str, label: str, function: Callable, kwargs: dict) -> None:
    if _STARTED is None:
        raise RuntimeError("_call_in_worker runs only in a worker set up by _init_worker")
    _STARTED.send((os.getpid(), label))
    _call(step, label, function, kwargs)


def _job_label(output: Path, kwargs: dict) -> str:
    """What a job works on, for messages: its slice store, else its output."""
    return str(kwargs.get("source", output))


def _lost_worker(pool: ProcessPoolExecutor, started, futures: dict) -> OutOfMemory:
    """The error for a worker process that died (e.g. killed by the out-of-memory killer), naming its slice."""
    processes = dict(pool._processes or {})  # the executor keeps no public record of how a worker ended
    labels = {}
    while started.poll():
        pid, label = started.recv()
        labels[pid] = label
    dead: list[tuple[str, int | None]] = []
    deadline = time.monotonic() + 2  # a killed process's pipes close a moment before it can be reaped
    while True:
        codes = {pid: process.exitcode for pid, process in processes.items()}
        dead = [(labels[pid], code) for pid, code in codes.items()
                if pid in labels and code is not None and code < 0 and code != -signal.SIGTERM]
        if dead or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    if not dead:  # how it ended is unknown: name every job that started and did not finish
        unfinished = {label for future, (_, _, label) in futures.items() if not future.done() or future.exception()}
        dead = [(label, None) for label in sorted(set(labels.values()) & unfinished)] or [("a slice", None)]
    label, code = dead[0]
    how = f"killed by {signal.Signals(-code).name}" if code else "ended abruptly"
    return OutOfMemory(label, f"its worker process was {how}, most likely by the system for lack of memory: "
                             "rerun with fewer --workers or with more memory (finished slices are kept)")


def _stop_workers(pool: ProcessPoolExecutor, todo: list) -> None:
    """Stop every worker now (SIGTERM: its default action, no clean-up in the worker) and wait for them,
    then remove the temporaries those processes left: nothing is written after this returns."""
    processes = dict(pool._processes or {})
    for process in processes.values():
        process.terminate()
    pool.shutdown(wait=True, cancel_futures=True)
    for output, *_ in todo:
        outputs.remove_temporaries(output.parent, [output.name], processes)


class Workers:
    """The worker processes of one run, shared by its steps: started by the first step that runs jobs in
    parallel, reused by every later one (a pool costs each worker a Python start and the library's imports,
    about a second), stopped when the run ends (``with Workers(count, outdir) as workers:``).

    Parameters
    ----------
    count : int
        Most worker processes (``--workers``); a step starts no more than it has jobs.
    outdir : Path
        The output folder of the run that holds it: a worker renames an output into place only while that
        run holds it (:func:`_check_claim`).
    """

    def __init__(self, count: int, outdir: Path) -> None:
        self.count = count
        self.outdir = outdir
        self._pool: ProcessPoolExecutor | None = None
        self._started: Connection | None = None
        self._report: Connection | None = None

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _open(self, jobs: int) -> ProcessPoolExecutor:
        if self._pool is None:
            context = worker_server.context()
            # no semaphore: nothing to leak when the run is stopped
            self._started, self._report = context.Pipe(duplex=False)
            self._pool = ProcessPoolExecutor(min(self.count, jobs), mp_context=context, initializer=_init_worker,
                                             initargs=(self._report, logs.current(), os.getpid(), self.outdir,
                                                       claimant(self.outdir)))
        return self._pool

    def run(self, todo: list, step: str, finished: Callable[[Path, str, int], None]) -> None:
        """Run ``todo`` (jobs of ``step``) in the workers; ``finished(output, key, count)`` as each job ends.
        A failure or a stop ends every worker (:func:`_stop_workers`) before it is raised."""
        pool = self._open(len(todo))
        try:
            # submit() starts the workers. A Ctrl-C or SIGTERM waits until it returns (interrupts.deferred): raised
            # in the middle of a start it would leave a worker the pool does not know of, which nothing stops and
            # which keeps the resource tracker (and so this process) waiting. The workers are born ignoring
            # Ctrl-C (worker_server.start), so a Ctrl-C during their start-up cannot print a traceback.
            with interrupts.deferred():
                futures = {pool.submit(_call_in_worker, step, _job_label(output, kwargs), function, kwargs):
                           (output, key, _job_label(output, kwargs)) for output, key, function, kwargs in todo}
            pending, count = set(futures), 0
            while pending:
                done, pending = wait(pending, timeout=WAIT_S, return_when=FIRST_COMPLETED)
                interrupts.check()  # a Ctrl-C or SIGTERM Python dropped while this process waited
                for future in done:
                    try:
                        future.result()
                    except BrokenProcessPool:
                        raise _lost_worker(pool, self._started, futures) from None
                    count += 1
                    finished(*futures[future][:2], count)
        except BaseException:
            _stop_workers(pool, todo)
            self.close()
            raise

    def draw(self, figures: Sequence[FigureJob]) -> None:
        """Draw the QC report's ``figures`` in the workers, one job each (stopped or failed as in :meth:`run`)."""
        self.run([(figure.path, "", figure, {}) for figure in figures], "report", lambda *_: None)

    def close(self) -> None:
        """Stop the workers (after their jobs) and the resource tracker; a later :meth:`run` starts new ones."""
        if self._pool is None:
            return
        for end in (self._started, self._report):
            if end is not None:
                end.close()
        self._pool.shutdown(wait=True)
        self._pool = self._started = self._report = None
        _end_resource_tracker()


def _end_resource_tracker() -> None:
    """Once the workers are gone, end multiprocessing's resource tracker (it started for the pool's locks) and
    wait for it: what it reports (the semaphores of a killed worker) is said now, never after the command's
    last line. It starts again if another pool needs it."""
    gc.collect()  # the shut-down pool's locks are released, and unregistered from the tracker
    stop = getattr(resource_tracker._resource_tracker, "_stop", None)  # no public way to end it and wait
    if stop is not None:
        stop()


def threads_per_job(options: RunOptions, n_jobs: int) -> int:
    """Cores for each of the slices run at once: ``--threads`` (default: the cores given) shared by them."""
    return threads_per_worker(options.threads, min(options.workers, n_jobs))


def run_jobs(jobs: list[tuple[Path, str, Callable, dict]], stamps: Stamps, workers: int | Workers, label: str,
             progress: bool) -> int:
    """Run the jobs whose stamp is stale (in parallel when ``workers`` > 1); return how many ran.

    ``workers`` is a count, or the run's :class:`Workers`, which its steps share.

    Logs the step's start, each job's end and the step's end with timings. A job whose function
    takes ``progress`` is given a :class:`~linumpy_motor.pipeline.logs.Progress` (a bar when ``progress``
    and the job runs in this process, else log lines).
    """
    todo = [job for job in jobs if not stamps.done(job[0], job[1])]
    for output, *_ in todo:
        stamps.make_folder(output.parent)
    start = time.perf_counter()
    resumed = f", {len(jobs) - len(todo)} done before" if len(todo) < len(jobs) else ""
    logger.info("%s: %s to run%s", label, logs.plural(len(todo), "job"), resumed)
    count = workers.count if isinstance(workers, Workers) else workers
    parallel = count > 1 and len(todo) > 1
    bars = progress and not parallel  # bars from several processes would overwrite each other
    todo = [(output, key, function, _with_progress(function, kwargs, f"{label} {output.name}", bars))
            for output, key, function, kwargs in todo]

    def finished(output: Path, key: str, started: float, count: int) -> None:
        interrupts.check()  # stopped while the job ran (and Python dropped the exception): not stamped
        stamps.record(output, key)
        seconds = time.perf_counter() - started
        timing = f"in {seconds:.1f} s" if not parallel else f"{seconds:.1f} s into the step"
        logger.info("%s: %s done (%d/%d), %s", label, output.name, count, len(todo), timing)

    if parallel:
        for output, *_ in todo:
            stamps.invalidate(output)
        def done(output: Path, key: str, count: int) -> None:
            finished(output, key, start, count)

        if isinstance(workers, Workers):
            workers.run(todo, label, done)
        else:
            with Workers(workers, stamps.outdir) as own:
                own.run(todo, label, done)
    else:
        for count, (output, key, function, kwargs) in enumerate(todo, start=1):
            stamps.invalidate(output)
            began = time.perf_counter()
            _call(label, _job_label(output, kwargs), function, kwargs)
            finished(output, key, began, count)
    if todo:
        logger.info("%s: finished in %.1f s", label, time.perf_counter() - start)
    return len(todo)


PROGRESS_UNITS = {"measure_pairs": "tile row", "stitch_slice": "block"}
"""The steps that report progress, and what they count."""


def _with_progress(function: Callable, kwargs: dict, label: str, bars: bool) -> dict:
    unit = PROGRESS_UNITS.get(function.__name__)
    if unit is None:
        return kwargs
    return {**kwargs, "progress": logs.Progress(label, unit, bars=None if bars else False)}
