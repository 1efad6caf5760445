"""Motor-position-based tile placement for mosaic stitching.

Drop-in for the reference ``linumpy.mosaic.motor``: the same eight functions, parameters and
return values, with sub-pixel measurement, a robust weighted fit, explicit errors instead of an
identity fallback, and extra keyword-only options where they add something.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from linumpy_motor.errors import InputError
from linumpy_motor.io.dataset import check_consistent, check_unique_ids
from linumpy_motor.io.grid import MosaicGrid, finite_float, open_mosaic
from linumpy_motor.io.outputs import write_json
from linumpy_motor.io.schemas import check_transform
from linumpy_motor.pipeline.logs import Progress
from linumpy_motor.qc.compare import compare_positions
from linumpy_motor.register import geometry
from linumpy_motor.register.correlation import FILTER_SIGMA
from linumpy_motor.register.fit import (
    DEFAULT_BACKLASH,
    DEFAULT_SEED,
    DRIFT_TOLERANCE_PX,
    MIN_PAIRS,
    fit_pairs,
    fit_pooled,
)
from linumpy_motor.register.flatfield import DEFAULT_FLATFIELD
from linumpy_motor.register.measure import backends_used, measure_mosaic, measure_volume
from linumpy_motor.register.planes import DEFAULT_PLANE

logger = logging.getLogger(__name__)

__all__ = [
    "compute_motor_positions", "compute_registration_refinements", "estimate_affine_from_pairs",
    "pool_pairs_and_fit_global_affine", "compute_affine_positions", "compute_affine_output_shape",
    "apply_blend_shift_refinement", "compare_motor_vs_registration",
]


def compute_motor_positions(nx, ny, tile_shape, overlap_fraction, scale_factor=1.0, rotation_deg=0.0):
    """Compute tile positions based on motor grid (ideal positions).

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
    positions : list of (int, int)
        (row, col) pixel position of each tile, row-major, the mosaic starting at (0, 0).
    step_y, step_x : int
        Y and X step in pixels.
    """
    transform = geometry.ideal_transform(tile_shape, overlap_fraction, scale_factor, rotation_deg)
    positions = geometry.affine_positions(nx, ny, transform)
    step_y, step_x = geometry.integer_step(tile_shape, overlap_fraction, scale_factor)
    return [tuple(int(v) for v in p) for p in np.rint(positions)], step_y, step_x


def _clamped_residuals(pairs: list[dict], steps: tuple[int, int], limit: float, horizontal: bool) -> list[dict]:
    residuals = []
    for pair in pairs:
        if bool(pair["col_delta"]) != horizontal:
            continue
        i, j = pair["tile"]
        dy = pair["measured_dy"] - (0 if horizontal else steps[0])
        dx = pair["measured_dx"] - (steps[1] if horizontal else 0)
        residuals.append({
            "tile": [i, j], "neighbor": [i + pair["row_delta"], j + pair["col_delta"]],
            "dy": float(np.clip(dy, -limit, limit)), "dx": float(np.clip(dx, -limit, limit)), "ncc": pair["ncc"],
        })
    return residuals


def compute_registration_refinements(volume, tile_shape, nx, ny, overlap_fraction,
                                     max_refinement_px=geometry.MAX_REFINEMENT_PX, *,
                                     histogram_match=False, max_empty_fraction=None, use_gpu=False,
                                     z=None, plane=DEFAULT_PLANE, flatfield=DEFAULT_FLATFIELD, background_test=True,
                                     max_shift_px=None, filter_sigma=FILTER_SIGMA, progress=False):
    """Correlate neighboring tiles within a slice to measure displacement errors.

    Parameters
    ----------
    volume : array-like
        The mosaic grid (Z, nx*tile_h, ny*tile_w) (NumPy, zarr or dask; only one plane is read),
        or that one plane (nx*tile_h, ny*tile_w).
    tile_shape : tuple
        Tile dimensions (z, height, width).
    nx, ny : int
        Number of tile rows and columns.
    overlap_fraction : float
        Expected overlap fraction (checked by :func:`~linumpy_motor.io.schemas.check_overlap`).
    max_refinement_px : float
        Residuals kept for blend refinement are clamped to this; ``pairs`` are not.
    histogram_match : bool, keyword-only
        Match the second overlap's histogram to the first before correlating.
    max_empty_fraction : float or None, keyword-only
        Skip pairs whose overlap is more than this fraction background (Otsu threshold).
        ``None``: skip pairs one of whose overlaps is more than
        :data:`~linumpy_motor.register.measure.MAX_EMPTY_DEFAULT` zero.
    use_gpu : bool, keyword-only
        Run the FFT work with CuPy when a CUDA device is usable (else the CPU, with a warning);
        ``stats['backend']`` says which ran.
    z : int or None, keyword-only
        Plane to measure (default: chosen by ``plane``).
    plane : {"auto", "central", "mean"}, keyword-only
        When ``z`` is None: the plane whose overlaps correlate best (``auto``), the central
        plane, or the mean over all planes (:func:`linumpy_motor.register.planes.choose_plane`).
    flatfield : "estimate", "none" or np.ndarray, keyword-only
        Divide tiles by the slice's flat field (estimated from its tissue tiles on the measured
        plane, or the ``(h, w)`` array given) before measuring: this removes the vignetting bias.
    background_test : bool, keyword-only
        Skip pairs whose NCC is no better than that of non-overlapping windows (agarose).
    max_shift_px : float or None, keyword-only
        Largest stage error searched (default: :func:`~linumpy_motor.register.correlation.search_limit`).
    filter_sigma : float, keyword-only
        Gaussian low-pass of the whitened spectrum (px).
    progress : bool, keyword-only
        Show progress (a bar on a terminal, log lines elsewhere).

    Returns
    -------
    dict
        ``horizontal`` and ``vertical``: clamped residuals (``tile``, ``neighbor``, ``dy``, ``dx``,
        ``ncc``); ``pairs``: absolute sub-pixel displacements (``row_delta``, ``col_delta``,
        ``measured_dy``, ``measured_dx``, plus ``tile``, ``ncc``, ``empty_fraction``);
        ``skipped``: pairs left out and why; ``stats``.
    """
    if getattr(volume, "ndim", 3) == 3:
        read, shape = (lambda zs, rows, cols: finite_float(volume[zs, rows, cols], None)), tuple(tile_shape)
    else:
        read, shape = (lambda zs, rows, cols: finite_float(volume[rows, cols], None)[None]), (1, *tile_shape[-2:])
    measured, skipped, stats = measure_volume(
        read, shape, nx, ny, overlap_fraction, z=z if shape[0] > 1 else None, plane=plane, flatfield=flatfield,
        max_shift_px=max_shift_px, histogram_match=histogram_match, max_empty_fraction=max_empty_fraction,
        use_gpu=use_gpu, filter_sigma=filter_sigma, background_test=background_test,
        progress=Progress("measure", "tile row") if progress else None,
    )
    steps = tuple(stats["expected_step_px"])
    return {
        "horizontal": _clamped_residuals(measured, steps, max_refinement_px, horizontal=True),
        "vertical": _clamped_residuals(measured, steps, max_refinement_px, horizontal=False),
        "pairs": measured,
        "skipped": skipped,
        "stats": stats,
    }


def estimate_affine_from_pairs(pairs, tile_shape, overlap_fraction, *, min_pairs=MIN_PAIRS):
    """Estimate a 2x2 affine displacement model from neighbor tile correlations.

    Robust weighted least squares (NCC weights, L1 start, Tukey biweight) on the absolute
    displacements from :func:`compute_registration_refinements`. Model: ``pixel_pos = A @ [i, j]``.

    Parameters
    ----------
    pairs : list of dict
        Each has ``row_delta``, ``col_delta``, ``measured_dy``, ``measured_dx`` (``ncc`` optional).
    tile_shape : tuple
        Tile dimensions (z, height, width).
    overlap_fraction : float
        Expected overlap fraction (for diagnostics only).
    min_pairs : int, keyword-only
        Usable pairs needed along each direction.

    Returns
    -------
    transform : np.ndarray
        Fitted 2x2 matrix mapping tile index to pixel position.
    diagnostics : dict
        θ, φ, Ox, Oy (upstream conventions), deviation from perpendicular, scales, inlier and
        outlier counts, residual RMS.

    Raises
    ------
    FitError
        Too few usable pairs (there is no silent identity fallback).
    """
    return fit_pairs(pairs, tile_shape, overlap_fraction, min_pairs=min_pairs)


def pool_pairs_and_fit_global_affine(volumes, overlap_fraction, *, histogram_match=False, max_empty_fraction=None,
                                     n_samples=None, seed=DEFAULT_SEED, use_gpu=False,
                                     drift_tolerance_px=DRIFT_TOLERANCE_PX, max_shift_px=None, z=None,
                                     plane=DEFAULT_PLANE, flatfield=DEFAULT_FLATFIELD, background_test=True,
                                     backlash=DEFAULT_BACKLASH, progress=False):
    """Pool neighbor-tile pair measurements across many mosaic grids and fit one affine.

    Parameters
    ----------
    volumes : list of (slice_id, path)
        ``*.ome.zarr`` mosaic grids; one plane of each is measured (see ``z``).
    overlap_fraction : float
        Expected tile overlap fraction (must match acquisition).
    histogram_match, max_empty_fraction, use_gpu : keyword-only
        Forwarded to :func:`compute_registration_refinements`.
    n_samples : int or None, keyword-only
        Fit a reproducible random sub-sample of this many pooled pairs.
    seed : int, keyword-only
        Seed of the sub-sample.
    drift_tolerance_px : float, keyword-only
        Flag slices whose own model disagrees with the pooled one by more than this (px).
    max_shift_px : float or None, keyword-only
        Largest stage error searched.
    z, plane, flatfield, background_test : keyword-only
        As in :func:`compute_registration_refinements` (``flatfield`` may also be a ``.npy`` path);
        ``z`` is the same plane in every slice.
    backlash : {"auto", "on", "off"}, keyword-only
        The serpentine backlash term of the model: kept when significant, always, or never
        (:func:`linumpy_motor.register.fit.fit_pooled`); ``diagnostics['backlash']`` reports it.
    progress : bool, keyword-only
        Show progress (bars on a terminal, log lines elsewhere).

    Returns
    -------
    transform : np.ndarray
        The pooled 2x2 matrix.
    diagnostics : dict
        Pooled fit diagnostics, ``per_slice`` (measurement stats, own fit, drift), pair counts and
        ``backend`` (the one that actually ran).

    Raises
    ------
    InputError
        A path is not a usable mosaic grid, or tile shapes differ between slices.
    FitError
        Too few usable pairs (the message names the slices without any).
    """
    check_unique_ids([int(sid) for sid, _ in volumes], None)
    grids: dict[int, MosaicGrid] = {int(sid): open_mosaic(path) for sid, path in volumes}
    if not grids:
        raise InputError(None, "no volumes given")
    check_consistent("tile shape", ((g.path, g.tile_shape) for g in grids.values()))
    pairs, stats = {}, {}
    for sid, grid in sorted(grids.items()):
        pairs[sid], _, stats[sid] = measure_mosaic(
            grid, overlap_fraction, histogram_match=histogram_match, max_empty_fraction=max_empty_fraction,
            use_gpu=use_gpu, max_shift_px=max_shift_px, z=z, plane=plane, flatfield=flatfield,
            background_test=background_test,
            progress=Progress(f"measure slice {sid}", "tile row") if progress else None,
        )
    transform, diagnostics = fit_pooled(
        pairs, {sid: (g.nx, g.ny) for sid, g in grids.items()}, next(iter(grids.values())).tile_shape, overlap_fraction,
        n_samples=n_samples, seed=seed, drift_tolerance_px=drift_tolerance_px, backlash=backlash,
    )
    for sid in grids:
        diagnostics["per_slice"][str(sid)]["measurement"] = stats[sid]
    diagnostics["backend"] = backends_used(stats.values())
    return transform, diagnostics


def compute_affine_positions(nx, ny, transform, *, subpixel=False):
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
        Top-left of each tile, row-major, shifted so the mosaic starts at (0, 0)
        (floats when ``subpixel``).

    Raises
    ------
    InputError
        ``transform`` is not a finite, invertible 2x2 matrix.
    """
    positions = geometry.affine_positions(nx, ny, check_transform(transform))
    if subpixel:
        return [(float(r), float(c)) for r, c in positions]
    return [(int(r), int(c)) for r, c in np.rint(positions)]


