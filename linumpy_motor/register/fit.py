"""Robust fit of the 2x2 motor matrix to pair displacements, per slice and pooled across slices.

Model: tile (i, j) sits at ``A @ [i, j]`` plus a per-tile error (stage jitter), so the
displacement between tile (i, j) and tile (i + di, j + dj) is ``A @ [di, dj]`` plus the
difference of two tile errors. The fit has two stages:

1. Pairs: weighted least squares on the displacements (weights = pair NCC) made robust by
   iteratively reweighted least squares: an L1 start (a weighted median for unit steps) and
   Tukey's biweight with a MAD-based scale, so wrong pairs (empty overlaps, repeated texture, a
   bumped tile) get weight 0.
2. Positions: the inlier pairs of each slice are solved for tile positions (global least
   squares, as MIST and ASHLAR place tiles) and A is fitted, robustly again, to those positions
   against the tile indices, one free offset per connected group of tiles. Pair displacements
   along a grid row telescope to the row's two end tiles; positions use every tile, which halves
   the error that the jitter leaves in A.

Serpentine backlash: when every other tile row is scanned the other way, the stage's backlash
offsets the odd rows by a constant vector ``b``: tile (i, j) sits at ``A @ [i, j] + (i mod 2) b``.
Both stages carry ``b`` as a third column of the model (so the vertical pairs of even and odd rows
are not split into inliers and outliers, and A does not absorb it); the position stage then keeps
it only when an F-test says the tile positions need it (``BACKLASH_P_VALUE``), and leaves it out
otherwise. A stays the 2x2 primary output.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, get_args

import numpy as np
import scipy

from linumpy_motor.errors import FitError, check_choice
from linumpy_motor.io.records import NO_TILE, PAIR_DTYPE, MotorModel
from linumpy_motor.register.geometry import (
    effective_overlap,
    grid_corners,
    grid_indices,
    nominal_step,
    pair_tiles,
    pair_weights,
    registration_positions,
    step_lengths,
)
from linumpy_motor.register.robust import SCALE_FLOOR_PX, outlier_cutoff, robust_scale

__all__ = ["BACKLASH_MODES", "BACKLASH_P_VALUE", "BACKLASH_SCALE_FLOOR_PX", "DEFAULT_BACKLASH", "DEFAULT_SEED",
           "DRIFT_TOLERANCE_PX", "L1_START_TOLERANCE", "MIN_INFO", "MIN_PAIRS", "BacklashMode",
           "FitOptions", "describe_transform", "drift_px", "error_model", "fit_pairs", "fit_pooled", "model_precision",
           "pair_arrays", "parity_steps", "robust_fit", "subsample"]

L1_START_TOLERANCE = 1e-3  # px: the L1 start of the robust fit stops moving by less than this
MIN_INFO = 0.01  # squared NCC below which a pair counts as this faint (NCC 0.1) in the error model
BacklashMode = Literal["auto", "on", "off"]
"""Whether the model has a backlash term: when the data need it, always, never."""
BACKLASH_MODES: tuple[BacklashMode, ...] = get_args(BacklashMode)
DEFAULT_BACKLASH: BacklashMode = "auto"  # the library's default backlash mode
MIN_PAIRS = 3  # usable pairs needed along each direction, by default
DRIFT_TOLERANCE_PX = 1.0  # default drift (px) beyond which a slice's own model is flagged
DEFAULT_SEED = 0  # seed of the reproducible sub-sample of pooled pairs
BACKLASH_P_VALUE = 1e-3  # the backlash term is kept when the F-test's p-value is below this
BACKLASH_SCALE_FLOOR_PX = 1e-3  # residual scale floor of the F-test (noise-free data)


@dataclass(frozen=True)
class FitOptions:
    """How the motor model is fitted: the one options object of the fitting step.

    Its defaults are the library's (and the command line's, :class:`~linumpy_motor.pipeline.options.RunOptions`).

    Attributes
    ----------
    n_samples : int or None
        Fit a reproducible random sub-sample of this many pooled pairs (:func:`subsample`); None: all.
    seed : int
        Seed of that sub-sample.
    drift_tolerance_px : float
        A slice whose own model places a tile of its grid further than this from the pooled
        model's position is flagged as drifting.
    backlash : {"auto", "on", "off"}
        The serpentine backlash term (module docstring): kept when the data need it, always, or never.
    min_pairs : int
        Usable pairs needed along each direction.
    """

    n_samples: int | None = None
    seed: int = DEFAULT_SEED
    drift_tolerance_px: float = DRIFT_TOLERANCE_PX
    backlash: BacklashMode = DEFAULT_BACKLASH
    min_pairs: int = MIN_PAIRS


def pair_arrays(pairs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Design matrix ``(n, 2)``, displacements ``(n, 2)`` and NCC weights ``(n,)`` of a pair table.

    The weight is :func:`~linumpy_motor.register.geometry.pair_weights`; 0 excludes a pair.
    """
    X = np.column_stack([pairs["row_delta"], pairs["col_delta"]]).astype(float).reshape(-1, 2)
    Y = np.column_stack([pairs["measured_dy"], pairs["measured_dx"]]).astype(float).reshape(-1, 2)
    return X, Y, pair_weights(pairs)


