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

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from linumpy_motor import __version__
from linumpy_motor.backend import gpu_available
from linumpy_motor.errors import InputError
from linumpy_motor.io import outputs, schemas
from linumpy_motor.io.dataset import check_consistent, discover_slices
from linumpy_motor.io.grid import MosaicGrid, open_mosaic
from linumpy_motor.io.schemas import REPORT_PAGE
from linumpy_motor.pipeline import logs, steps
from linumpy_motor.pipeline.entry import stopped_by
from linumpy_motor.pipeline.jobs import Workers, run_jobs, threads_per_job
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.pipeline.resume import (
    LOCK_FILE,
    STAMPS_DIR,
    STATE_DIR,
    Stamps,
    check_outputs,
    claim,
    clean,
    file_digest,
    step_key,
    store_fingerprint,
)
from linumpy_motor.qc import summary
from linumpy_motor.register.flatfield import FLATFIELD_FILE, FLATFIELD_MODES, describe_flatfield_file, resolve_flatfield
from linumpy_motor.stitch.assemble import check_canvas, stitch_slice

__all__ = ["OUTPUT_STAGES", "describe", "output_paths", "planned_outputs", "prefix", "run"]

logger = logging.getLogger(__name__)


def prefix(slice_id: int) -> str:
    """Output name prefix of a slice (``slice_z07``)."""
    return f"slice_z{slice_id:02d}"


def _check_locations(outdir: Path, planned: dict[Path, str], inputs: list[Path]) -> None:
    """Before any work: every folder the run writes into and every path it writes (outputs, state, lock, log),
    links followed, lies outside the inputs, and no file stands where one of those folders must be."""
    state = outdir / STATE_DIR
    for folder in [outdir, state, state / STAMPS_DIR, *sorted({output.parent for output in planned})]:
        outputs.check_folder(folder, *inputs)
    for path in [*planned, state / LOCK_FILE, outdir / logs.LOG_FILE]:
        outputs.check_outside(path, *inputs)


