"""The embedded runner: the whole stage on one machine, without Nextflow, with resume.

Same steps and output layout as the Nextflow pipeline. A step is skipped when its output exists
and its stamp (a hash of the step's inputs, parameters and the package version) is unchanged;
outputs are written atomically and stamped afterwards (a step's old stamp is removed before it
runs), so a killed run is simply rerun. Bad input found before any work leaves no output folder;
a run that fails later keeps only the outputs of the steps it completed (and removes the folders
it created, when they are left empty). Outputs an earlier run made in the same folder that this run
does not make are removed, so none looks current. What may be replaced or removed at all is
decided by :mod:`linumpy_motor.io.outputs`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout
from tqdm.std import tqdm as std_tqdm

from linumpy_motor import __version__
from linumpy_motor.backend import gpu_available
from linumpy_motor.errors import InputError
from linumpy_motor.io import outputs, schemas
from linumpy_motor.io.dataset import check_consistent, discover_slices
from linumpy_motor.io.grid import MosaicGrid, open_mosaic
from linumpy_motor.parallel import limited_threads, resolve_threads, threads_per_worker
from linumpy_motor.pipeline import logs, steps
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.qc import summary
from linumpy_motor.register.flatfield import FLATFIELD_MODES, resolve_flatfield
from linumpy_motor.stitch.assemble import check_canvas

__all__ = ["PROGRESS_UNITS", "STATE_DIR", "Stamps", "describe", "output_paths", "planned_outputs", "prefix", "run",
           "store_fingerprint"]

logger = logging.getLogger(__name__)
STATE_DIR = ".linumpy-motor"


def prefix(slice_id: int) -> str:
    """Output name prefix of a slice (``slice_z07``)."""
    return f"slice_z{slice_id:02d}"


def _file_digest(path: Path) -> str:
    """SHA-256 of a file's content."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def store_fingerprint(path: Path) -> str:
    """Identity of an input store: every file's relative path, size and modification time, links
    followed (a level linked from elsewhere counts by its target's files, and by where it points)."""
    entries: list[tuple[str, str, str | int, int]] = []  # (path, kind, link target or size, mtime)
    seen = set()
    for root, folders, files in os.walk(path, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link cycle
            folders[:] = []
            continue
        seen.add(real)
        for name in sorted(folders + files):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                entries.append((rel, "link", os.readlink(full), 0))
            if name in files:
                stat = os.stat(full)
                entries.append((rel, "file", stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def _step_key(**inputs) -> str:
    """Hash of a step's inputs, parameters and the package version."""
    text = json.dumps({"version": __version__, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class Stamps:
    """Resume bookkeeping: one stamp (JSON: the output's path and key) per output under
    ``OUTDIR/.linumpy-motor/stamps``, and the folders this run created (``created``)."""

    def __init__(self, outdir: Path, created: list[Path]) -> None:
        self.outdir = outdir
        self.folder = outdir / STATE_DIR / "stamps"
        self.created = created
        self.make_folder(self.folder)
        self.recorded = 0

    def make_folder(self, folder: Path) -> None:
        """Create ``folder`` if missing, remembering it as this run's (see :func:`outputs.make_folders`)."""
        self.created += outputs.make_folders(folder)

    def stamp_file(self, output: Path) -> Path:
        """Where ``output``'s stamp is kept."""
        return self.folder / (str(output.relative_to(self.outdir)).replace(os.sep, "__") + ".key")

    def _read(self, stamp: Path) -> dict:
        try:
            content = json.loads(stamp.read_text())
        except (OSError, ValueError):  # missing, or an older version's plain-text stamp
            return {}
        return content if isinstance(content, dict) else {}

    def done(self, output: Path, key: str) -> bool:
        """True when ``output`` exists and was made from the same inputs."""
        return output.exists() and self._read(self.stamp_file(output)).get("key") == key

    def stamped(self) -> list[Path]:
        """Every output that has a stamp."""
        found = (self._read(stamp).get("output") for stamp in sorted(self.folder.glob("*.key")))
        return [self.outdir / rel for rel in found if isinstance(rel, str)]

    def invalidate(self, output: Path) -> None:
        """Remove ``output``'s stamp before remaking it (a run killed after the new output is renamed
        into place but before it is stamped must not pass it off as the old one)."""
        self.stamp_file(output).unlink(missing_ok=True)

    def record(self, output: Path, key: str) -> None:
        """Stamp ``output`` (after it was renamed into place)."""
        self.invalidate(output)
        outputs.write_json(self.stamp_file(output), {"key": key, "output": output.relative_to(self.outdir).as_posix()},
                           "stamp")
        self.recorded += 1

    def key_of(self, output: Path) -> str:
        """The stamp of an existing output."""
        return self._read(self.stamp_file(output))["key"]


def _clean(stamps: Stamps, planned: list[Path]) -> None:
    """Under the lock, before any step: remove the temporaries killed runs left for this run's or
    earlier runs' outputs (exact ``.NAME.tmp-PID`` / ``.NAME.old-PID`` names only), and the earlier
    outputs this run will not make (a slice no longer in the input; pairs, compare and report after a
    run with ``--transform``), so none of them looks current. Each is removed only when it carries this
    program's marker; a planned output's path holding anything else is refused."""
    earlier = stamps.stamped()
    names: dict[Path, set[str]] = {}
    for output in {*planned, *earlier}:
        names.setdefault(output.parent, set()).add(output.name)
        names.setdefault(stamps.folder, set()).add(stamps.stamp_file(output).name)
    for folder, in_folder in names.items():
        outputs.remove_temporaries(folder, in_folder)
    for output in set(earlier) - set(planned):
        if outputs.is_ours(output):
            outputs.remove_path(output)
        stamps.invalidate(output)
    for output in planned:  # before any work: a user's file or folder in the way is never replaced
        outputs.check_replaceable(output)


def _check_outdir(outdir: Path, inputs: list[Path]) -> None:
    outputs.check_outside(outdir, *inputs)
    existing = next(p for p in [outdir, *outdir.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise InputError(outdir, f"output folder cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(outdir, "output folder cannot be written")


_STARTED: Connection | None = None
"""In a worker process: the pipe it reports each job's start on (see :func:`_init_worker`)."""


def _init_worker(started, log_config: logs.LogConfig) -> None:
    """Set up a worker: Ctrl-C is left to the main process (it stops the workers: one message, no
    tracebacks), progress bars lock with a thread lock (tqdm's default semaphore would leak when the
    worker is stopped), and each job's start is reported on the pipe ``started`` as ``(pid, label)``
    (one short message per write, so writes from several workers do not interleave)."""
    global _STARTED
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked since birth (see _run_parallel)
    std_tqdm.set_lock(threading.RLock())  # set on tqdm's base class: every bar class uses it
    logs.init_worker(log_config)
    _STARTED = started


def _call_in_worker(label: str, function: Callable, kwargs: dict):
    if _STARTED is None:
        raise RuntimeError("_call_in_worker runs only in a worker set up by _init_worker")
    _STARTED.send((os.getpid(), label))
    return function(**kwargs)


def _job_label(output: Path, kwargs: dict) -> str:
    """What a job works on, for messages: its slice store, else its output."""
    return str(kwargs.get("source", output))


def _lost_worker(pool: ProcessPoolExecutor, started, futures: dict) -> InputError:
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
    return InputError(label, f"its worker process was {how}, most likely by the system for lack of memory: "
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


def _run_parallel(todo: list, workers: int, finished: Callable[[Path, str, int], None]) -> None:
    """Run ``todo`` in worker processes; ``finished(output, key, count)`` as each job ends."""
    context = get_context("spawn")
    started, report = context.Pipe(duplex=False)  # no semaphore: nothing to leak when the run is stopped
    pool = ProcessPoolExecutor(min(workers, len(todo)), mp_context=context, initializer=_init_worker,
                               initargs=(report, logs.current()))
    try:
        # submit() spawns the workers: they are born with Ctrl-C blocked and unblock it only once they
        # ignore it, so a Ctrl-C during their start-up cannot print a traceback; here it arrives on unblocking
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            futures = {pool.submit(_call_in_worker, _job_label(output, kwargs), function, kwargs):
                       (output, key, _job_label(output, kwargs)) for output, key, function, kwargs in todo}
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        for count, future in enumerate(as_completed(futures), start=1):
            try:
                future.result()
            except BrokenProcessPool:
                raise _lost_worker(pool, started, futures) from None
            finished(*futures[future][:2], count)
    except BaseException:
        _stop_workers(pool, todo)
        raise
    finally:
        started.close()
        report.close()
    pool.shutdown(wait=True)


def _threads_per_job(options: RunOptions, n_jobs: int) -> int:
    """Cores for each of the slices run at once: ``--threads`` (default: the cores given) shared by them."""
    return threads_per_worker(options.threads, min(options.workers, n_jobs))


def _run_jobs(jobs: list[tuple[Path, str, Callable, dict]], stamps: Stamps, workers: int, label: str,
              progress: bool) -> int:
    """Run the jobs whose stamp is stale (in parallel when ``workers`` > 1); return how many ran.

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
    parallel = workers > 1 and len(todo) > 1
    bars = progress and not parallel  # bars from several processes would overwrite each other
    todo = [(output, key, function, _with_progress(function, kwargs, f"{label} {output.name}", bars))
            for output, key, function, kwargs in todo]

    def finished(output: Path, key: str, started: float, count: int) -> None:
        stamps.record(output, key)
        seconds = time.perf_counter() - started
        timing = f"in {seconds:.1f} s" if not parallel else f"{seconds:.1f} s into the step"
        logger.info("%s: %s done (%d/%d), %s", label, output.name, count, len(todo), timing)

    if parallel:
        for output, *_ in todo:
            stamps.invalidate(output)
        _run_parallel(todo, workers, lambda output, key, count: finished(output, key, start, count))
    else:
        for count, (output, key, function, kwargs) in enumerate(todo, start=1):
            stamps.invalidate(output)
            began = time.perf_counter()
            function(**kwargs)
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


def run(source: str | Path, outdir: str | Path, options: RunOptions | None = None, *,
        progress: bool = True) -> dict:
    """Run measure → fit → stitch → compare → report on a dataset, resuming finished steps.

    Parameters
    ----------
    source : str or Path
        Folder of ``*.ome.zarr`` slices or a ``slice_id,path`` CSV samplesheet.
    outdir : str or Path
        Output folder (created); must not be empty, be, hold or lie inside an input.
    options : RunOptions, optional
        Run parameters (default: ``RunOptions()``).
    progress : bool
        Show progress bars on stderr where the logging set-up allows them (a terminal, see
        :mod:`linumpy_motor.pipeline.logs`); otherwise progress is logged as lines. Every message is also
        appended to ``OUTDIR/linumpy-motor.log``.

    Returns
    -------
    dict
        Output paths, per step how many jobs ran (0 everywhere on a resumed, finished run), and
        ``status``: each slice's QC status and reasons (``status.json`` of the report).

    Raises
    ------
    InputError
        Bad input (named in the message). Found before any work (unreadable or inconsistent slices,
        a bad output folder, transform or flat field file, another run holding the folder's lock):
        no output folder is created. Found while working: only completed steps' outputs stay, and
        only folders this run created (and left empty) are removed.
    """
    options = RunOptions() if options is None else options
    outdir = outputs.check_output_name(outdir)
    source = Path(source)
    slices = discover_slices(source)
    grids = {slice_id: open_mosaic(path) for slice_id, path in slices}
    check_consistent("tile shape", ((grid.path, grid.tile_shape) for grid in grids.values()))
    inputs = [source, *(path for _, path in slices)]
    if options.transform is not None:
        if options.placement == "registered":
            raise InputError(options.transform, "placement 'registered' needs measured pairs; it cannot be used "
                                                "with a given transform")
        _check_given_transform(options.transform, grids.values())
        inputs.append(options.transform)
    if options.flatfield not in FLATFIELD_MODES:
        resolve_flatfield(grids[slices[0][0]], options.flatfield)
        inputs.append(Path(options.flatfield))
    _check_outdir(outdir, inputs)
    paths = output_paths(outdir, [slice_id for slice_id, _ in slices], measured=options.transform is None)
    for output in planned_outputs(paths):  # checked again under the lock; here so a refusal writes nothing
        outputs.check_replaceable(output)
    created = outputs.make_folders(outdir / STATE_DIR)
    log_path = outdir / logs.LOG_FILE
    new_log = not log_path.exists()
    stamps = None
    try:
        with FileLock(outdir / STATE_DIR / "lock", timeout=0):
            try:
                stamps = Stamps(outdir, created)
                with logs.log_file(outdir):
                    logger.info("linumpy-motor %s: %s from %s into %s", __version__,
                                logs.plural(len(slices), "slice"), source, outdir)
                    try:
                        with limited_threads(resolve_threads(options.threads)):  # fit, compare, report run here
                            return _run_locked(slices, grids, paths, _usable_gpu(options), progress, stamps)
                    except BaseException as exc:  # the terminal gets the error line from the entry point
                        logs.to_file_only(logging.ERROR, f"run stopped: {type(exc).__name__}: {exc}")
                        raise
            except BaseException:
                if not (stamps and stamps.recorded):  # nothing finished: the log tells no more than the terminal
                    if new_log:
                        log_path.unlink(missing_ok=True)
                    if outdir / STATE_DIR in created:
                        (outdir / STATE_DIR / "lock").unlink(missing_ok=True)  # still held: no other run has it
                raise
    except Timeout:
        outputs.remove_created_folders(created)
        raise InputError(outdir, "another linumpy-motor run is writing to this folder") from None
    except BaseException:
        outputs.remove_created_folders(stamps.created if stamps else created)
        raise


def _check_given_transform(path: Path, grids) -> None:
    """Before any work: the ``--transform`` file is valid and its canvas fits every slice's tiles."""
    A = schemas.read_transform(path)
    for grid in grids:
        try:
            check_canvas(grid, A)
        except InputError as exc:
            raise InputError(path, exc.problem) from None


def output_paths(outdir: Path, slice_ids: list[int], measured: bool) -> dict:
    """Where a run writes: ``transform``, ``stitched`` and, when it measures, ``pairs``, ``compare``
    (per slice id) and ``report``."""
    paths = {"outdir": outdir, "transform": outdir / "motor_transform.json",
             "stitched": {sid: outdir / "stitched" / f"{prefix(sid)}_stitch_3d.ome.zarr" for sid in slice_ids}}
    if measured:
        paths.update(pairs={sid: outdir / "pairs" / f"{prefix(sid)}_pairs.json" for sid in slice_ids},
                     compare={sid: outdir / "compare" / f"{prefix(sid)}_compare.json" for sid in slice_ids},
                     report=outdir / "report")
    return paths


def planned_outputs(paths: dict) -> list[Path]:
    """Every output of :func:`output_paths`, as a flat list."""
    found = []
    for name, value in paths.items():
        if name != "outdir":
            found += list(value.values()) if isinstance(value, dict) else [value]
    return found


def _usable_gpu(options: RunOptions) -> RunOptions:
    """The options with ``use_gpu`` off, said once for the whole run, when no GPU is usable."""
    if options.use_gpu and not gpu_available():
        logger.warning("--use-gpu: CuPy or a CUDA device is not available; using the CPU")
        return options.model_copy(update={"use_gpu": False})
    return options


def _run_locked(slices: list[tuple[int, Path]], grids: dict[int, MosaicGrid], paths: dict, options: RunOptions,
                progress: bool, stamps: Stamps) -> dict:
    from linumpy_motor.qc.report import REPORT_PAGE, write_report
    from linumpy_motor.stitch.assemble import stitch_slice

    _clean(stamps, planned_outputs(paths))
    fingerprints = {slice_id: store_fingerprint(path) for slice_id, path in slices}
    ran: dict[str, int] = {}
    outdir, transform, stitched = paths["outdir"], paths["transform"], paths["stitched"]
    # pairs, compare and report exist only when the run measures (no --transform given)
    pairs: dict[int, Path] = paths.get("pairs", {})
    compare: dict[int, Path] = paths.get("compare", {})
    report_dir: Path | None = paths.get("report")
    flatfield = options.flatfield
    flatfield_id = flatfield if flatfield in FLATFIELD_MODES else _file_digest(Path(flatfield))
    if options.transform is None:
        measure = dict(overlap=options.overlap, z=options.z, plane=options.plane,
                       background_test=options.background_test, max_shift_px=options.max_shift,
                       histogram_match=options.histogram_match, max_empty_fraction=options.max_empty_fraction)
        ran["measure"] = _run_jobs([
            (pairs[sid], _step_key(step="measure", store=fingerprints[sid], slice_id=sid, flatfield=flatfield_id,
                                  **measure), steps.measure_pairs,
             dict(source=path, output=pairs[sid], slice_id=sid, flatfield=flatfield, use_gpu=options.use_gpu,
                  threads=_threads_per_job(options, len(slices)), **measure))
            for sid, path in slices
        ], stamps, options.workers, "measure", progress)
        fit = dict(n_samples=options.n_samples, seed=options.seed, drift_tolerance_px=options.drift_tolerance,
                   backlash=options.backlash)
        key = _step_key(step="fit", pairs=[_file_digest(pairs[sid]) for sid, _ in slices], **fit)
        ran["fit"] = _run_jobs([(transform, key, steps.fit_affine,
                                 dict(pairs_files=[pairs[sid] for sid, _ in slices], output=transform, **fit))],
                               stamps, 1, "fit", progress)
    else:
        key = _step_key(step="given transform", digest=_file_digest(options.transform))
        ran["fit"] = _run_jobs([(transform, key, steps.copy_transform,
                                 dict(source=options.transform, output=transform))], stamps, 1, "transform", progress)
    transform_digest = _file_digest(transform)
    stitch = dict(blending=options.blending, ngff_version=options.ngff_version, z_chunk=options.z_chunk)
    registered = options.placement == "registered"
    A = schemas.read_transform(transform)

    def positions(sid: int):
        return steps.tile_positions(transform, (grids[sid].nx, grids[sid].ny), placement=options.placement,
                                    pairs_file=pairs[sid] if registered else None)

    ran["stitch"] = _run_jobs([
        (stitched[sid], _step_key(step="stitch", store=fingerprints[sid], transform=transform_digest,
                                 flatfield=flatfield_id, placement=options.placement,
                                 pairs=_file_digest(pairs[sid]) if registered else None, **stitch),
         stitch_slice, dict(source=path, output=stitched[sid], transform=A,
                            positions=positions(sid), flatfield=flatfield, use_gpu=options.use_gpu,
                            threads=_threads_per_job(options, len(slices)), **stitch))
        for sid, path in slices
    ], stamps, options.workers, "stitch", progress)
    result: dict[str, Any] = {"outdir": str(outdir), "transform": str(transform),
                              "stitched": [str(p) for p in stitched.values()]}
    if options.transform is None:
        assert report_dir is not None  # output_paths names a report folder whenever the run measures
        ran["compare"] = _run_jobs([
            (compare[sid], _step_key(step="compare", pairs=_file_digest(pairs[sid]), transform=transform_digest),
             steps.compare, dict(pairs_file=pairs[sid], transform_file=transform, output=compare[sid]))
            for sid, _ in slices
        ], stamps, 1, "compare", progress)
        key = _step_key(step="report", transform=transform_digest,
                       pairs=[_file_digest(p) for p in pairs.values()],
                       compare=[_file_digest(p) for p in compare.values()],
                       stitched=[stamps.key_of(p) for p in stitched.values()])
        ran["report"] = _run_jobs([(report_dir, key, write_report, dict(
            out_dir=report_dir, transform_file=transform, pairs_files=list(pairs.values()),
            compare_files=list(compare.values()), stitched=list(stitched.values())))], stamps, 1, "report", progress)
        result.update(pairs=[str(p) for p in pairs.values()], compare=[str(p) for p in compare.values()],
                      report=str(report_dir / REPORT_PAGE),
                      status=summary.read_status(report_dir))
    result["ran"] = ran
    return result


def describe(result: dict) -> Iterable[str]:
    """Lines telling a user where the results are, then every slice that is not ok and why."""
    yield f"results in {result['outdir']}:"
    yield f"  motor model   {result['transform']}"
    yield f"  stitched      {Path(result['stitched'][0]).parent}/ ({logs.plural(len(result['stitched']), 'slice')})"
    if "report" in result:
        yield f"  pairs         {Path(result['pairs'][0]).parent}/"
        yield f"  comparison    {Path(result['compare'][0]).parent}/"
        yield f"  QC report     {result['report']}"
    ran = ", ".join(f"{step} {count}" for step, count in result["ran"].items())
    yield f"jobs run (0 = resumed from a previous run): {ran}"
    yield from summary.status_lines(result.get("status"))
    yield from summary.model_warnings(result["transform"])