def error_model(residuals: np.ndarray, info: np.ndarray) -> dict:
    """How the error of a pair (or of a solved tile position) grows as its NCC falls.

    The error variance is a floor ``a`` (stage jitter: the same for every row) plus ``c / info``
    (the measurement, worse for faint overlaps such as agarose; ``info`` is the squared NCC of a
    pair, or the summed squared NCC of a tile's pairs). Least squares of the squared residuals
    (per component) on ``[1, 1 / info]`` gives ``a`` and ``c``.

    Returns
    -------
    dict
        ``floor_px`` (sqrt(a)) and ``at_ncc_1_px`` (sqrt(c)).
    """
    info = np.maximum(info, MIN_INFO)
    squared = np.sum(residuals**2, axis=1) / 2
    a, c = np.maximum(np.linalg.lstsq(np.column_stack([np.ones(len(info)), 1.0 / info]), squared,
                                      rcond=None)[0], 0.0)
    return {"floor_px": float(np.sqrt(a)), "at_ncc_1_px": float(np.sqrt(c))}


def model_precision(model: Mapping[str, float] | None, info: np.ndarray) -> np.ndarray:
    """Precision ``sqrt((a + c) / (a + c / info))`` of rows under :func:`error_model`'s ``model``:
    1 for a pair of NCC 1, 0 where ``info`` is 0; all 1 (where ``info`` > 0) without a model."""
    info = np.asarray(info, dtype=float)
    if model is None:
        return (info > 0).astype(float)
    a, c = model["floor_px"] ** 2, model["at_ncc_1_px"] ** 2
    if a + c <= 0:
        return (info > 0).astype(float)
    return np.where(info > 0, np.sqrt((a + c) / (a + c / np.maximum(info, MIN_INFO))), 0.0)


def parity_steps(pairs: np.ndarray) -> np.ndarray:
    """Backlash column of the pair design: ``(i + di) mod 2 - i mod 2`` (0 for pairs without ``tile``)."""
    i = pairs["tile"][:, 0]
    return np.where(i != NO_TILE, (i + pairs["row_delta"]) % 2 - i % 2, 0).astype(float)


def _backlash_identifiable(X: np.ndarray, parity: np.ndarray, w: np.ndarray) -> bool:
    """True when usable vertical pairs start on both even and odd rows (``parity`` of both signs)."""
    usable = (w > 0) & (X[:, 0] != 0)
    return bool(np.any(usable & (parity > 0)) and np.any(usable & (parity < 0)))


def _weighted_lstsq(X: np.ndarray, Y: np.ndarray, w: np.ndarray) -> np.ndarray:
    sw = np.sqrt(w)[:, None]
    return np.linalg.lstsq(X * sw, Y * sw, rcond=None)[0].T


def _check_enough(X: np.ndarray, w: np.ndarray, min_pairs: int, label: str) -> None:
    usable = w > 0
    vertical = int(np.sum(usable & (X[:, 0] != 0)))
    horizontal = int(np.sum(usable & (X[:, 1] != 0)))
    if vertical < min_pairs or horizontal < min_pairs:
        raise FitError(
            f"{label}too few usable pairs to fit the motor model: {horizontal} horizontal and "
            f"{vertical} vertical (need at least {min_pairs} of each)"
        )


