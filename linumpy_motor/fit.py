"""Robust fit of the 2x2 motor matrix to pair displacements, per slice and pooled across slices.

Model: the displacement between tile (i, j) and tile (i + di, j + dj) is ``A @ [di, dj]``.
The fit is weighted least squares (weights = pair NCC) made robust by iteratively reweighted
least squares: an L1 start (a weighted median for unit steps) and Tukey's biweight with a
MAD-based scale, so wrong pairs (empty overlaps, repeated texture, a bumped tile) get weight 0.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

TUKEY_C = 4.685
RAYLEIGH_MEDIAN = math.sqrt(2 * math.log(2))  # median of |N(0, I2)|


class FitError(ValueError):
    """Too few usable pairs to fit the motor model."""


def pair_arrays(pairs: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Design matrix ``(n, 2)``, displacements ``(n, 2)`` and prior weights ``(n,)`` of a pair list.

    The prior weight is the pair's NCC clipped to [0, 1] (1 when a pair carries no NCC).
    """
    X = np.array([[p["row_delta"], p["col_delta"]] for p in pairs], dtype=float).reshape(-1, 2)
    Y = np.array([[p["measured_dy"], p["measured_dx"]] for p in pairs], dtype=float).reshape(-1, 2)
    w = np.array([min(max(float(p.get("ncc", 1.0)), 0.0), 1.0) for p in pairs], dtype=float)
    return X, Y, w


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


def robust_fit(
    X: np.ndarray,
    Y: np.ndarray,
    w: np.ndarray,
    *,
    min_pairs: int = 3,
    scale_floor: float = 1e-6,
    label: str = "",
) -> tuple[np.ndarray, np.ndarray, float]:
    """Fit ``Y ≈ X @ A.T`` robustly.

    Parameters
    ----------
    X, Y : np.ndarray
        Tile-index steps and measured displacements, both ``(n, 2)``.
    w : np.ndarray
        Prior weights ``(n,)``; 0 excludes a pair.
    min_pairs : int
        Usable pairs needed along each direction.
    scale_floor : float
        Smallest robust scale (px), so noise-free data are not over-rejected.
    label : str
        Prefix for the error message (e.g. the slice name).

    Returns
    -------
    A : np.ndarray
        The 2x2 matrix.
    inliers : np.ndarray of bool
        Pairs with non-zero final weight.
    scale : float
        Robust residual scale (px, per component).

    Raises
    ------
    FitError
        Too few usable pairs along either direction.
    """
    _check_enough(X, w, min_pairs, label)
    A = _weighted_lstsq(X, Y, w)
    for _ in range(30):  # L1 start: robust to gross outliers, converges to a weighted median
        r = np.linalg.norm(Y - X @ A.T, axis=1)
        A = _weighted_lstsq(X, Y, w / np.maximum(r, 1e-3))
    inliers = w > 0
    scale = scale_floor
    for _ in range(50):
        r = np.linalg.norm(Y - X @ A.T, axis=1)
        scale = max(float(np.median(r[w > 0])) / RAYLEIGH_MEDIAN, scale_floor)
        u = r / (TUKEY_C * scale)
        inliers = (u < 1) & (w > 0)
        _check_enough(X, inliers.astype(float), min_pairs, label)
        A_next = _weighted_lstsq(X, Y, w * np.where(inliers, (1 - u**2) ** 2, 0.0))
        if np.max(np.abs(A_next - A)) < 1e-9:
            A = A_next
            break
        A = A_next
    return A, inliers, scale


def describe_transform(A: np.ndarray, tile_shape: Sequence[int], overlap_fraction: float) -> dict:
    """θ, φ, overlaps and scales of a motor matrix, in the upstream conventions (design.md)."""
    (a, b), (c, d) = np.asarray(A, dtype=float)
    tile_h, tile_w = tile_shape[-2], tile_shape[-1]
    theta = math.atan2(-b, d)
    phi = math.atan2(a, c) + theta
    return {
        "theta_deg": math.degrees(theta),
        "phi_deg": math.degrees(phi),
        "perpendicular_deviation_deg": math.degrees(phi) - 90.0,
        "Ox_fraction": 1 - math.hypot(b, d) / tile_w,
        "Oy_fraction": 1 - math.hypot(a, c) / tile_h,
        "scale_y": math.hypot(a, c) / ((1 - overlap_fraction) * tile_h),
        "scale_x": math.hypot(b, d) / ((1 - overlap_fraction) * tile_w),
        "nominal_overlap_fraction": overlap_fraction,
    }


