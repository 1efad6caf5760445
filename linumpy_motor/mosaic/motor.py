"""Motor-position-based tile placement for mosaic stitching: a drop-in for upstream's ``linumpy.mosaic.motor``.

Upstream's module (linum-uqam/linumpy, commit cc685d4; its API text is ``tests/data/linumpy_mosaic_motor_api.txt``)
and this one have the same names, signatures, return types, dict keys and key sets, rounding, fallbacks,
side effects and logger (``linumpy.mosaic.motor``), so upstream's scripts and tests run on it unchanged.
A caller can tell them apart only by the numbers: pairs are measured to sub-pixel precision, on a
flat-field corrected plane chosen by how well its overlaps correlate, and fitted robustly (pair weights,
outlier rejection and, for measured pairs, a fit to the solved tile positions).

Where this package's own steps refuse (no pair, fewer than three usable pairs along a direction, a
singular matrix), the façade does what upstream does and says so, with a :func:`warnings.warn` and,
in the fit diagnostics, the entry :data:`EXTRA_KEY`. That entry is the one key upstream's dicts do
not have: the core's own diagnostics, JSON-ready.

The façade is an adapter: it converts at its edge, once, between upstream's values (arrays, loose
keyword arguments, pair dicts) and the typed core (:class:`~linumpy_motor.register.measure.MeasureOptions`,
:class:`~linumpy_motor.register.fit.FitOptions`, pair tables, :class:`~linumpy_motor.io.records.MotorModel`).
"""

from __future__ import annotations

import json
import logging
import random
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import FrameType

import numpy as np
import numpy.typing as npt
import scipy

from linumpy_motor.errors import FitError, InputError
from linumpy_motor.io.grid import MosaicGrid, finite_float, open_mosaic
from linumpy_motor.io.records import NO_TILE, PAIR_DTYPE, pair_table
from linumpy_motor.io.schemas import is_singular
from linumpy_motor.pipeline.logs import Progress
from linumpy_motor.register import geometry
from linumpy_motor.register.correlation import FILTER_SIGMA
from linumpy_motor.register.fit import (
    DEFAULT_BACKLASH,
    DRIFT_TOLERANCE_PX,
    MIN_PAIRS,
    BacklashMode,
    FitOptions,
    describe_transform,
    fit_pairs,
    fit_pooled,
    pair_arrays,
)
from linumpy_motor.register.flatfield import DEFAULT_FLATFIELD
from linumpy_motor.register.measure import MeasureOptions, measure_mosaic, measure_volume
from linumpy_motor.register.planes import DEFAULT_PLANE, PlaneMode

__all__ = [
    "compute_motor_positions", "compute_registration_refinements", "estimate_affine_from_pairs",
    "pool_pairs_and_fit_global_affine", "compute_affine_positions", "compute_affine_output_shape",
    "apply_blend_shift_refinement", "compare_motor_vs_registration",
]

logger = logging.getLogger("linumpy.mosaic.motor")
"""Upstream's logger: a caller's logging set up for ``linumpy`` sees the façade's messages."""

EXTRA_KEY = "linumpy_motor"
"""The one key the façade adds to upstream's fit diagnostics: the core's diagnostics, or how it fell back."""
BLEND_SHIFT_SHARE = 0.5
"""A tile is shifted by this share of the mean of its neighbours' refinements (each neighbour moves half-way)."""
BLEND_MIN_SHIFT_PX = 0.1
"""A blend shift below this (px) along both axes is skipped."""
BLEND_FILL_PERCENTILE = 1.0
"""What a blend shift uncovers is filled with this percentile of the tile's non-zero values."""
OFFSET_FLAG_PX = 5.0
"""A mean difference beyond this (px) along either axis is a systematic offset."""
DILATION_MIN_TILES = 10
"""The index-error correlation is computed for more tiles than this."""
DILATION_CORRELATION = 0.5
"""An index-error correlation beyond this (absolute) indicates dilation."""
DEGENERATE_STEP_PX = 1e-6
"""Upstream's reading of a step component this small (px): θ is then 0 (``d``), φ - θ 90° (``c``)."""


def _warn(message: str) -> None:
    """Say where the façade follows upstream instead of refusing: in the log, and as a warning that
    points at the caller's line (the first frame outside this module)."""
    logger.warning(message)
    frame: FrameType | None = sys._getframe(1)
    level = 2
    while frame is not None and frame.f_code.co_filename == __file__:
        frame, level = frame.f_back, level + 1
    warnings.warn(message, UserWarning, stacklevel=level)