def run(source: str | Path, outdir: str | Path, options: RunOptions | None = None, *,
        progress: bool = True) -> dict:
    """Run measure → fit → stitch → compare → report on a dataset, resuming finished steps.

    Parameters
    ----------
    source : str or Path
        Folder of ``*.ome.zarr`` slices or a ``slice_id,path`` CSV samplesheet.
    outdir : str or Path
        Output folder (created); must not be empty, be, hold or lie inside an input. ``.`` is the
        current folder.
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
    # "." is the current folder by its name (it is reused, never replaced); refused below if it holds an input
    outdir = outputs.check_output_name(Path.cwd() if Path(outdir) == Path(".") and str(outdir).strip() else outdir)
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
    paths = output_paths(outdir, [slice_id for slice_id, _ in slices], measured=options.transform is None)
    _check_locations(outdir, planned_outputs(paths), inputs)
    check_outputs(outdir, planned_outputs(paths))  # again under the lock; here a refusal writes nothing
    created = outputs.make_folders(outdir / STATE_DIR)
    log_path = outdir / logs.LOG_FILE
    new_log = not log_path.exists()
    stamps = None
    try:
        with FileLock(outdir / STATE_DIR / LOCK_FILE, timeout=0):
            try:
                claim(outdir)  # a worker left over from an earlier run renames nothing into place from now on
                stamps = Stamps(outdir, created)
                with logs.log_file(outdir):
                    logger.info("linumpy-motor %s: %s from %s into %s", __version__,
                                logs.plural(len(slices), "slice"), source, outdir)
                    try:
                        # fit, compare and report run in this process (each step holds its own thread pools to
                        # the cores it is given); measure and stitch share the workers
                        with Workers(options.workers, outdir) as workers:
                            return _run_locked(slices, grids, paths, _usable_gpu(options), progress, stamps, workers)
                    except BaseException as exc:  # the terminal gets the error line from the entry point
                        words, status = stopped_by(exc)
                        logs.to_file_only(logging.ERROR, f"run stopped: {words}" + (
                            f"; exit status {status}" if status is not None else f" ({type(exc).__name__})"))
                        raise
            except BaseException:
                if not (stamps and stamps.recorded):  # nothing finished: the log tells no more than the terminal
                    if new_log:
                        log_path.unlink(missing_ok=True)
                    if outdir / STATE_DIR in created:
                        (outdir / STATE_DIR / LOCK_FILE).unlink(missing_ok=True)  # still held: no other run has it
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
    """Where a run writes: ``transform``, ``stitched`` and, when it measures, ``pairs``, ``flatfield`` (the
    folder holding the flat field the slice was measured, and is stitched, with), ``compare`` (per slice id)
    and ``report``."""
    paths = {"outdir": outdir, "transform": outdir / "motor_transform.json",
             "stitched": {sid: outdir / "stitched" / f"{prefix(sid)}_stitch_3d.ome.zarr" for sid in slice_ids}}
    if measured:
        paths.update(pairs={sid: outdir / "pairs" / f"{prefix(sid)}_pairs.json" for sid in slice_ids},
                     flatfield={sid: outdir / "flatfield" / f"{prefix(sid)}_flatfield" for sid in slice_ids},
                     compare={sid: outdir / "compare" / f"{prefix(sid)}_compare.json" for sid in slice_ids},
                     report=outdir / "report")
    return paths


OUTPUT_STAGES = {"transform": "fit", "stitched": "stitch", "pairs": "measure", "flatfield": "flatfield",
                 "compare": "compare", "report": "report"}
"""The stage that writes each kind of output of :func:`output_paths` (a given transform is copied by the
``transform`` stage, an output of the same kind: :data:`~linumpy_motor.io.outputs.STAGE_KINDS`)."""


def planned_outputs(paths: dict) -> dict[Path, str]:
    """Every output of :func:`output_paths`, with the stage that writes it."""
    found: dict[Path, str] = {}
    for name, value in paths.items():
        if name != "outdir":
            found.update(dict.fromkeys(value.values() if isinstance(value, dict) else [value], OUTPUT_STAGES[name]))
    return found


def _usable_gpu(options: RunOptions) -> RunOptions:
    """The options with ``use_gpu`` off, said once for the whole run, when no GPU is usable."""
    if options.use_gpu and not gpu_available():
        logger.warning("--use-gpu: CuPy or a CUDA device is not available; using the CPU")
        return options.model_copy(update={"use_gpu": False})
    return options


def _run_locked(slices: list[tuple[int, Path]], grids: dict[int, MosaicGrid], paths: dict, options: RunOptions,
                progress: bool, stamps: Stamps, workers: Workers) -> dict:
    clean(stamps, planned_outputs(paths))
    fingerprints = {slice_id: store_fingerprint(path) for slice_id, path in slices}
    ran: dict[str, int] = {}
    outdir, transform, stitched = paths["outdir"], paths["transform"], paths["stitched"]
    # pairs, compare and report exist only when the run measures (no --transform given)
    pairs: dict[int, Path] = paths.get("pairs", {})
    compare: dict[int, Path] = paths.get("compare", {})
    report_dir: Path | None = paths.get("report")
    flatfield = options.flatfield
    flatfield_id = flatfield if flatfield in FLATFIELD_MODES else file_digest(Path(flatfield))
    # measured: each slice is stitched with the flat field its measurement wrote (estimated once per slice)
    flats: dict[int, Path] = paths.get("flatfield", {})
    if options.transform is None:
        measure = dict(overlap=options.overlap, z=options.z, plane=options.plane,
                       background_test=options.background_test, max_shift_px=options.max_shift,
                       histogram_match=options.histogram_match, max_empty_fraction=options.max_empty_fraction)
        measure_keys = {sid: step_key(step="measure", store=fingerprints[sid], slice_id=sid, flatfield=flatfield_id,
                                      use_gpu=options.use_gpu, outputs="pairs+flatfield", **measure)
                        for sid, _ in slices}
        for sid, _ in slices:  # a slice's flat field is written just before its pairs, and remade with them
            stamps.make_folder(flats[sid].parent)
            if not flats[sid].exists():
                stamps.invalidate(pairs[sid])
            elif stamps.done(pairs[sid], measure_keys[sid]) and not stamps.done(flats[sid], measure_keys[sid]):
                stamps.record(flats[sid], measure_keys[sid])  # a run stopped before it stamped it
        ran["measure"] = run_jobs([
            (pairs[sid], measure_keys[sid], steps.measure_pairs,
             dict(source=path, output=pairs[sid], slice_id=sid, flatfield=flatfield, use_gpu=options.use_gpu,
                  threads=threads_per_job(options, len(slices)), flatfield_output=flats[sid], **measure))
            for sid, path in slices
        ], stamps, workers, "measure", progress)
        for sid, _ in slices:
            if not stamps.done(flats[sid], measure_keys[sid]):  # written with the pairs just now
                stamps.record(flats[sid], measure_keys[sid])
        fit = dict(n_samples=options.n_samples, seed=options.seed, drift_tolerance_px=options.drift_tolerance,
                   backlash=options.backlash)
        key = step_key(step="fit", pairs=[file_digest(pairs[sid]) for sid, _ in slices], **fit)
        ran["fit"] = run_jobs([(transform, key, steps.fit_affine,
                                 dict(pairs_files=[pairs[sid] for sid, _ in slices], output=transform, **fit))],
                               stamps, 1, "fit", progress)
    else:
        key = step_key(step="given transform", digest=file_digest(options.transform))
        ran["transform"] = run_jobs([(transform, key, steps.copy_transform,
                                      dict(source=options.transform, output=transform))], stamps, 1, "transform",
                                    progress)
    transform_digest = file_digest(transform)
    stitch = dict(blending=options.blending, ngff_version=options.ngff_version, z_chunk=options.z_chunk)
    registered = options.placement == "registered"
    A = schemas.read_transform(transform)

    def positions(sid: int):
        return steps.tile_positions(transform, (grids[sid].nx, grids[sid].ny), placement=options.placement,
                                    pairs_file=pairs[sid] if registered else None)

    def slice_flat(sid: int) -> str | Path:
        return flats[sid] / FLATFIELD_FILE if flats else flatfield

    def slice_flat_id(sid: int) -> str:
        return file_digest(flats[sid] / FLATFIELD_FILE) if flats else flatfield_id

    def slice_flat_label(sid: int) -> str | None:  # as the stitched metadata will name it (a rewritten note restitches)
        return describe_flatfield_file(flats[sid] / FLATFIELD_FILE) if flats else None

    ran["stitch"] = run_jobs([
        (stitched[sid], step_key(step="stitch", store=fingerprints[sid], transform=transform_digest,
                                 flatfield=slice_flat_id(sid), flatfield_label=slice_flat_label(sid),
                                 placement=options.placement, use_gpu=options.use_gpu,
                                 pairs=file_digest(pairs[sid]) if registered else None, **stitch),
         stitch_slice, dict(source=path, output=stitched[sid], transform=A,
                            positions=positions(sid), flatfield=slice_flat(sid), use_gpu=options.use_gpu,
                            threads=threads_per_job(options, len(slices)), **stitch))
        for sid, path in slices
    ], stamps, workers, "stitch", progress)
    result: dict[str, Any] = {"outdir": str(outdir), "transform": str(transform),
                              "stitched": [str(p) for p in stitched.values()]}
    if options.transform is None:
        assert report_dir is not None  # output_paths names a report folder whenever the run measures
        ran["compare"] = run_jobs([
            (compare[sid], step_key(step="compare", pairs=file_digest(pairs[sid]), transform=transform_digest),
             steps.compare, dict(pairs_file=pairs[sid], transform_file=transform, output=compare[sid]))
            for sid, _ in slices
        ], stamps, 1, "compare", progress)
        key = step_key(step="report", transform=transform_digest,
                       pairs=[file_digest(p) for p in pairs.values()],
                       compare=[file_digest(p) for p in compare.values()],
                       stitched=[stamps.key_of(p) for p in stitched.values()])
        ran["report"] = run_jobs([(report_dir, key, _write_report, dict(
            out_dir=report_dir, transform_file=transform, pairs_files=list(pairs.values()),
            compare_files=list(compare.values()), stitched=list(stitched.values()), workers=workers))],
            stamps, 1, "report", progress)
        result.update(pairs=[str(p) for p in pairs.values()], compare=[str(p) for p in compare.values()],
                      report=str(report_dir / REPORT_PAGE),
                      status=summary.read_status(report_dir))
    result["ran"] = ran
    return result


def _write_report(workers: Workers, **kwargs) -> Path:
    """:func:`~linumpy_motor.qc.report.write_report`, its figures drawn by the run's ``workers`` when it has several;
    its plotting libraries are imported only when a report is drawn (a resumed run with nothing to do starts in
    about half the time)."""
    from linumpy_motor.qc.report import write_report

    if workers.count > 1:
        kwargs["draw"] = workers.draw
    return write_report(**kwargs)


def describe(result: dict) -> Iterable[str]:
    """Lines telling a user where the results are, then every slice that is not ok and why."""
    yield f"results in {result['outdir']}:"
    yield f"  motor model   {result['transform']}"
    yield f"  stitched      {Path(result['stitched'][0]).parent}/ ({logs.plural(len(result['stitched']), 'slice')})"
    if "report" in result:
        yield f"  pairs         {Path(result['pairs'][0]).parent}/"
        yield f"  comparison    {Path(result['compare'][0]).parent}/"
        yield f"  QC report     {result['report']}"
    else:
        yield "  QC report     none: with a given --transform no pairs are measured, so nothing is checked"
    ran = ", ".join(f"{step} {count}" for step, count in result["ran"].items())
    yield f"jobs run (0 = resumed from a previous run): {ran}"
    yield from summary.status_lines(result.get("status"))
    yield from summary.model_warnings(result["transform"])