def fit_pairs(pairs: Sequence[Mapping], tile_shape: Sequence[int], overlap_fraction: float, *,
              min_pairs: int = 3, label: str = "") -> tuple[np.ndarray, dict]:
    """Fit the motor matrix to one list of pairs and describe the fit.

    Returns
    -------
    transform : np.ndarray
        The 2x2 matrix A.
    diagnostics : dict
        :func:`describe_transform` keys plus pair counts, inlier/outlier counts, residual RMS
        and max over inliers (px) and the robust scale.
    """
    X, Y, w = pair_arrays(pairs)
    A, inliers, scale = robust_fit(X, Y, w, min_pairs=min_pairs, label=label)
    residuals = np.linalg.norm(Y - X @ A.T, axis=1)
    return A, {
        **describe_transform(A, tile_shape, overlap_fraction),
        "n_pairs": len(pairs),
        "n_inliers": int(inliers.sum()),
        "n_outliers": int(len(pairs) - inliers.sum()),
        "residual_rms_px": float(np.sqrt(np.mean(residuals[inliers] ** 2))),
        "residual_max_px": float(residuals[inliers].max()),
        "robust_scale_px": scale,
    }


def drift_px(A_slice: np.ndarray, A_pooled: np.ndarray, nx: int, ny: int) -> float:
    """Largest tile-position disagreement (px) between two models over an nx x ny grid, centred."""
    corners = np.array([[i, j] for i in (0, nx - 1) for j in (0, ny - 1)], dtype=float)
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
    seed: int = 0,
    drift_tolerance_px: float = 1.0,
    min_pairs: int = 3,
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

    Returns
    -------
    transform : np.ndarray
        The pooled 2x2 matrix.
    diagnostics : dict
        The pooled fit's diagnostics, ``n_pooled_pairs``, ``n_fitted_pairs``, and
        ``per_slice``: each slice's pair counts, its own fit (or the reason there is none),
        ``drift_px`` and ``drift_flag``.

    Raises
    ------
    FitError
        Too few usable pooled pairs; the message names the slices that contributed none.
    """
    pooled = [p for slice_id in sorted(pairs_by_slice) for p in pairs_by_slice[slice_id]]
    fitted = subsample(pooled, n_samples, seed)
    try:
        A, diagnostics = fit_pairs(fitted, tile_shape, overlap_fraction, min_pairs=min_pairs, label="pooled: ")
    except FitError as exc:
        empty = [s for s in sorted(pairs_by_slice) if not pairs_by_slice[s]]
        raise FitError(f"{exc}; slices with no usable pair: {empty or 'none'}") from None
    per_slice = {}
    for slice_id in sorted(pairs_by_slice):
        entry: dict = {"n_pairs": len(pairs_by_slice[slice_id])}
        try:
            A_s, diag_s = fit_pairs(pairs_by_slice[slice_id], tile_shape, overlap_fraction, min_pairs=min_pairs)
        except FitError as exc:
            entry.update(transform=None, fit=None, fit_error=str(exc), drift_px=None, drift_flag=True)
        else:
            drift = drift_px(A_s, A, *grids[slice_id])
            entry.update(transform=A_s.tolist(), fit=diag_s, fit_error=None, drift_px=drift,
                         drift_flag=bool(drift > drift_tolerance_px))
        per_slice[str(slice_id)] = entry
    diagnostics.update(
        n_pooled_pairs=len(pooled), n_fitted_pairs=len(fitted), n_samples=n_samples, seed=seed,
        drift_tolerance_px=drift_tolerance_px, per_slice=per_slice,
        drifting_slices=[int(s) for s, e in per_slice.items() if e["drift_flag"]],
    )
    return A, diagnostics