def compute_affine_output_shape(nx, ny, tile_shape, transform):
    """Compute the output mosaic shape from affine tile positions.

    The bounding box over every tile corner, correct for off-diagonal terms of either sign.

    Returns
    -------
    tuple of int
        (nz, output_height, output_width).
    """
    return geometry.output_shape(nx, ny, tile_shape, check_transform(transform))


def apply_blend_shift_refinement(tile, refinements_for_tile):
    """Apply registration refinement by shifting tile data in overlap regions.

    Shifts the tile by the mean of its neighbours' (dy, dx) refinements, with linear
    interpolation; the tile's position in the mosaic does not change.

    Parameters
    ----------
    tile : np.ndarray
        3-D tile (Z, Y, X).
    refinements_for_tile : list of dict
        Each with ``dy`` and ``dx`` (px).

    Returns
    -------
    np.ndarray
        The shifted tile, or the same tile when the shift is below
        :func:`~linumpy_motor.register.geometry.shift_tile`'s ``min_shift_px`` or there is none.
    """
    if not refinements_for_tile:
        return tile
    dy = float(np.mean([r["dy"] for r in refinements_for_tile]))
    dx = float(np.mean([r["dx"] for r in refinements_for_tile]))
    return geometry.shift_tile(tile, dy, dx)


def compare_motor_vs_registration(motor_positions, reg_positions, output_path=None):
    """Compare motor-based positions with registration-based positions.

    Parameters
    ----------
    motor_positions, reg_positions : list of (row, col)
        Positions of the same tiles.
    output_path : str or None
        If given, write the statistics there as JSON (atomically).

    Returns
    -------
    dict
        Mean/std/max differences, scale (dilation) per axis, and diagnostic flags.
    """
    stats = compare_positions(motor_positions, reg_positions)
    if output_path is not None:
        write_json(Path(output_path), stats)
    return stats