def _standardised_residuals(X: np.ndarray, Y: np.ndarray, A: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Residual lengths ``|Y - X @ A.T|`` in units of the expected error: times the precision ``w``."""
    return w * np.linalg.norm(Y - X @ A.T, axis=1)


def robust_fit(
    X: np.ndarray,
    Y: np.ndarray,
    w: np.ndarray,
    *,
    min_pairs: int = MIN_PAIRS,
    scale_floor: float = SCALE_FLOOR_PX,
    label: str = "",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit ``Y ≈ X @ A.T`` robustly.

    ``w`` is a precision: a row's expected error is proportional to ``1 / w`` (see
    :func:`model_precision`: low for overlaps with little signal, such as agarose). An L1 fit of
    the residuals times ``w`` starts Tukey's biweight on those standardised residuals, with
    least-squares weights ``w²``; so imprecise rows neither inflate the robust scale nor pass a
    wrong value as an inlier.

    Parameters
    ----------
    X, Y : np.ndarray
        Tile-index steps ``(n, k)`` (k = 2, or 3 with the backlash column) and measured
        displacements ``(n, 2)``.
    w : np.ndarray
        Precisions ``(n,)``; 0 excludes a row.
    min_pairs : int
        Usable pairs needed along each direction.
    scale_floor : float
        Smallest robust scale (px), so noise-free data are not over-rejected.
    label : str
        Prefix for the error message (e.g. the slice name).

    Returns
    -------
    A : np.ndarray
        The 2 x k matrix.
    inliers : np.ndarray of bool
        Pairs with non-zero final weight.
    scale : float
        Robust residual scale (px, per component) of a row of precision 1.

    Raises
    ------
    FitError
        Too few usable pairs along either direction.
    """
    _check_enough(X, w, min_pairs, label)
    A = _weighted_lstsq(X, Y, w)
    for _ in range(30):  # L1 start: robust to gross outliers, converges to a weighted median
        r = np.linalg.norm(Y - X @ A.T, axis=1)
        A, previous = _weighted_lstsq(X, Y, w / np.maximum(r, 1e-3)), A
        if np.max(np.abs(A - previous)) < L1_START_TOLERANCE:
            break  # close enough to start the biweight, which converges to its own fixed point
    inliers = w > 0
    scale = scale_floor
    for _ in range(50):
        u = _standardised_residuals(X, Y, A, w)
        scale = max(robust_scale(u[w > 0]), scale_floor)
        u = u / outlier_cutoff(scale)
        inliers = (u < 1) & (w > 0)
        _check_enough(X, inliers.astype(float), min_pairs, label)
        A_next = _weighted_lstsq(X, Y, w**2 * np.where(inliers, (1 - u**2) ** 2, 0.0))
        if np.max(np.abs(A_next - A)) < 1e-9:
            A = A_next
            break
        A = A_next
    return A, inliers, scale


def describe_transform(A: np.ndarray, tile_shape: Sequence[int], overlap_fraction: float) -> dict:
    """θ, φ, overlaps and scales of a motor matrix, in the upstream conventions (design.md).

    ``θ = atan2(-b, d)`` (the scan-to-stage rotation, from the horizontal step ``(b, d)``) and
    ``φ = atan2(a, c) + θ`` (the motor-axis angle, 90° when perpendicular, from the vertical step ``(a, c)``).
    """
    (a, b), (c, d) = np.asarray(A, dtype=float)
    step_y, step_x = step_lengths(A)
    nominal_y, nominal_x = nominal_step(tile_shape, overlap_fraction)
    overlap_y, overlap_x = effective_overlap(A, tile_shape)
    theta = math.atan2(-b, d)
    phi = math.atan2(a, c) + theta
    return {
        "theta_deg": math.degrees(theta),
        "phi_deg": math.degrees(phi),
        "perpendicular_deviation_deg": math.degrees(phi) - 90.0,
        "Ox_fraction": overlap_x,
        "Oy_fraction": overlap_y,
        "scale_y": step_y / nominal_y,
        "scale_x": step_x / nominal_x,
        "nominal_overlap_fraction": overlap_fraction,
    }


def _infer_grid(pairs: np.ndarray) -> tuple[int, int] | None:
    """Grid size ``(nx, ny)`` spanned by pairs that carry their ``tile``; None when they don't."""
    if not len(pairs) or (pairs["tile"] == NO_TILE).any():
        return None
    nx = (pairs["tile"][:, 0] + pairs["row_delta"]).max() + 1
    ny = (pairs["tile"][:, 1] + pairs["col_delta"]).max() + 1
    return int(nx), int(ny)


def _solved_positions(pairs: np.ndarray, grid: tuple[int, int],
                      M0: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One slice's tiles reached by pairs: design ``[i, j, i mod 2]``, solved positions, the summed
    squared NCC of their pairs (what the solve knows about each) and their connected group."""
    nx, ny = grid
    index = grid_indices(nx, ny)
    design = np.column_stack([index, index[:, 0] % 2])
    positions, _ = registration_positions(pairs, nx, ny, design[:, :M0.shape[1]] @ M0.T, max_deviation_px=np.inf)
    t1, t2 = pair_tiles(pairs, ny)
    info = np.zeros(nx * ny)
    ncc2 = pair_arrays(pairs)[2] ** 2
    np.add.at(info, t1, ncc2)
    np.add.at(info, t2, ncc2)
    graph = scipy.sparse.coo_matrix((np.ones(len(pairs)), (t1, t2)), shape=(nx * ny, nx * ny))
    _, labels = scipy.sparse.csgraph.connected_components(graph, directed=False)
    reached = np.zeros(nx * ny, dtype=bool)
    reached[t1] = reached[t2] = True
    return design[reached], positions[reached], np.maximum(info[reached], 1e-12), labels[reached]


def _centred(X: np.ndarray, Y: np.ndarray, groups: np.ndarray, weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``X`` and ``Y`` less their ``weight``-weighted mean within each group: the group offsets drop
    out of a fit weighted with ``weight``."""
    X, Y = X.astype(float).copy(), Y.astype(float).copy()
    for group in np.unique(groups):
        members = groups == group
        share = weight[members] / weight[members].sum()
        X[members] -= share @ X[members]
        Y[members] -= share @ Y[members]
    return X, Y


def _backlash_test(X: np.ndarray, Y: np.ndarray, n_groups: int, precision: np.ndarray | None = None) -> dict:
    """F-test of the backlash column: do the positions need ``b``, beyond ``A`` and the group offsets?

    Parameters
    ----------
    X : np.ndarray
        ``(n, 3)`` centred ``[i, j, i mod 2]`` of the inlier tiles.
    Y : np.ndarray
        ``(n, 2)`` their centred positions.
    n_groups : int
        Connected groups (one offset each, removed by the centring).
    precision : np.ndarray or None
        Tiles' precisions (weighted least squares with their squares).

    Returns
    -------
    dict
        ``backlash_px`` (least-squares b), ``f_statistic``, ``p_value``, ``rss_with_px2``,
        ``rss_without_px2`` and ``dof``.
    """
    if precision is not None:
        X, Y = X * precision[:, None], Y * precision[:, None]
    with_term = np.linalg.lstsq(X, Y, rcond=None)[0]
    without = np.linalg.lstsq(X[:, :2], Y, rcond=None)[0]
    rss1 = float(np.sum((Y - X @ with_term) ** 2))
    rss0 = float(np.sum((Y - X[:, :2] @ without) ** 2))
    dof = max(2 * (len(X) - 3 - n_groups), 1)
    variance = max(rss1 / dof, BACKLASH_SCALE_FLOOR_PX**2)
    f = max(rss0 - rss1, 0.0) / 2 / variance
    return {"backlash_px": with_term[2].tolist(), "f_statistic": f, "p_value": float(scipy.special.fdtrc(2, dof, f)),
            "rss_with_px2": rss1, "rss_without_px2": rss0, "dof": dof}


def _grid_pair(grid: Sequence[int]) -> tuple[int, int]:
    """``(nx, ny)`` as a tuple (grids read from JSON are lists)."""
    nx, ny = grid
    return nx, ny


def _refine_on_positions(pairs_by_grid: Sequence[tuple[np.ndarray, tuple[int, int]]],
                        M0: np.ndarray, backlash: str = DEFAULT_BACKLASH) -> tuple[np.ndarray, np.ndarray, dict]:
    """Second stage: fit A (and the backlash b) to the tile positions solved from each slice's inlier pairs.

    Parameters
    ----------
    pairs_by_grid : sequence of (pairs, (nx, ny))
        Each slice's inlier pairs (with ``tile``) and grid size.
    M0 : np.ndarray
        The pair-stage model, 2x2 (A) or 2x3 ([A | b]): anchors each slice's solve.
    backlash : {"auto", "on", "off"}
        Keep b when the F-test finds it (:func:`_backlash_test`), always (when the grid has 3 rows
        or more), or never.

    Returns
    -------
    A : np.ndarray
        The refined 2x2 matrix.
    b : np.ndarray
        The backlash vector (zero when left out).
    diagnostics : dict
        ``n_tiles`` used, ``n_tile_outliers``, ``tile_residual_rms_px`` and ``backlash``
        (``mode``, ``detected`` and the test's figures).
    """
    blocks = [_solved_positions(pairs, grid, M0) for pairs, grid in pairs_by_grid if len(pairs)]
    X = np.concatenate([x for x, _, _, _ in blocks])
    Y = np.concatenate([y for _, y, _, _ in blocks])
    info = np.concatenate([i for _, _, i, _ in blocks])
    groups = np.concatenate([labels + 100_000 * k for k, (_, _, _, labels) in enumerate(blocks)])
    n_groups = len(np.unique(groups))
    Xc, Yc = _centred(X, Y, groups, np.ones(len(X)))
    identifiable = backlash != "off" and bool(np.linalg.matrix_rank(Xc, tol=1e-6) == 3)  # 3 rows or more
    columns = 3 if identifiable else 2
    M, inliers, _ = robust_fit(Xc[:, :columns], Yc, np.ones(len(X)), min_pairs=0)
    variance_model = error_model((Yc - Xc[:, :columns] @ M.T)[inliers], info[inliers])
    precision = model_precision(variance_model, info)
    Xc, Yc = _centred(X, Y, groups, precision**2)
    M, inliers, _ = robust_fit(Xc[:, :columns], Yc, precision, min_pairs=0)
    report: dict = {"mode": backlash, "identifiable": identifiable, "detected": False}
    if identifiable:
        report.update(_backlash_test(Xc[inliers], Yc[inliers], n_groups, precision[inliers]))
        report["detected"] = bool(backlash == "on" or report["p_value"] < BACKLASH_P_VALUE)
        if not report["detected"]:
            M, inliers, _ = robust_fit(Xc[:, :2], Yc, precision, min_pairs=0)
    X, Y = Xc, Yc
    b = M[:, 2] if M.shape[1] == 3 else np.zeros(2)
    residuals = np.linalg.norm(Y - X[:, :M.shape[1]] @ M.T, axis=1)[inliers]
    report["vector_px"] = b.tolist()
    return M[:, :2], b, {"n_tiles": len(X), "n_tile_outliers": int(len(X) - inliers.sum()),
                         "tile_residual_rms_px": float(np.sqrt(np.mean(residuals**2))),
                         "tile_error_model": variance_model, "backlash": report}


def _pair_stage(pairs: np.ndarray, backlash: str, min_pairs: int, label: str):
    """Robust pair fit, with the backlash column when it may be needed and can be estimated.

    A first fit with equal precisions gives the inliers that :func:`error_model` is fitted to; the
    second weights each pair by its :func:`model_precision`.

    Returns the design ``X``, displacements ``Y``, the model ``M`` (2x2 or 2x3), inliers, scale and
    the pair error model.
    """
    X, Y, w = pair_arrays(pairs)
    parity = parity_steps(pairs)
    if backlash != "off" and _backlash_identifiable(X, parity, w):
        X = np.column_stack([X, parity])
    M, inliers, _ = robust_fit(X, Y, (w > 0).astype(float), min_pairs=min_pairs, label=label)
    model = error_model((Y - X @ M.T)[inliers], w[inliers] ** 2)
    precision = model_precision(model, w**2)
    M, inliers, scale = robust_fit(X, Y, precision, min_pairs=min_pairs, label=label)
    return X, Y, M, inliers, scale, model


def _motor_model(M: np.ndarray, diagnostics: Mapping) -> MotorModel:
    """The model of a fit: A, and the backlash it reports when that is not zero (the term was kept)."""
    b = np.asarray(diagnostics["backlash_px"], dtype=float)
    return MotorModel(M[:, :2].copy(), b if b.any() else None)


def fit_pairs(pairs: np.ndarray, tile_shape: Sequence[int], overlap_fraction: float,
              options: FitOptions = FitOptions(), *, label: str = "",
              grid: tuple[int, int] | None = None) -> tuple[MotorModel, dict]:
    """Fit the motor model to one pair table and describe the fit.

    Pairs that carry their ``tile`` (as measured here) get the position stage and the backlash
    term (module docstring); bare pairs (``tile`` :data:`~linumpy_motor.io.records.NO_TILE`)
    the pair stage, without backlash.

    Parameters
    ----------
    pairs : np.ndarray
        A pair table (:data:`~linumpy_motor.io.records.PAIR_DTYPE`).
    tile_shape : sequence of int
        ``(z, h, w)``.
    overlap_fraction : float
        Nominal overlap, for the diagnostics.
    options : FitOptions
        Its ``min_pairs`` and ``backlash`` (the sub-sample and drift options are the pooled fit's).
    label : str
        Prefix of the error message (e.g. the slice).
    grid : (nx, ny) or None
        The slice's grid; None: the one the pairs span.

    Returns
    -------
    model : MotorModel
        The matrix A and the backlash term, when kept.
    diagnostics : dict
        :func:`describe_transform` keys plus pair counts, inlier/outlier counts, residual RMS
        and max over inlier pairs (px), the robust scale, ``position_stage`` (or None) and
        ``backlash`` (``vector_px``, ``detected`` and the model-selection test).

    Raises
    ------
    FitError
        Fewer than ``options.min_pairs`` usable pairs along a direction.
    """
    check_choice("backlash mode", options.backlash, BACKLASH_MODES)
    X, Y, M, inliers, scale, model = _pair_stage(pairs, options.backlash, options.min_pairs, label)
    grid = grid or _infer_grid(pairs)
    stage = None
    if grid is not None:
        A, b, stage = _refine_on_positions([(pairs[inliers], grid)], M, options.backlash)
        M = np.column_stack([A, b])[:, :X.shape[1]]
    diagnostics = _diagnostics(M, X, Y, inliers, scale, tile_shape, overlap_fraction, stage, model)
    return _motor_model(M, diagnostics), diagnostics


def _diagnostics(M, X, Y, inliers, scale, tile_shape, overlap_fraction, stage, model) -> dict:
    residuals = np.linalg.norm(Y - X @ M.T, axis=1)
    b = M[:, 2] if M.shape[1] == 3 else np.zeros(2)
    if stage is not None:
        b = np.asarray(stage["backlash"]["vector_px"])
    return {
        **describe_transform(M[:, :2], tile_shape, overlap_fraction),
        "backlash_px": b.tolist(),
        "n_pairs": len(X),
        "n_inliers": int(inliers.sum()),
        "n_outliers": int(len(X) - inliers.sum()),
        "residual_rms_px": float(np.sqrt(np.mean(residuals[inliers] ** 2))),
        "residual_max_px": float(residuals[inliers].max()),
        "robust_scale_px": scale,
        "pair_error_model": model,
        "position_stage": stage,
    }


def drift_px(A_slice: np.ndarray, A_pooled: np.ndarray, nx: int, ny: int) -> float:
    """Largest tile-position disagreement (px) between two models over an nx x ny grid, centred."""
    corners = grid_corners(nx, ny)
    corners -= corners.mean(axis=0)
    return float(np.linalg.norm(corners @ (np.asarray(A_slice) - np.asarray(A_pooled)).T, axis=1).max())


def subsample(n_pairs: int, n_samples: int | None, seed: int) -> np.ndarray:
    """Indices (sorted) of a reproducible random subset of ``n_samples`` of ``n_pairs`` pairs (all of them
    when there are fewer)."""
    if n_samples is None or n_pairs <= n_samples:
        return np.arange(n_pairs)
    return np.sort(np.random.default_rng(seed).choice(n_pairs, size=n_samples, replace=False))


def fit_pooled(
    pairs_by_slice: Mapping[int, np.ndarray],
    grids: Mapping[int, tuple[int, int]],
    tile_shape: Sequence[int],
    overlap_fraction: float,
    options: FitOptions = FitOptions(),
) -> tuple[MotorModel, dict]:
    """Fit one motor model to the pairs of all slices, and each slice's own beside it.

    Parameters
    ----------
    pairs_by_slice : mapping of slice id to pair table
        Measured pairs of each slice (:data:`~linumpy_motor.io.records.PAIR_DTYPE`).
    grids : mapping of slice id to (nx, ny)
        Grid size of each slice (for the drift measure).
    tile_shape : sequence of int
        ``(z, h, w)`` shared by all slices.
    overlap_fraction : float
        Nominal overlap, for the diagnostics.
    options : FitOptions
        The sub-sample, drift tolerance, backlash mode and fewest usable pairs per direction.

    Returns
    -------
    model : MotorModel
        The pooled matrix A and the backlash term, when kept.
    diagnostics : dict
        The pooled fit's diagnostics (``backlash_px`` and ``position_stage.backlash``: the
        term and its test), ``n_pooled_pairs``, ``n_fitted_pairs``, and
        ``per_slice``: each slice's pair counts, ``pair_inliers`` (per pair, in the slice's order:
        whether the pooled fit kept it; None for a pair left out of the sub-sample), its own fit (or
        the reason there is none), ``drift_px`` and ``drift_flag`` (False without a fit: no drift is
        measured); ``drifting_slices`` and ``failed_fit_slices`` list the flagged and the failed ones.

    Raises
    ------
    FitError
        Too few usable pooled pairs; the message names the slices that contributed none.
    """
    check_choice("backlash mode", options.backlash, BACKLASH_MODES)
    order = sorted(pairs_by_slice)
    pooled = np.concatenate([pairs_by_slice[s] for s in order]) if order else np.zeros(0, PAIR_DTYPE)
    owner = np.repeat(np.arange(len(order)), [len(pairs_by_slice[s]) for s in order])
    chosen = subsample(len(pooled), options.n_samples, options.seed)
    fitted, fitted_owner = pooled[chosen], owner[chosen]
    try:
        X, Y, M, inliers, scale, model = _pair_stage(fitted, options.backlash, options.min_pairs, "pooled: ")
    except FitError as exc:
        empty = [s for s in order if not (pair_weights(pairs_by_slice[s]) > 0).any()]
        raise FitError(f"{exc}; slices with no usable pair: {empty or 'none'}") from None
    kept = [fitted[inliers & (fitted_owner == k)] for k in range(len(order))]
    flags: list[bool | None] = [None] * len(pooled)  # the pooled fit's verdict on each pair, None when not fitted
    for index, keep in zip(chosen, inliers):
        flags[int(index)] = bool(keep)
    starts = np.cumsum([0] + [len(pairs_by_slice[s]) for s in order])
    A, b, stage = _refine_on_positions(list(zip(kept, [_grid_pair(grids[s]) for s in order])), M, options.backlash)
    M = np.column_stack([A, b])[:, :X.shape[1]]
    diagnostics = _diagnostics(M, X, Y, inliers, scale, tile_shape, overlap_fraction, stage, model)
    per_slice = {}
    for k, slice_id in enumerate(order):
        entry: dict = {"n_pairs": len(pairs_by_slice[slice_id]), "pair_inliers": flags[starts[k]:starts[k + 1]]}
        try:
            slice_model, diag_s = fit_pairs(pairs_by_slice[slice_id], tile_shape, overlap_fraction, options,
                                            grid=_grid_pair(grids[slice_id]))
        except FitError as exc:
            entry.update(transform=None, fit=None, fit_error=str(exc), drift_px=None, drift_flag=False)
        else:
            drift = drift_px(slice_model.matrix, A, *grids[slice_id])
            entry.update(transform=slice_model.matrix.tolist(), fit=diag_s, fit_error=None, drift_px=drift,
                         drift_flag=bool(drift > options.drift_tolerance_px))
        per_slice[str(slice_id)] = entry
    diagnostics.update(
        n_pooled_pairs=len(pooled), n_fitted_pairs=len(fitted), n_samples=options.n_samples, seed=options.seed,
        drift_tolerance_px=options.drift_tolerance_px, per_slice=per_slice,
        drifting_slices=[int(s) for s, e in per_slice.items() if e["drift_flag"]],
        failed_fit_slices=[int(s) for s, e in per_slice.items() if e["fit_error"]],
    )
    return _motor_model(M, diagnostics), diagnostics
