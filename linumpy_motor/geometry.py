"""Tile positions on the canvas: ideal grid, affine motor model, and registration (pair) solve."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage, sparse
from scipy.sparse.linalg import lsqr


def grid_indices(nx: int, ny: int) -> np.ndarray:
    """Tile indices ``(nx * ny, 2)`` in row-major order."""
    return np.array([(i, j) for i in range(nx) for j in range(ny)], dtype=float).reshape(-1, 2)


def affine_positions(nx: int, ny: int, transform: np.ndarray) -> np.ndarray:
    """Sub-pixel top-left positions ``A @ [i, j]``, shifted so the mosaic starts at (0, 0)."""
    positions = grid_indices(nx, ny) @ np.asarray(transform, dtype=float).T
    return positions - positions.min(axis=0)


def output_shape(nx: int, ny: int, tile_shape: Sequence[int], transform: np.ndarray) -> tuple[int, int, int]:
    """``(nz, height, width)`` of the bounding box over every tile's corners."""
    nz, h, w = tile_shape
    extent = affine_positions(nx, ny, transform).max(axis=0) + (h, w)
    return int(nz), int(math.ceil(extent[0] - 1e-9)), int(math.ceil(extent[1] - 1e-9))


def ideal_transform(tile_shape: Sequence[int], overlap_fraction: float, scale_factor: float = 1.0,
                    rotation_deg: float = 0.0) -> np.ndarray:
    """Motor matrix of a regular grid, optionally scaled and rotated by ``rotation_deg``."""
    step_y = (1 - overlap_fraction) * tile_shape[-2] * scale_factor
    step_x = (1 - overlap_fraction) * tile_shape[-1] * scale_factor
    angle = math.radians(rotation_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return rotation @ np.diag([step_y, step_x])


def _pair_system(pairs: Sequence[Mapping], ny: int, prior: np.ndarray, max_deviation_px: float):
    """Tile indices, displacements and weights of the pairs usable for the registration solve."""
    rows = []
    for pair in pairs:
        i, j = pair["tile"]
        t1 = i * ny + j
        t2 = (i + pair["row_delta"]) * ny + j + pair["col_delta"]
        d = np.array([pair["measured_dy"], pair["measured_dx"]], dtype=float)
        weight = max(float(pair.get("ncc", 1.0)), 0.0)
        if weight > 0 and np.linalg.norm(d - (prior[t2] - prior[t1])) <= max_deviation_px:
            rows.append((t1, t2, d, weight))
    return rows


def _solve_positions(rows: list, prior: np.ndarray, prior_weight: float) -> np.ndarray:
    """Least-squares positions from pair rows ``(t1, t2, d, weight)`` and a weak prior."""
    n = len(prior)
    eps = math.sqrt(prior_weight)
    index = np.arange(len(rows))
    r = [index, index, np.arange(len(rows), len(rows) + n)]
    c = [[t2 for _, t2, _, _ in rows], [t1 for t1, _, _, _ in rows], np.arange(n)]
    v = [[w for *_, w in rows], [-w for *_, w in rows], np.full(n, eps)]
    matrix = sparse.csr_matrix((np.concatenate(v), (np.concatenate(r), np.concatenate(c))), shape=(len(rows) + n, n))
    rhs = np.concatenate([np.array([w * d for _, _, d, w in rows]).reshape(-1, 2), eps * prior])
    return np.stack([lsqr(matrix, rhs[:, k], atol=1e-12, btol=1e-12)[0] for k in range(2)], axis=1)


def registration_positions(
    pairs: Sequence[Mapping],
    nx: int,
    ny: int,
    prior: np.ndarray,
    *,
    max_deviation_px: float = 10.0,
    prior_weight: float = 1e-3,
) -> tuple[np.ndarray, np.ndarray]:
    """Tile positions from a global least-squares solve over measured pair displacements.

    Minimises ``sum_pairs ncc^2 |p[t2] - p[t1] - d|^2 + prior_weight * sum_tiles |p[t] - prior[t]|^2``
    (as MIST and ASHLAR place tiles); the weak prior anchors the solution and places tiles that
    no usable pair reaches. Pairs that disagree with a first solve by more than a robust cutoff
    (Tukey's 4.685 x MAD scale, at least 1 px) are dropped and the solve is repeated, so a wrong
    pair that passed the prior check does not bend the grid.

    Parameters
    ----------
    pairs : sequence of dict
        Measured pairs (``tile``, ``row_delta``, ``col_delta``, ``measured_dy``, ``measured_dx``, ``ncc``).
    nx, ny : int
        Grid size.
    prior : np.ndarray
        ``(nx * ny, 2)`` positions (e.g. the motor model's), row-major.
    max_deviation_px : float
        Pairs whose displacement differs from the prior's by more than this are left out.
    prior_weight : float
        Weight of the prior relative to a pair of NCC 1.

    Returns
    -------
    positions : np.ndarray
        ``(nx * ny, 2)`` solved positions.
    connected : np.ndarray of bool
        Tiles reached by at least one pair used in the final solve.
    """
    prior = np.asarray(prior, dtype=float).reshape(nx * ny, 2)
    rows = _pair_system(pairs, ny, prior, max_deviation_px)
    positions = _solve_positions(rows, prior, prior_weight)
    if rows:
        residuals = np.array([np.linalg.norm(positions[t2] - positions[t1] - d) for t1, t2, d, _ in rows])
        cutoff = max(1.0, 4.685 * 1.4826 * float(np.median(residuals)))
        rows = [row for row, residual in zip(rows, residuals) if residual <= cutoff]
        positions = _solve_positions(rows, prior, prior_weight)
    connected = np.zeros(nx * ny, dtype=bool)
    for t1, t2, _, _ in rows:
        connected[[t1, t2]] = True
    return positions, connected


def shift_tile(tile: np.ndarray, dy: float, dx: float, min_shift_px: float = 0.05) -> np.ndarray:
    """Shift a (Z, Y, X) tile by (dy, dx) px with linear interpolation; unchanged below ``min_shift_px``."""
    if max(abs(dy), abs(dx)) < min_shift_px:
        return tile
    return ndimage.shift(tile, (0, dy, dx), order=1, mode="nearest")