def compute_motor_positions(nx, ny, tile_shape, overlap_fraction, scale_factor=1.0, rotation_deg=0.0):
    """Compute tile positions based on motor grid (ideal positions).

    Steps are ``int(int(size * (1 - overlap_fraction)) * scale_factor)`` px (truncated twice, as
    upstream does); with a rotation, the grid turns about the first tile, which stays at the origin.

    Parameters
    ----------
    nx, ny : int
        Number of tile rows and columns.
    tile_shape : tuple
        Tile dimensions (z, height, width).
    overlap_fraction : float
        Expected overlap between tiles (0-1).
    scale_factor : float
        Scale applied to step size (default 1.0 = no scaling).
    rotation_deg : float
        Global grid rotation in degrees (default 0.0).

    Returns
    -------
    positions : list
        ``(row, col)`` pixel position of each tile, row-major: tuples of int, or without a rotation
        of 0, int arrays (the rotated positions truncated toward zero; they may be negative).
    step_y, step_x : int
        Y and X step in pixels.
    """
    step_y = int(int(tile_shape[1] * (1.0 - overlap_fraction)) * scale_factor)
    step_x = int(int(tile_shape[2] * (1.0 - overlap_fraction)) * scale_factor)
    nominal = [np.array([i * step_y, j * step_x]) for i in range(nx) for j in range(ny)]
    if rotation_deg == 0.0:
        return [(int(row), int(col)) for row, col in nominal], step_y, step_x
    theta = np.radians(rotation_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    return [np.dot(rotation, position).astype(int) for position in nominal], step_y, step_x


# -- pairs: the core's pair table and upstream's pair dicts -------------------------------------------


class _MeasuredPair(dict):
    """A pair dict with upstream's four keys that also remembers what the measurement knows about it:
    which tiles it joins and its NCC (attributes, not keys), so a fit of the pairs this façade measured
    weighs them and uses the tile positions."""

    __slots__ = ("tile", "ncc")

    def __init__(self, record: np.void) -> None:
        super().__init__(row_delta=int(record["row_delta"]), col_delta=int(record["col_delta"]),
                         measured_dy=float(record["measured_dy"]), measured_dx=float(record["measured_dx"]))
        self.tile = (int(record["tile"][0]), int(record["tile"][1]))
        self.ncc = float(record["ncc"])


def _table_of(pairs: Sequence[Mapping]) -> np.ndarray:
    """The pair table of upstream's pair dicts, with the tiles and NCC of pairs this façade measured.

    Pairs of several slices pooled in one list name the same tiles more than once: their tiles are
    then forgotten (each slice's tiles are its own), and the pairs fitted as bare pairs.
    """
    table = pair_table(pairs)
    for row, pair in enumerate(pairs):
        if isinstance(pair, _MeasuredPair):
            table["tile"][row], table["ncc"][row] = pair.tile, pair.ncc
    keys = np.column_stack([table["tile"], table["row_delta"], table["col_delta"]])
    known = (table["tile"] != NO_TILE).all(axis=1)
    if len(np.unique(keys[known], axis=0)) < known.sum():
        table["tile"] = NO_TILE
    return table


def _upstream_order(table: np.ndarray) -> np.ndarray:
    """Upstream's pair order: every horizontal pair, then every vertical one, each row-major."""
    return np.concatenate([table[table["col_delta"] != 0], table[table["col_delta"] == 0]])


def _nominal_steps(tile_shape: Sequence[int], overlap_fraction: float) -> tuple[float, float]:
    """Upstream's expected steps ``size * (1 - overlap_fraction)`` (px, not rounded)."""
    return tile_shape[1] * (1.0 - overlap_fraction), tile_shape[2] * (1.0 - overlap_fraction)


def _refinements(table: np.ndarray, n_total: int, tile_shape: Sequence[int], overlap_fraction: float,
                 max_refinement_px: float) -> dict:
    """Upstream's refinements of a slice's measured pairs (already in upstream's order).

    A pair's residual is its displacement less the nominal step; a residual longer than
    ``max_refinement_px`` is scaled down to that length (the pair is counted as clamped).
    """
    step_y, step_x = _nominal_steps(tile_shape, overlap_fraction)
    horizontal: dict[tuple[int, int], dict] = {}
    vertical: dict[tuple[int, int], dict] = {}
    magnitudes, clamped = [], 0
    for record in table:
        is_horizontal = bool(record["col_delta"])
        dy = float(record["measured_dy"]) - (0.0 if is_horizontal else step_y)
        dx = float(record["measured_dx"]) - (step_x if is_horizontal else 0.0)
        magnitude = float(np.hypot(dy, dx))
        if magnitude > max_refinement_px:
            dy, dx = dy * max_refinement_px / magnitude, dx * max_refinement_px / magnitude
            clamped += 1
        key = (int(record["tile"][0]), int(record["tile"][1]))
        (horizontal if is_horizontal else vertical)[key] = {"dx": float(dx), "dy": float(dy)}
        magnitudes.append(magnitude)
    return {
        "horizontal": horizontal,
        "vertical": vertical,
        "pairs": [_MeasuredPair(record) for record in table],
        "stats": {"total_pairs": n_total, "valid_pairs": len(table), "clamped_pairs": clamped,
                  "mean_refinement": float(np.mean(magnitudes)) if magnitudes else 0.0,
                  "max_refinement": float(np.max(magnitudes)) if magnitudes else 0.0},
    }


def _attempted(stats: Mapping) -> int:
    """Upstream's ``total_pairs``: the pairs not skipped as empty (those the correlation was asked about)."""
    return int(stats["n_pairs_total"] - stats["n_skipped_empty"])


def _log_measurement(label: str, table: np.ndarray, stats: Mapping) -> None:
    logger.info("%s: %d valid pairs of %d (plane z=%s, %s; flat field %s; %d no better than chance; backend %s)",
                label, len(table), _attempted(stats), stats["z"], stats["plane_mode"], stats["flatfield"],
                stats["n_background"], stats["backend"])


def compute_registration_refinements(volume, tile_shape, nx, ny, overlap_fraction,
                                     max_refinement_px=geometry.MAX_REFINEMENT_PX, *,
                                     histogram_match=False, max_empty_fraction=None, use_gpu=False,
                                     z: int | None = None, plane: PlaneMode = DEFAULT_PLANE,
                                     flatfield: str | np.ndarray | None = DEFAULT_FLATFIELD,
                                     background_test: bool = True, max_shift_px: float | None = None,
                                     filter_sigma: float = FILTER_SIGMA, progress: bool = False):
    """Correlate neighboring tiles within a slice to measure displacement errors.

    Parameters
    ----------
    volume : array-like
        The mosaic grid ``(Z, nx*tile_h, ny*tile_w)`` (NumPy, zarr or dask), any number of planes, or
        one plane ``(nx*tile_h, ny*tile_w)``. Only the measured plane and a few tiles are read.
    tile_shape : tuple
        Tile dimensions (z, height, width); only height and width are used (the planes are the volume's).
    nx, ny : int
        Number of tile rows and columns.
    overlap_fraction : float
        Expected overlap fraction (checked by :func:`~linumpy_motor.io.schemas.check_overlap`).
    max_refinement_px : float
        Residual vectors kept for blend refinement longer than this are scaled down to it (and
        counted in ``stats['clamped_pairs']``); ``pairs`` are not.
    histogram_match : bool, keyword-only
        Match the second overlap's histogram to the first before correlating.
    max_empty_fraction : float or None, keyword-only
        Skip pairs whose overlap is more than this fraction background (Otsu threshold).
        ``None``: skip pairs one of whose overlaps is less than 10 % non-zero.
    use_gpu : bool, keyword-only
        Run the FFT work with CuPy when a CUDA device is usable (else the CPU).
    z, plane, flatfield, background_test, max_shift_px, filter_sigma : keyword-only
        This package's measuring options (:class:`~linumpy_motor.register.measure.MeasureOptions`).
    progress : bool, keyword-only
        Show progress (a bar on a terminal, log lines elsewhere).

    Returns
    -------
    dict
        ``horizontal`` and ``vertical``: ``{(i, j): {"dx", "dy"}}``, the residual of the pair from tile
        ``(i, j)`` to its right or lower neighbour (its displacement less the nominal step
        ``size * (1 - overlap_fraction)``), clamped; ``pairs``: ``row_delta``, ``col_delta``,
        ``measured_dy`` and ``measured_dx`` (absolute sub-pixel displacements), horizontal pairs
        first; ``stats``: ``total_pairs`` (pairs not empty), ``valid_pairs`` (pairs measured; the
        others correlate no better than non-overlapping windows), ``clamped_pairs``,
        ``mean_refinement`` and ``max_refinement`` (residual lengths before clamping, px).
    """
    h, w = int(tile_shape[1]), int(tile_shape[2])
    if getattr(volume, "ndim", 3) == 2:
        shape = (1, h, w)

        def read(zs: slice, rows: slice, cols: slice) -> np.ndarray:
            return finite_float(volume[rows, cols], None)[None]
    else:
        shape = (int(volume.shape[0]), h, w)

        def read(zs: slice, rows: slice, cols: slice) -> np.ndarray:
            return finite_float(volume[zs, rows, cols], None)
    options = MeasureOptions(
        z=z if shape[0] > 1 else None, plane=plane, flatfield=flatfield, background_test=background_test,
        max_shift_px=max_shift_px, histogram_match=histogram_match, max_empty_fraction=max_empty_fraction,
        use_gpu=use_gpu, filter_sigma=filter_sigma,
    )
    table, _, stats = measure_volume(read, shape, nx, ny, overlap_fraction, options,
                                     progress=Progress("measure", "tile row") if progress else None)
    _log_measurement("slice", table, stats)
    return _refinements(_upstream_order(table), _attempted(stats), tile_shape, overlap_fraction, max_refinement_px)


# -- the fit ------------------------------------------------------------------------------------------


def _extract_displacement_params(transform, tile_shape, overlap_fraction) -> dict:
    """Lefebvre et al. (2017) motor model parameters of a 2x2 matrix, as upstream reports them.

    Parameters
    ----------
    transform : np.ndarray
        The 2x2 matrix ``[[a, b], [c, d]]`` mapping a tile step ``(row_delta, col_delta)`` to ``(dy, dx)``.
    tile_shape : tuple
        Tile dimensions (z, height, width).
    overlap_fraction : float
        Expected overlap fraction (reported as ``expected_overlap``).

    Returns
    -------
    dict
        ``theta_deg``, ``phi_deg`` (:func:`~linumpy_motor.register.fit.describe_transform`'s
        conventions; θ is 0 when ``|d|``, and φ - θ 90° when ``|c|``, is at most
        :data:`DEGENERATE_STEP_PX`), ``Ox_fraction``, ``Oy_fraction`` (1 - step length / tile size),
        ``expected_overlap``, ``off_diagonal_px`` (``[b, c]``) and ``transform`` (nested lists).
    """
    A = np.asarray(transform, dtype=float)
    described = describe_transform(A, tile_shape, overlap_fraction)
    theta = described["theta_deg"] if abs(A[1, 1]) > DEGENERATE_STEP_PX else 0.0
    phi_less_theta = described["phi_deg"] - described["theta_deg"] if abs(A[1, 0]) > DEGENERATE_STEP_PX else 90.0
    return {
        "theta_deg": theta,
        "phi_deg": phi_less_theta + theta,
        "Ox_fraction": described["Ox_fraction"],
        "Oy_fraction": described["Oy_fraction"],
        "expected_overlap": float(overlap_fraction),
        "off_diagonal_px": [float(A[0, 1]), float(A[1, 0])],
        "transform": A.tolist(),
    }


def _nominal_model(tile_shape: Sequence[int], overlap_fraction: float) -> np.ndarray:
    """Upstream's model without pairs: the diagonal of the nominal steps."""
    return np.diag(_nominal_steps(tile_shape, overlap_fraction))


def _least_squares(table: np.ndarray, reason: str) -> tuple[np.ndarray, float, dict]:
    """Upstream's fit, for pairs the robust fit refuses: plain least squares over every pair (the
    minimum-norm solution when a direction has none), its residual sum of squares (0 when the system
    is not over-determined), and the note for the diagnostics."""
    X, Y, _ = pair_arrays(table)
    solution, residuals, _, _ = np.linalg.lstsq(X, Y, rcond=None)
    message = f"{reason}: fitted by plain least squares over all {len(table)} pairs, as linumpy does"
    _warn(message)
    return solution.T, float(np.sum(residuals)), {"method": "least squares", "warning": message}


def _residual_sum(table: np.ndarray, A: np.ndarray) -> float:
    """Sum of squared residuals (px²) of matrix ``A`` over every pair: upstream's ``lstsq_residual``."""
    X, Y, _ = pair_arrays(table)
    return float(np.sum((Y - X @ A.T) ** 2))


def estimate_affine_from_pairs(pairs, tile_shape, overlap_fraction, *, min_pairs: int = MIN_PAIRS):
    """Estimate a 2x2 affine displacement model from neighbor tile correlations.

    Model: ``pixel_pos = A @ [i, j]``. A robust weighted fit (L1 start, Tukey biweight; NCC weights
    and a fit to the solved tile positions for pairs :func:`compute_registration_refinements` measured)
    when each direction has ``min_pairs`` usable pairs; otherwise upstream's plain least squares, with a
    warning.

    Parameters
    ----------
    pairs : list of dict
        Each has ``row_delta``, ``col_delta``, ``measured_dy``, ``measured_dx``.
    tile_shape : tuple
        Tile dimensions (z, height, width).
    overlap_fraction : float
        Expected overlap fraction (for diagnostics only).
    min_pairs : int, keyword-only
        Usable pairs needed along each direction for the robust fit.

    Returns
    -------
    transform : np.ndarray
        Fitted 2x2 matrix mapping tile index to pixel position; without pairs, the nominal diagonal
        ``size * (1 - overlap_fraction)`` (with a warning).
    diagnostics : dict
        Without pairs ``{"fallback": True, "reason": "no pairs"}``; else the keys of
        :func:`_extract_displacement_params` plus ``n_pairs``, ``lstsq_residual`` (sum of squared
        residuals over the pairs, px²), ``fallback`` (False) and :data:`EXTRA_KEY`: the robust fit's
        diagnostics, or ``method`` ``"least squares"`` and the ``warning``.
    """
    if len(pairs) == 0:
        _warn("no pairs: the nominal motor model is returned, as linumpy does")
        return _nominal_model(tile_shape, overlap_fraction), {"fallback": True, "reason": "no pairs"}
    table = _table_of(pairs)
    try:
        model, extra = fit_pairs(table, tile_shape, overlap_fraction, FitOptions(min_pairs=min_pairs))
    except FitError as exc:
        transform, residual, extra = _least_squares(table, str(exc))
    else:
        transform, residual = model.matrix, _residual_sum(table, model.matrix)
        extra = {"method": "robust", **extra}
    diagnostics = _extract_displacement_params(transform, tile_shape, overlap_fraction)
    diagnostics.update(n_pairs=len(pairs), lstsq_residual=residual, fallback=False)
    diagnostics[EXTRA_KEY] = extra
    return transform, diagnostics


def _sampled(tables: list[np.ndarray], n_samples: int | None, seed: int) -> tuple[list[np.ndarray], bool]:
    """Upstream's sub-sample of the pooled pairs: ``random.Random(seed).sample`` of ``n_samples`` of the
    pooled list (slice after slice, each in upstream's order), when there are more; each slice's share
    kept in its order."""
    total = sum(len(t) for t in tables)
    if n_samples is None or total <= n_samples:
        return tables, False
    chosen = np.zeros(total, dtype=bool)
    chosen[random.Random(seed).sample(range(total), n_samples)] = True
    bounds = np.cumsum([0] + [len(t) for t in tables])
    return [t[chosen[bounds[k]:bounds[k + 1]]] for k, t in enumerate(tables)], True


def _pooled_fit(tables: list[np.ndarray], grids: list[MosaicGrid], tile_shape: tuple[int, int, int],
                overlap_fraction: float, options: FitOptions) -> tuple[np.ndarray, dict]:
    """The pooled robust fit of the slices' tables, or upstream's fallbacks when it refuses; the
    diagnostics' keys ``lstsq_residual``, ``fallback`` and :data:`EXTRA_KEY`."""
    pooled = np.concatenate(tables) if tables else np.zeros(0, PAIR_DTYPE)
    if len(pooled) == 0:
        _warn("no pairs in any slice: the nominal motor model is returned, as linumpy does")
        return _nominal_model(tile_shape, overlap_fraction), {
            "lstsq_residual": None, "fallback": True,
            EXTRA_KEY: {"method": "nominal", "warning": "no pairs"}}
    try:
        model, extra = fit_pooled(dict(enumerate(tables)), {k: (g.nx, g.ny) for k, g in enumerate(grids)},
                                  tile_shape, overlap_fraction, options)
    except FitError as exc:
        transform, residual, extra = _least_squares(pooled, str(exc))
        return transform, {"lstsq_residual": residual, "fallback": False, EXTRA_KEY: extra}
    return model.matrix, {"lstsq_residual": _residual_sum(pooled, model.matrix), "fallback": False,
                          EXTRA_KEY: {"method": "robust", **extra}}


def _with_slice_ids(extra: dict, slice_ids: list, measurements: list[dict]) -> dict:
    """The pooled fit's diagnostics with the caller's slice ids: ``per_slice`` a list in the order the
    slices were given (each with its ``slice_id`` and ``measurement``), ``drifting_slices`` their ids."""
    if "per_slice" not in extra:
        return extra
    per_slice = [{"slice_id": sid, **extra["per_slice"][str(k)], "measurement": measurements[k]}
                 for k, sid in enumerate(slice_ids)]
    drifting = [slice_ids[int(k)] for k in extra["drifting_slices"]]
    return {**extra, "per_slice": per_slice, "drifting_slices": drifting}


def pool_pairs_and_fit_global_affine(volumes, overlap_fraction, *, histogram_match=False, max_empty_fraction=None,
                                     n_samples=None, seed=0, use_gpu=False, z: int | None = None,
                                     plane: PlaneMode = DEFAULT_PLANE, flatfield: str | None = DEFAULT_FLATFIELD,
                                     background_test: bool = True, max_shift_px: float | None = None,
                                     drift_tolerance_px: float = DRIFT_TOLERANCE_PX,
                                     backlash: BacklashMode = DEFAULT_BACKLASH, progress: bool = False):
    """Pool neighbor-tile pair measurements across many mosaic grids and fit one affine.

    Each grid's pairs are measured as :func:`compute_registration_refinements` measures them (on the
    plane whose overlaps correlate best, not only the central one), pooled slice after slice,
    sub-sampled as upstream does when ``n_samples`` is exceeded, and fitted together robustly (one
    model for every slice, each slice's tiles solved from its pairs).

    Parameters
    ----------
    volumes : list of (slice_id, path)
        ``*.ome.zarr`` mosaic grids (3-D, or 2-D as one plane); ``slice_id`` labels the slice, as
        given. A grid whose tile height and width differ from the first one's is skipped, with a warning.
    overlap_fraction : float
        Expected tile overlap fraction (must match acquisition).
    histogram_match, max_empty_fraction, use_gpu : keyword-only
        As in :func:`compute_registration_refinements`.
    n_samples : int or None, keyword-only
        When the pooled pair count exceeds this, fit a sub-sample of this many pairs,
        ``random.Random(seed).sample`` of the pooled list.
    seed : int, keyword-only
        Seed of the sub-sample.
    z, plane, flatfield, background_test, max_shift_px : keyword-only
        This package's measuring options (:class:`~linumpy_motor.register.measure.MeasureOptions`;
        ``flatfield`` may also be the path of a ``.npy`` flat field); ``z`` is the same plane in every slice.
    drift_tolerance_px, backlash : keyword-only
        This package's fitting options (:class:`~linumpy_motor.register.fit.FitOptions`).
    progress : bool, keyword-only
        Show progress (bars on a terminal, log lines elsewhere).

    Returns
    -------
    transform : np.ndarray
        The pooled 2x2 matrix (the nominal diagonal when no slice has a pair).
    diagnostics : dict
        Upstream's: ``n_volumes``, ``n_pairs_pooled_total``, ``n_pairs_used``, ``tile_shape``,
        ``overlap_fraction``, ``histogram_match``, ``max_empty_fraction``, ``sampled_n``, ``seed``
        (None when not sampled), ``backend`` (``"gpu"`` or ``"cpu"``: the one that ran),
        ``transform``, ``displacement_model`` (:func:`_extract_displacement_params`),
        ``lstsq_residual``, ``fallback``, ``per_slice_stats`` (each slice's ``stats`` of
        :func:`compute_registration_refinements` with ``slice_id``, ``nx``, ``ny``); and
        :data:`EXTRA_KEY`: the pooled fit's diagnostics (per slice: its own fit, drift and measurement).

    Raises
    ------
    InputError
        A path is not a mosaic grid, or no grid is usable (a ValueError, as upstream's).
    """
    options = MeasureOptions(z=z, plane=plane, flatfield=flatfield, background_test=background_test,
                             max_shift_px=max_shift_px, histogram_match=histogram_match,
                             max_empty_fraction=max_empty_fraction, use_gpu=use_gpu)
    slice_ids: list = []
    grids: list[MosaicGrid] = []
    tables: list[np.ndarray] = []
    stats: list[dict] = []
    chunk_z = 0
    for slice_id, path in volumes:
        grid = open_mosaic(path)
        if grids and grid.tile_shape[1:] != grids[0].tile_shape[1:]:
            _warn(f"slice {slice_id}: tile shape {grid.tile_shape[1:]} differs from {grids[0].tile_shape[1:]}: "
                  "skipped, as linumpy does (pooling needs one tile size)")
            continue
        if slice_id in slice_ids:
            _warn(f"slice id {slice_id!r} is given twice: both are pooled, as linumpy does")
        chunk_z = chunk_z or int(grid.array.chunks[0])
        logger.info("slice %s: shape=%s tile=%s grid=%dx%d", slice_id, tuple(grid.array.shape), grid.tile_shape,
                    grid.nx, grid.ny)
        table, _, measured = measure_mosaic(grid, overlap_fraction, options,
                                            progress=Progress(f"measure slice {slice_id}", "tile row")
                                            if progress else None)
        _log_measurement(f"slice {slice_id}", table, measured)
        slice_ids.append(slice_id)
        grids.append(grid)
        tables.append(_upstream_order(table))
        stats.append(measured)
    if not grids:
        raise InputError(None, "No usable mosaic grids produced pair measurements.")
    tile_shape = grids[0].tile_shape
    total = sum(len(t) for t in tables)
    logger.info("pooled pair count: %d", total)
    used, sampled = _sampled(tables, n_samples, seed)
    fitted = FitOptions(drift_tolerance_px=drift_tolerance_px, backlash=backlash)
    transform, fit = _pooled_fit(used, grids, tile_shape, overlap_fraction, fitted)
    per_slice_stats = [{**_refinements(t, _attempted(s), tile_shape, overlap_fraction,
                                       geometry.MAX_REFINEMENT_PX)["stats"],
                        "slice_id": sid, "nx": g.nx, "ny": g.ny}
                       for sid, g, t, s in zip(slice_ids, grids, tables, stats)]
    return transform, {
        "n_volumes": len(grids),
        "n_pairs_pooled_total": total,
        "n_pairs_used": sum(len(t) for t in used),
        "tile_shape": [chunk_z, *tile_shape[1:]],
        "overlap_fraction": overlap_fraction,
        "histogram_match": bool(histogram_match),
        "max_empty_fraction": max_empty_fraction,
        "sampled_n": n_samples,
        "seed": seed if sampled else None,
        "backend": "gpu" if any(s["backend"] != "numpy" for s in stats) else "cpu",
        "transform": transform.tolist(),
        "displacement_model": _extract_displacement_params(transform, tile_shape, overlap_fraction),
        "lstsq_residual": fit["lstsq_residual"],
        "fallback": fit["fallback"],
        "per_slice_stats": per_slice_stats,
        EXTRA_KEY: _with_slice_ids(fit[EXTRA_KEY], slice_ids, stats),
    }


# -- placing tiles --------------------------------------------------------------------------------------


def _motor_matrix(transform: npt.ArrayLike) -> np.ndarray:
    """A motor matrix as given, warned about when singular (this package's own steps refuse one)."""
    A = np.asarray(transform, dtype=float)
    if A.shape == (2, 2) and np.isfinite(A).all() and is_singular(A):
        _warn(f"singular motor matrix {A.tolist()}: tiles are placed with it, as linumpy does")
    return A


def compute_affine_positions(nx, ny, transform, *, subpixel: bool = False):
    """Compute tile positions using a 2x2 affine displacement model.

    Parameters
    ----------
    nx, ny : int
        Number of tile rows and columns.
    transform : np.ndarray
        2x2 matrix mapping tile index (i, j) to pixel position (row, col).
    subpixel : bool, keyword-only
        Return float positions instead of rounded ones.

    Returns
    -------
    positions : list of (int, int)
        ``transform @ [i, j]`` of each tile, row-major, rounded to the nearest int (halves to even,
        as Python's ``round``): tile (0, 0) at the origin, others possibly negative. Floats when ``subpixel``.
    """
    positions = geometry.model_positions(nx, ny, _motor_matrix(transform))
    if subpixel:
        return [(float(row), float(col)) for row, col in positions]
    return [(int(row), int(col)) for row, col in np.rint(positions)]


def compute_affine_output_shape(nx, ny, tile_shape, transform):
    """Compute the output mosaic shape from affine tile positions.

    The bounding box of the origin and every corner tile (at ``transform @ [i, j]``, of size
    ``tile_shape[1:]``), each side rounded up.

    Returns
    -------
    tuple of int
        (nz, output_height, output_width).
    """
    corners = geometry.grid_corners(nx, ny) @ _motor_matrix(transform).T
    low = np.minimum(corners.min(axis=0), 0.0)
    high = np.maximum((corners + (tile_shape[1], tile_shape[2])).max(axis=0), 0.0)
    height, width = np.ceil(high - low)
    return int(tile_shape[0]), int(height), int(width)


def apply_blend_shift_refinement(tile, refinements_for_tile):
    """Apply registration refinement by shifting tile data in overlap regions.

    The tile is shifted by :data:`BLEND_SHIFT_SHARE` of the mean of its neighbours' ``(dy, dx)``
    (a missing key counts as 0), with linear interpolation; what the shift uncovers is filled with
    the :data:`BLEND_FILL_PERCENTILE` th percentile of the tile's non-zero values (0 if none). The
    tile's position in the mosaic does not change.

    Parameters
    ----------
    tile : np.ndarray
        3-D tile (Z, Y, X).
    refinements_for_tile : list of dict
        Each with ``dy`` and ``dx`` (px).

    Returns
    -------
    np.ndarray
        The shifted tile; the same tile when there is no refinement or the shift is below
        :data:`BLEND_MIN_SHIFT_PX` along both axes.
    """
    if not refinements_for_tile:
        return tile
    count = len(refinements_for_tile)
    dy = sum(r.get("dy", 0) for r in refinements_for_tile) / count * BLEND_SHIFT_SHARE
    dx = sum(r.get("dx", 0) for r in refinements_for_tile) / count * BLEND_SHIFT_SHARE
    if abs(dy) < BLEND_MIN_SHIFT_PX and abs(dx) < BLEND_MIN_SHIFT_PX:
        return tile
    tissue = tile[tile > 0]
    fill = float(np.percentile(tissue, BLEND_FILL_PERCENTILE)) if tissue.size else 0.0
    return scipy.ndimage.shift(tile, (0, dy, dx), order=1, mode="constant", cval=fill)


def compare_motor_vs_registration(motor_positions, reg_positions, output_path=None):
    """Compare motor-based positions with registration-based positions.

    Parameters
    ----------
    motor_positions, reg_positions : list of (row, col)
        Positions of the same tiles, in the same order.
    output_path : str or None
        If given (and not empty), write the statistics there as JSON.

    Returns
    -------
    dict
        Of ``diff = reg - motor``: ``n_tiles``, ``mean_diff_y``, ``mean_diff_x``, ``std_diff_y``,
        ``std_diff_x``, ``max_diff_y``, ``max_diff_x`` (largest absolute), ``mean_magnitude``,
        ``max_magnitude``; ``systematic_offset`` (a mean beyond :data:`OFFSET_FLAG_PX` along either
        axis) with ``offset_warning`` when True; from more than :data:`DILATION_MIN_TILES` tiles,
        ``index_error_correlation`` (of tile index and difference length) and ``dilation_indicator``
        (beyond :data:`DILATION_CORRELATION`), with ``dilation_warning`` when True.
    """
    diff = np.asarray(reg_positions, dtype=float) - np.asarray(motor_positions, dtype=float)
    magnitude = np.hypot(diff[:, 0], diff[:, 1])
    mean_y, mean_x = float(np.mean(diff[:, 0])), float(np.mean(diff[:, 1]))
    comparison: dict = {
        "n_tiles": len(motor_positions),
        "mean_diff_y": mean_y,
        "mean_diff_x": mean_x,
        "std_diff_y": float(np.std(diff[:, 0])),
        "std_diff_x": float(np.std(diff[:, 1])),
        "max_diff_y": float(np.max(np.abs(diff[:, 0]))),
        "max_diff_x": float(np.max(np.abs(diff[:, 1]))),
        "mean_magnitude": float(np.mean(magnitude)),
        "max_magnitude": float(np.max(magnitude)),
        "systematic_offset": abs(mean_y) > OFFSET_FLAG_PX or abs(mean_x) > OFFSET_FLAG_PX,
    }
    if comparison["systematic_offset"]:
        comparison["offset_warning"] = f"Systematic offset detected: ({mean_y:.1f}, {mean_x:.1f}) pixels"
    if len(motor_positions) > DILATION_MIN_TILES:
        correlation = float(np.corrcoef(np.arange(len(motor_positions)), magnitude)[0, 1])
        comparison["index_error_correlation"] = correlation
        comparison["dilation_indicator"] = abs(correlation) > DILATION_CORRELATION
        if comparison["dilation_indicator"]:
            comparison["dilation_warning"] = (f"Error increases with tile index (r={correlation:.2f}), "
                                              "suggesting dilation/scaling")
    if output_path:
        Path(output_path).write_text(json.dumps(comparison, indent=2))
    return comparison
