"""The pipeline steps as functions over files: what each ``bin/`` script and the runner call.

Every step validates its inputs, refuses to write inside an input store, and writes its output
atomically (temporary sibling, then rename), so an interrupted step leaves nothing half-written.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from linumpy_motor import __version__
from linumpy_motor.errors import FitError, InputError, check_choice
from linumpy_motor.io import schemas
from linumpy_motor.io.dataset import check_consistent, slice_id_from_name
from linumpy_motor.io.grid import open_mosaic
from linumpy_motor.io.outputs import check_output, write_json
from linumpy_motor.io.records import pair_dicts
from linumpy_motor.io.schemas import Pair, PairsFile, load
from linumpy_motor.memory import check_memory
from linumpy_motor.parallel import blas_on_one_thread, limited_threads, resolve_threads
from linumpy_motor.qc.compare import compare_positions
from linumpy_motor.qc.summary import model_problems
from linumpy_motor.qc.verdict import implied_overlap, overlap_problem
from linumpy_motor.register import geometry
from linumpy_motor.register.fit import (
    DEFAULT_BACKLASH,
    DEFAULT_SEED,
    DRIFT_TOLERANCE_PX,
    BacklashMode,
    FitOptions,
    fit_pooled,
)
from linumpy_motor.register.flatfield import (
    DEFAULT_FLATFIELD,
    READ_THREADS,
    flatfield_file,
    slice_flatfield,
    write_flatfield,
)
from linumpy_motor.register.measure import MeasureOptions, backends_used, measure_mosaic
from linumpy_motor.register.measure import peak_bytes as measure_peak_bytes
from linumpy_motor.register.planes import DEFAULT_PLANE, PlaneMode

__all__ = ["DEFAULT_PLACEMENT", "PLACEMENTS", "Placement", "compare", "copy_transform", "fit_affine", "measure_pairs",
           "tile_positions"]

logger = logging.getLogger(__name__)


def measure_pairs(source: str | Path, output: str | Path, *, overlap: float, slice_id: int | None = None,
                  z: int | None = None, plane: PlaneMode = DEFAULT_PLANE,
                  flatfield: str | Path | None = DEFAULT_FLATFIELD, background_test: bool = True,
                  max_shift_px: float | None = None, histogram_match: bool = False,
                  max_empty_fraction: float | None = None, use_gpu: bool = False,
                  progress: Callable[[int, int], None] | None = None, threads: int | None = None,
                  flatfield_output: str | Path | None = None) -> dict:
    """Measure one slice's neighbour pairs and write ``<slice>_pairs.json`` (and the slice's flat field).

    Parameters
    ----------
    source : str or Path
        The slice's mosaic grid (:func:`~linumpy_motor.io.grid.open_mosaic`).
    output : str or Path
        Pairs JSON to write (:func:`~linumpy_motor.io.outputs.check_output`); replaced atomically.
    overlap : float
        Nominal overlap fraction between neighbour tiles
        (:func:`~linumpy_motor.io.schemas.check_overlap`).
    slice_id : int or None
        Slice id written in the file; None: the number in the store's name
        (:func:`~linumpy_motor.io.dataset.slice_id_from_name`).
    z : int or None
        Plane to measure; None: chosen by ``plane``.
    plane : PlaneMode
        How the plane is chosen when ``z`` is None (default:
        :data:`~linumpy_motor.register.planes.DEFAULT_PLANE`).
    flatfield : str, Path or None
        Flat-field mode or the path of a ``.npy`` flat field (default:
        :data:`~linumpy_motor.register.flatfield.DEFAULT_FLATFIELD`;
        :func:`~linumpy_motor.register.measure.measure_mosaic`).
    background_test : bool
        Skip pairs that correlate no better than non-overlapping windows.
    max_shift_px, histogram_match, max_empty_fraction, use_gpu
        As :func:`~linumpy_motor.register.measure.measure_grid_pairs` (which owns their defaults).
    progress : callable, optional
        Called as ``progress(rows done, rows)`` after each tile row.
    threads : int or None
        Threads measuring at once and FFT workers (default: the cores this process is given,
        :func:`~linumpy_motor.parallel.resolve_threads`); BLAS stays on one thread.
    flatfield_output : str or Path, optional
        Folder to write the flat field the slice was measured with into
        (:func:`~linumpy_motor.register.flatfield.write_flatfield`, what
        :func:`~linumpy_motor.register.flatfield.slice_flatfield` makes of ``flatfield``), so the stitch
        uses that one instead of estimating it again. Written before the pairs.

    Returns
    -------
    dict
        The content written (see :class:`~linumpy_motor.io.schemas.PairsFile`).

    Raises
    ------
    InputError
        An unusable output path, a store that breaks the data contract, a plane outside the volume,
        an unknown plane or flat-field mode, an unreadable flat field, or a bad overlap or thread count.
    """
    check_output(output, source, *filter(None, [flatfield_file(flatfield)]), stage="measure")
    if flatfield_output is not None:
        check_output(flatfield_output, source, *filter(None, [flatfield_file(flatfield)]), stage="flatfield")
    grid = open_mosaic(source)
    threads = resolve_threads(threads)
    check_memory("measure", grid.path, measure_peak_bytes(grid.tile_shape, grid.nx, grid.ny, overlap),
                 threads + READ_THREADS, libraries=["scipy.fft"])
    chosen: list[np.ndarray | None] = []
    with limited_threads(threads):
        measured, skipped, stats = measure_mosaic(grid, overlap, MeasureOptions(
            z=z, plane=plane, flatfield=flatfield, background_test=background_test, max_shift_px=max_shift_px,
            histogram_match=histogram_match, max_empty_fraction=max_empty_fraction, use_gpu=use_gpu, threads=threads,
        ), progress=progress, on_flatfield=chosen.append)
    if flatfield_output is not None:
        write_flatfield(flatfield_output, *slice_flatfield(flatfield, chosen[0] if chosen else None, grid.tile_shape))
    content = PairsFile(
        version=__version__, slice_id=slice_id_from_name(grid.path) if slice_id is None else slice_id,
        source=grid.path.name, tile_shape=grid.tile_shape, grid=(grid.nx, grid.ny), overlap=overlap,
        z=stats["z"], pairs=[Pair.model_validate(p) for p in pair_dicts(measured)], skipped=skipped, stats=stats,
    ).model_dump(mode="json")
    write_json(output, content, "measure")
    return content


def _load_pairs_files(paths: Sequence[str | Path]) -> list[PairsFile]:
    """Load pairs files and check they belong to one acquisition (tile shape, overlap, unique ids)."""
    if not paths:
        raise InputError(None, "no pairs files given")
    files = [load(path, PairsFile) for path in paths]
    check_consistent("tile shape", ((path, list(content.tile_shape)) for path, content in zip(paths, files)))
    check_consistent("overlap", ((path, content.overlap) for path, content in zip(paths, files)))
    seen: dict[int, Path] = {}
    for content, path in zip(files, map(Path, paths)):
        if content.slice_id in seen:
            raise InputError(path, f"slice id {content.slice_id} also in {seen[content.slice_id]}")
        seen[content.slice_id] = path
    return files


def fit_affine(pairs_files: Sequence[str | Path], output: str | Path, *, n_samples: int | None = None,
               seed: int = DEFAULT_SEED, drift_tolerance_px: float = DRIFT_TOLERANCE_PX,
               backlash: BacklashMode = DEFAULT_BACKLASH) -> dict:
    """Pool the slices' pairs, fit one motor matrix and write ``motor_transform.json``.

    Parameters
    ----------
    pairs_files : sequence of str or Path
        Pairs JSON of each slice, all of one acquisition (same tile shape and overlap, unique slice ids).
    output : str or Path
        Motor transform JSON to write (:func:`~linumpy_motor.io.outputs.check_output`); replaced atomically.
    n_samples : int or None
        Fit a reproducible sub-sample of this many pooled pairs; None: all of them.
    seed : int
        Seed of that sub-sample (default: :data:`~linumpy_motor.register.fit.DEFAULT_SEED`).
    drift_tolerance_px : float
        Drift beyond which a slice's own model is flagged (default:
        :data:`~linumpy_motor.register.fit.DRIFT_TOLERANCE_PX`).
    backlash : BacklashMode
        The serpentine backlash term (:func:`~linumpy_motor.register.fit.fit_pooled`; default:
        :data:`~linumpy_motor.register.fit.DEFAULT_BACKLASH`); the file's ``backlash`` holds it
        (0, 0 when left out).

    Returns
    -------
    dict
        The content written: ``transform``, ``backlash`` and ``diagnostics`` (see
        :class:`~linumpy_motor.io.schemas.TransformFile`); each slice's ``per_slice`` entry also holds
        its measurement statistics. Problems of the model are logged as warnings
        (:func:`~linumpy_motor.qc.summary.model_problems`).

    Raises
    ------
    InputError
        Bad or inconsistent pairs files, an output that is one of them, or too few usable pairs
        (the error names the pairs file of the first slice without any pair).
    """
    check_output(output, *pairs_files, stage="fit")
    files = _load_pairs_files(pairs_files)
    pairs = {f.slice_id: f.table() for f in files}
    check_memory("fit", Path(output), 0, threads=1,  # its data are small; OpenBLAS's buffers are not
                 libraries=["scipy.sparse.csgraph", "scipy.sparse.linalg", "scipy.special"])
    try:
        with blas_on_one_thread():  # small matrix products: BLAS threads only slow them down
            model, diagnostics = fit_pooled(
                pairs, {f.slice_id: f.grid for f in files}, files[0].tile_shape, files[0].overlap,
                FitOptions(n_samples=n_samples, seed=seed, drift_tolerance_px=drift_tolerance_px, backlash=backlash),
            )
    except FitError as exc:  # name the pairs file of the first slice that has no pair, else the first file
        empty = [path for f, path in zip(files, pairs_files) if not f.pairs]
        implied = implied_overlap(f.stats for f in files)
        overlap = None if implied is None else overlap_problem(implied, files[0].overlap)
        if overlap:  # on the terminal and in the log as well as in the error line
            logger.warning(overlap)
        raise InputError((empty or list(pairs_files))[0], str(exc) + (f"; {overlap}" if overlap else "")) from None
    for f in files:
        diagnostics["per_slice"][str(f.slice_id)]["measurement"] = f.stats
    diagnostics.update(version=__version__, tile_shape=list(files[0].tile_shape),
                       backend=backends_used(f.stats for f in files))
    content = {"transform": model.matrix.tolist(), "backlash": model.backlash_px, "diagnostics": diagnostics}
    write_json(output, content, "fit")
    for problem in model_problems(diagnostics):  # a wrong --overlap: said on the terminal, not only in the report
        logger.warning(problem)
    return content


def compare(pairs_file: str | Path, transform_file: str | Path, output: str | Path) -> dict:
    """Compare the motor model's tile positions with registration positions from the slice's pairs.

    Parameters
    ----------
    pairs_file : str or Path
        The slice's pairs JSON (:class:`~linumpy_motor.io.schemas.PairsFile`).
    transform_file : str or Path
        Motor transform (:func:`~linumpy_motor.io.schemas.read_model`): the matrix and its backlash term.
    output : str or Path
        Comparison JSON to write (:func:`~linumpy_motor.io.outputs.check_output`); replaced atomically.

    Returns
    -------
    dict
        The content written (see :class:`~linumpy_motor.io.schemas.CompareFile`): ``slice_id``,
        ``source``, ``version``, ``n_connected_tiles`` (tiles linked to another by a pair) and the
        statistics of :func:`~linumpy_motor.qc.compare.compare_positions`.

    Raises
    ------
    InputError
        An unreadable or invalid pairs or transform file, or an output that is one of them.
    """
    check_output(output, pairs_file, transform_file, stage="compare")
    pairs = load(pairs_file, PairsFile)
    transform, backlash = schemas.read_model(transform_file)
    nx, ny = pairs.grid
    motor = geometry.affine_positions(nx, ny, transform, backlash)
    with blas_on_one_thread():
        registered, connected = geometry.registration_positions(pairs.table(), nx, ny, motor)
    content = {
        "slice_id": pairs.slice_id, "source": pairs.source, "version": __version__,
        "n_connected_tiles": int(connected.sum()),
        **compare_positions(motor, registered),
    }
    write_json(output, content, "compare")
    return content


Placement = Literal["model", "registered"]
"""Where the stitcher puts tiles: at the model's positions, or the model plus each tile's registered residual."""
PLACEMENTS: tuple[Placement, ...] = get_args(Placement)
DEFAULT_PLACEMENT: Placement = "model"


def tile_positions(transform_file: str | Path, grid: tuple[int, int], *, placement: Placement = DEFAULT_PLACEMENT,
                   pairs_file: str | Path | None = None) -> np.ndarray:
    """Where the stitcher puts each tile of a slice.

    Parameters
    ----------
    transform_file : str or Path
        ``motor_transform.json`` (A and the backlash term).
    grid : (nx, ny)
        The slice's grid.
    placement : {"model", "registered"}
        ``model``: ``A @ [i, j]`` plus the backlash of odd rows; ``registered``: that plus each
        tile's registered residual from the slice's pairs (:func:`geometry.registered_positions`),
        for slices where the model alone leaves seams.
    pairs_file : str, Path or None
        The slice's pairs JSON (needed by ``registered``).

    Returns
    -------
    np.ndarray
        ``(nx * ny, 2)`` top-left positions, row-major.

    Raises
    ------
    InputError
        An unknown placement, a missing pairs file, or one of another grid.
    """
    check_choice("placement", placement, PLACEMENTS)
    transform, backlash = schemas.read_model(transform_file)
    nx, ny = grid
    model = geometry.model_positions(nx, ny, transform, backlash)
    if placement == "model":
        return model
    if pairs_file is None:
        raise InputError(None, "placement 'registered' needs the slice's pairs file")
    pairs = load(pairs_file, PairsFile)
    if tuple(pairs.grid) != (nx, ny):
        raise InputError(pairs_file, f"grid {list(pairs.grid)} differs from the slice's {[nx, ny]}")
    return geometry.registered_positions(pairs.table(), nx, ny, model)


def copy_transform(source: str | Path, output: str | Path) -> dict:
    """Validate a known motor model (``--transform``: see :func:`~linumpy_motor.io.schemas.load_transform`)
    and write it as this run's transform JSON."""
    check_output(output, source, stage="transform")
    content = schemas.load_transform(source).model_dump(mode="json")
    content["diagnostics"] = {**content["diagnostics"], "given_transform": Path(source).name}
    write_json(output, content, "transform")
    return content
