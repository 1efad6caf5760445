"""The embedded runner: the whole stage on one machine, without Nextflow, with resume.

Same steps and output layout as the Nextflow pipeline. A step is skipped when its output exists
and its stamp (a hash of the step's inputs, parameters and the package version) is unchanged;
outputs are written atomically and stamped afterwards (a step's old stamp is removed before it
runs), so a killed run is simply rerun. Bad input found before any work leaves no output folder;
a run that fails later keeps only the outputs of the steps it completed (and removes the output
folder it created when it completed none).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path
from typing import Literal

from filelock import FileLock, Timeout
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from . import __version__, steps
from .errors import InputError
from .flatfield import resolve_flatfield
from .io import atomic_output, discover_slices, open_mosaic, remove_path
from .parallel import limited_threads, resolve_threads, threads_per_worker

STATE_DIR = ".linumpy-motor"
STEP_FOLDERS = ("pairs", "stitched", "compare")


class RunOptions(BaseModel):
    """Parameters of a run (the same names and defaults as the Nextflow params)."""

    model_config = ConfigDict(extra="forbid")
    overlap: float = Field(0.2, gt=0, lt=0.5)
    z: int | None = Field(None, ge=0)
    max_shift: float | None = Field(None, gt=0)
    histogram_match: bool = False
    max_empty_fraction: float | None = Field(None, ge=0, le=1)
    n_samples: int | None = Field(None, gt=0)
    seed: int = 0
    drift_tolerance: float = Field(1.0, gt=0)
    blending: Literal["none", "average", "feather", "diffusion"] = "feather"
    flatfield: str = "estimate"
    ngff_version: Literal["0.4", "0.5"] = "0.5"
    transform: Path | None = None
    workers: int = Field(1, ge=1)
    threads: int | None = Field(None, ge=1)
    use_gpu: bool = False


def prefix(slice_id: int) -> str:
    """Output name prefix of a slice (``slice_z07``)."""
    return f"slice_z{slice_id:02d}"


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def store_fingerprint(path: Path) -> str:
    """Identity of an input store: every file's relative path, size and modification time."""
    entries = []
    for root, _, files in os.walk(path):
        for name in sorted(files):
            stat = os.stat(os.path.join(root, name))
            entries.append((os.path.relpath(os.path.join(root, name), path), stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def step_key(**inputs) -> str:
    """Hash of a step's inputs, parameters and the package version."""
    return hashlib.sha256(json.dumps({"version": __version__, **inputs}, sort_keys=True, default=str).encode()).hexdigest()


class Stamps:
    """Resume bookkeeping: one key file per output under ``OUTDIR/.linumpy-motor/stamps``."""

    def __init__(self, outdir: Path) -> None:
        self.outdir = outdir
        self.folder = outdir / STATE_DIR / "stamps"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.recorded = 0

    def _file(self, output: Path) -> Path:
        return self.folder / (str(output.relative_to(self.outdir)).replace(os.sep, "__") + ".key")

    def done(self, output: Path, key: str) -> bool:
        """True when ``output`` exists and was made from the same inputs."""
        stamp = self._file(output)
        return output.exists() and stamp.exists() and stamp.read_text() == key

    def invalidate(self, output: Path) -> None:
        """Remove ``output``'s stamp before remaking it (a run killed after the new output is renamed
        into place but before it is stamped must not pass it off as the old one)."""
        self._file(output).unlink(missing_ok=True)

    def record(self, output: Path, key: str) -> None:
        """Stamp ``output`` (after it was renamed into place)."""
        with atomic_output(self._file(output)) as tmp:
            tmp.write_text(key)
        self.recorded += 1

    def key_of(self, output: Path) -> str:
        """The stamp of an existing output."""
        return self._file(output).read_text()


def _remove_stale_temporaries(outdir: Path) -> None:
    """Remove what a killed run left under temporary names (``.name.tmp-PID``, ``.name.old-PID``)
    in the output folder, its step folders and the stamps folder (nowhere else)."""
    for folder in (outdir, *(outdir / name for name in STEP_FOLDERS), outdir / STATE_DIR / "stamps"):
        for entry in folder.iterdir() if folder.is_dir() else ():
            if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
                remove_path(entry)


def _check_outdir(outdir: Path, slices: list[tuple[int, Path]], source: Path) -> None:
    for _, store in slices:
        steps.check_output_outside(outdir, store)
    if source.is_dir():
        steps.check_output_outside(outdir, source)
    existing = next(p for p in [outdir, *outdir.absolute().parents] if p.exists())
    if not existing.is_dir():
        raise InputError(outdir, f"output folder cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(outdir, "output folder cannot be written")


def _topmost_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` that does not exist yet (what ``mkdir -p`` would create)."""
    missing = None
    for folder in [path, *path.absolute().parents]:
        if folder.exists():
            return missing
        missing = folder
    return missing


def _threads_per_job(options: RunOptions, n_jobs: int) -> int:
    """Cores for each of the slices run at once: ``--threads`` (default: the cores given) shared by them."""
    return threads_per_worker(options.threads, min(options.workers, n_jobs))


def _run_jobs(jobs: list[tuple[Path, str, Callable, dict]], stamps: Stamps, workers: int, label: str,
              progress: bool) -> int:
    """Run the jobs whose stamp is stale (in parallel when ``workers`` > 1); return how many ran."""
    todo = [job for job in jobs if not stamps.done(job[0], job[1])]
    for output, *_ in todo:
        output.parent.mkdir(exist_ok=True)
    with tqdm(total=len(jobs), initial=len(jobs) - len(todo), desc=label, unit="slice", disable=not progress) as bar:
        if workers > 1 and len(todo) > 1:
            for output, *_ in todo:
                stamps.invalidate(output)
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=get_context("spawn")) as pool:
                futures = {pool.submit(function, **kwargs): (output, key) for output, key, function, kwargs in todo}
                try:
                    for future in as_completed(futures):
                        future.result()
                        stamps.record(*futures[future])
                        bar.update()
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
        else:
            for output, key, function, kwargs in todo:
                stamps.invalidate(output)
                function(**kwargs)
                stamps.record(output, key)
                bar.update()
    return len(todo)


def run(source: str | Path, outdir: str | Path, options: RunOptions = RunOptions(), *, progress: bool = True) -> dict:
    """Run measure → fit → stitch → compare → report on a dataset, resuming finished steps.

    Parameters
    ----------
    source : str or Path
        Folder of ``*.ome.zarr`` slices or a ``slice_id,path`` CSV samplesheet.
    outdir : str or Path
        Output folder (created); must not be inside an input.
    options : RunOptions
        Run parameters.
    progress : bool
        Show progress bars on stderr.

    Returns
    -------
    dict
        Output paths and, per step, how many jobs ran (0 everywhere on a resumed, finished run).

    Raises
    ------
    InputError
        Bad input (named in the message). Found before any work (unreadable or inconsistent slices,
        a bad output folder or flat field file, another run holding the folder's lock): no output
        folder is created. Found while working: only completed steps' outputs stay.
    """
    source, outdir = Path(source), Path(outdir)
    slices = discover_slices(source)
    grids = {slice_id: open_mosaic(path) for slice_id, path in slices}
    first = grids[slices[0][0]]
    for grid in grids.values():
        if grid.tile_shape != first.tile_shape:
            raise InputError(grid.path, f"tile shape {grid.tile_shape} differs from {first.tile_shape} of {first.path}")
    if options.flatfield not in ("estimate", "none"):
        resolve_flatfield(first, options.flatfield)
    _check_outdir(outdir, slices, source)
    created = _topmost_missing(outdir)
    (outdir / STATE_DIR).mkdir(parents=True, exist_ok=True)
    stamps = None
    try:
        with FileLock(outdir / STATE_DIR / "lock", timeout=0):
            _remove_stale_temporaries(outdir)
            stamps = Stamps(outdir)
            with limited_threads(resolve_threads(options.threads)):  # the fit, compare and report run here
                return _run_locked(slices, outdir, options, progress, stamps)
    except Timeout:
        raise InputError(outdir, "another linumpy-motor run is writing to this folder") from None
    except BaseException:
        if created is not None and (stamps is None or not stamps.recorded):
            shutil.rmtree(created, ignore_errors=True)
        raise


def _run_locked(slices: list[tuple[int, Path]], outdir: Path, options: RunOptions, progress: bool,
                stamps: Stamps) -> dict:
    from .report import write_report
    from .stitch import stitch_slice

    fingerprints = {slice_id: store_fingerprint(path) for slice_id, path in slices}
    ran: dict[str, int] = {}
    pairs = {slice_id: outdir / "pairs" / f"{prefix(slice_id)}_pairs.json" for slice_id, _ in slices}
    transform = outdir / "motor_transform.json"
    if options.transform is None:
        measure = dict(overlap=options.overlap, z=options.z, max_shift_px=options.max_shift,
                       histogram_match=options.histogram_match, max_empty_fraction=options.max_empty_fraction)
        ran["measure"] = _run_jobs([
            (pairs[sid], step_key(step="measure", store=fingerprints[sid], slice_id=sid, **measure), steps.measure_pairs,
             dict(source=path, output=pairs[sid], slice_id=sid, use_gpu=options.use_gpu,
                  threads=_threads_per_job(options, len(slices)), **measure))
            for sid, path in slices
        ], stamps, options.workers, "measure", progress)
        fit = dict(n_samples=options.n_samples, seed=options.seed, drift_tolerance_px=options.drift_tolerance)
        key = step_key(step="fit", pairs=[file_digest(pairs[sid]) for sid, _ in slices], **fit)
        ran["fit"] = _run_jobs([(transform, key, steps.fit_affine,
                                 dict(pairs_files=[pairs[sid] for sid, _ in slices], output=transform, **fit))],
                               stamps, 1, "fit", progress)
    else:
        key = step_key(step="given transform", digest=file_digest(options.transform))
        ran["fit"] = _run_jobs([(transform, key, steps.copy_transform,
                                 dict(source=options.transform, output=transform))], stamps, 1, "transform", progress)
    transform_digest = file_digest(transform)
    stitched = {sid: outdir / "stitched" / f"{prefix(sid)}_stitch_3d.ome.zarr" for sid, _ in slices}
    flatfield = options.flatfield
    flatfield_id = flatfield if flatfield in ("estimate", "none") else file_digest(Path(flatfield))
    stitch = dict(blending=options.blending, ngff_version=options.ngff_version)
    ran["stitch"] = _run_jobs([
        (stitched[sid], step_key(step="stitch", store=fingerprints[sid], transform=transform_digest,
                                 flatfield=flatfield_id, **stitch),
         stitch_slice, dict(source=path, output=stitched[sid], transform=steps.read_transform(transform),
                            flatfield=flatfield, use_gpu=options.use_gpu,
                            threads=_threads_per_job(options, len(slices)), **stitch))
        for sid, path in slices
    ], stamps, options.workers, "stitch", progress)
    result = {"outdir": str(outdir), "transform": str(transform), "stitched": [str(p) for p in stitched.values()]}
    if options.transform is None:
        compare = {sid: outdir / "compare" / f"{prefix(sid)}_compare.json" for sid, _ in slices}
        ran["compare"] = _run_jobs([
            (compare[sid], step_key(step="compare", pairs=file_digest(pairs[sid]), transform=transform_digest),
             steps.compare, dict(pairs_file=pairs[sid], transform_file=transform, output=compare[sid]))
            for sid, _ in slices
        ], stamps, 1, "compare", progress)
        report_dir = outdir / "report"
        key = step_key(step="report", transform=transform_digest,
                       pairs=[file_digest(p) for p in pairs.values()], compare=[file_digest(p) for p in compare.values()],
                       stitched=[stamps.key_of(p) for p in stitched.values()])
        ran["report"] = _run_jobs([(report_dir, key, write_report, dict(
            out_dir=report_dir, transform_file=transform, pairs_files=list(pairs.values()),
            compare_files=list(compare.values()), stitched=list(stitched.values())))], stamps, 1, "report", progress)
        result.update(pairs=[str(p) for p in pairs.values()], compare=[str(p) for p in compare.values()],
                      report=str(report_dir / "report.html"))
    result["ran"] = ran
    return result


def describe(result: dict) -> Iterable[str]:
    """Lines telling a user where the results are."""
    yield f"results in {result['outdir']}:"
    yield f"  motor model   {result['transform']}"
    yield f"  stitched      {Path(result['stitched'][0]).parent}/ ({len(result['stitched'])} slices)"
    if "report" in result:
        yield f"  pairs         {Path(result['pairs'][0]).parent}/"
        yield f"  comparison    {Path(result['compare'][0]).parent}/"
        yield f"  QC report     {result['report']}"
    ran = ", ".join(f"{step} {count}" for step, count in result["ran"].items())
    yield f"jobs run (0 = resumed from a previous run): {ran}"
