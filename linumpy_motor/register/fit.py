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
from typing import Literal, get_args

import numpy as np
from scipy import sparse, stats
from scipy.sparse.csgraph import connected_components

from linumpy_motor.errors import FitError, check_choice
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
           "DRIFT_TOLERANCE_PX", "L1_START_TOLERANCE", "MIN_INFO", "MIN_PAIRS", "BacklashMode", "describe_transform",
           "drift_px", "error_model", "fit_pairs", "fit_pooled", "model_precision", "pair_arrays", "parity_steps",
           "robust_fit", "subsample"]

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


def pair_arrays(pairs: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Design matrix ``(n, 2)``, displacements ``(n, 2)`` and NCC weights ``(n,)`` of a pair list.

    The weight is :func:`~linumpy_motor.register.geometry.pair_weights`; 0 excludes a pair.
    """
    X = np.array([[p["row_delta"], p["col_delta"]] for p in pairs], dtype=float).reshape(-1, 2)
    Y = np.array([[p["measured_dy"], p["measured_dx"]] for p in pairs], dtype=float).reshape(-1, 2)
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


def parity_steps(pairs: Sequence[Mapping]) -> np.ndarray:
    """Backlash column of the pair design: ``(i + di) mod 2 - i mod 2`` (0 for pairs without ``tile``)."""
    return np.array([((p["tile"][0] + p["row_delta"]) % 2 - p["tile"][0] % 2) if "tile" in p else 0
                     for p in pairs], dtype=float)


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
    """θ, φ, overlaps and scales of a motor matrix, in the upstream conventions (design.md)."""
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


def _infer_grid(pairs: Sequence[Mapping]) -> tuple[int, int] | None:
    """Grid size ``(nx, ny)`` spanned by pairs that carry their ``tile``; None when they don't."""
    if not pairs or any("tile" not in p for p in pairs):
        return None
    nx = max(p["tile"][0] + p["row_delta"] for p in pairs) + 1
    ny = max(p["tile"][1] + p["col_delta"] for p in pairs) + 1
    return int(nx), int(ny)


def _solved_positions(pairs: Sequence[Mapping], grid: tuple[int, int],
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
    graph = sparse.coo_matrix((np.ones(len(pairs)), (t1, t2)), shape=(nx * ny, nx * ny))
    _, labels = connected_components(graph, directed=False)
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
    return {"backlash_px": with_term[2].tolist(), "f_statistic": f, "p_value": float(stats.f.sf(f, 2, dof)),
            "rss_with_px2": rss1, "rss_without_px2": rss0, "dof": dof}


def _grid_pair(grid: Sequence[int]) -> tuple[int, int]:
    """``(nx, ny)`` as a tuple (grids read from JSON are lists)."""
    nx, ny = grid
    return nx, ny


def _refine_on_positions(pairs_by_grid: Sequence[tuple[Sequence[Mapping], tuple[int, int]]],
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
    blocks = [_solved_positions(pairs, grid, M0) for pairs, grid in pairs_by_grid if pairs]
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


def _pair_stage(pairs: Sequence[Mapping], backlash: str, min_pairs: int, label: str):
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


def fit_pairs(pairs: Sequence[Mapping], tile_shape: Sequence[int], overlap_fraction: float, *,
              min_pairs: int = MIN_PAIRS, label: str = "", grid: tuple[int, int] | None = None,
              backlash: str = DEFAULT_BACKLASH) -> tuple[np.ndarray, dict]:
    """Fit the motor matrix to one list of pairs and describe the fit.

    Pairs that carry their ``tile`` (as measured here) get the position stage and the backlash
    term (module docstring); bare pairs (``row_delta``, ``col_delta``, ``measured_dy``,
    ``measured_dx`` only) the pair stage, without backlash.

    Returns
    -------
    transform : np.ndarray
        The 2x2 matrix A.
    diagnostics : dict
        :func:`describe_transform` keys plus pair counts, inlier/outlier counts, residual RMS
        and max over inlier pairs (px), the robust scale, ``position_stage`` (or None) and
        ``backlash`` (``vector_px``, ``detected`` and the model-selection test).
    """
    check_choice("backlash mode", backlash, BACKLASH_MODES)
    X, Y, M, inliers, scale, model = _pair_stage(pairs, backlash, min_pairs, label)
    grid = grid or _infer_grid(pairs)
    stage = None
    if grid is not None:
        A, b, stage = _refine_on_positions([([p for p, keep in zip(pairs, inliers) if keep], grid)], M, backlash)
        M = np.column_stack([A, b])[:, :X.shape[1]]
    return M[:, :2], _diagnostics(M, X, Y, inliers, scale, tile_shape, overlap_fraction, stage, model)


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


def subsample(pairs: list, n_samples: int | None, seed: int) -> list:
    """A reproducible random subset of ``n_samples`` pairs (all of them when there are fewer)."""
    if n_samples is None or len(pairs) <= n_samples:
        return list(pairs)
    keep = np.sort(np.random.default_rng(seed).choice(len(pairs), size=n_samples, replace=False))
    return [pairs[k] for k in keep]


def fit_pooled(
    pairs_by_slice: Mapping[int, Sequence[Mapping]],
    grids: Mapping[int, tuple[int, int]],
    tile_shape: Sequence[int],
    overlap_fraction: float,
    *,
    n_samples: int | None = None,
    seed: int = DEFAULT_SEED,
    drift_tolerance_px: float = DRIFT_TOLERANCE_PX,
    min_pairs: int = MIN_PAIRS,
    backlash: str = DEFAULT_BACKLASH,
) -> tuple[np.ndarray, dict]:
    """Fit one motor matrix to the pairs of all slices, and each slice's own beside it.

    Parameters
    ----------
    pairs_by_slice : mapping of slice id to list of pair dicts
        Measured pairs of each slice.
    grids : mapping of slice id to (nx, ny)
        Grid size of each slice (for the drift measure).
    tile_shape : sequence of int
        ``(z, h, w)`` shared by all slices.
    overlap_fraction : float
        Nominal overlap, for the diagnostics.
    n_samples : int or None
        Fit a reproducible sub-sample of this many pooled pairs.
    seed : int
        Seed of the sub-sample.
    drift_tolerance_px : float
        A slice whose own model places a tile of its grid further than this from the pooled
        model's position is flagged as drifting.
    min_pairs : int
        Usable pairs needed along each direction.
    backlash : {"auto", "on", "off"}
        The serpentine backlash term (module docstring): kept when the data need it, always, or never.

    Returns
    -------
    transform : np.ndarray
        The pooled 2x2 matrix.
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
    order = sorted(pairs_by_slice)
    pooled = [(slice_id, k, p) for slice_id in order for k, p in enumerate(pairs_by_slice[slice_id])]
    check_choice("backlash mode", backlash, BACKLASH_MODES)
    fitted = subsample(pooled, n_samples, seed)
    try:
        X, Y, M, inliers, scale, model = _pair_stage([p for _, _, p in fitted], backlash, min_pairs, "pooled: ")
    except FitError as exc:
        empty = [s for s in order if not (pair_weights(pairs_by_slice[s]) > 0).any()]
        raise FitError(f"{exc}; slices with no usable pair: {empty or 'none'}") from None
    kept = [[p for (s, _, p), keep in zip(fitted, inliers) if keep and s == slice_id] for slice_id in order]
    flags: dict[int, list[bool | None]] = {s: [None] * len(pairs_by_slice[s]) for s in order}
    for (s, k, _), keep in zip(fitted, inliers):
        flags[s][k] = bool(keep)
    A, b, stage = _refine_on_positions(list(zip(kept, [_grid_pair(grids[s]) for s in order])), M, backlash)
    M = np.column_stack([A, b])[:, :X.shape[1]]
    diagnostics = _diagnostics(M, X, Y, inliers, scale, tile_shape, overlap_fraction, stage, model)
    per_slice = {}
    for slice_id in sorted(pairs_by_slice):
        entry: dict = {"n_pairs": len(pairs_by_slice[slice_id]), "pair_inliers": flags[slice_id]}
        try:
            A_s, diag_s = fit_pairs(pairs_by_slice[slice_id], tile_shape, overlap_fraction, min_pairs=min_pairs,
                                    grid=_grid_pair(grids[slice_id]), backlash=backlash)
        except FitError as exc:
            entry.update(transform=None, fit=None, fit_error=str(exc), drift_px=None, drift_flag=False)
        else:
            drift = drift_px(A_s, A, *grids[slice_id])
            entry.update(transform=A_s.tolist(), fit=diag_s, fit_error=None, drift_px=drift,
                         drift_flag=bool(drift > drift_tolerance_px))
        per_slice[str(slice_id)] = entry
    diagnostics.update(
        n_pooled_pairs=len(pooled), n_fitted_pairs=len(fitted), n_samples=n_samples, seed=seed,
        drift_tolerance_px=drift_tolerance_px, per_slice=per_slice,
        drifting_slices=[int(s) for s, e in per_slice.items() if e["drift_flag"]],
        failed_fit_slices=[int(s) for s, e in per_slice.items() if e["fit_error"]],
    )
    return M[:, :2], diagnostics
