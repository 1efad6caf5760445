"""Tile positions on the canvas: ideal grid, affine motor model, and registration (pair) solve."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt
from scipy import ndimage, sparse
from scipy.sparse.linalg import spsolve

from linumpy_motor.register.robust import outlier_cutoff, robust_scale

__all__ = ["affine_positions", "extent_shape", "grid_indices", "ideal_transform", "model_positions", "output_shape",
    "registered_positions", "registration_positions", "shift_tile"]


def grid_indices(nx: int, ny: int) -> np.ndarray:
    """Tile indices ``(nx * ny, 2)`` in row-major order."""
    return np.array([(i, j) for i in range(nx) for j in range(ny)], dtype=float).reshape(-1, 2)


def model_positions(nx: int, ny: int, transform: np.ndarray, backlash: npt.ArrayLike | None = None) -> np.ndarray:
    """Top-left positions ``A @ [i, j] + (i mod 2) b`` of the motor model (b: serpentine backlash), unshifted."""
    index = grid_indices(nx, ny)
    positions = index @ np.asarray(transform, dtype=float).T
    if backlash is not None:
        positions += (index[:, :1] % 2) * np.asarray(backlash, dtype=float)
    return positions


def affine_positions(nx: int, ny: int, transform: np.ndarray, backlash: npt.ArrayLike | None = None) -> np.ndarray:
    """Sub-pixel top-left positions of the motor model, shifted so the mosaic starts at (0, 0)."""
    positions = model_positions(nx, ny, transform, backlash)
    return positions - positions.min(axis=0)


def extent_shape(positions: np.ndarray, tile_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(nz, height, width)`` of the bounding box over every tile's corners, tiles at ``positions``."""
    nz, h, w = tile_shape
    positions = np.asarray(positions, dtype=float)
    extent = (positions - positions.min(axis=0)).max(axis=0) + (h, w)
    return int(nz), int(math.ceil(extent[0] - 1e-9)), int(math.ceil(extent[1] - 1e-9))


def output_shape(nx: int, ny: int, tile_shape: Sequence[int], transform: np.ndarray) -> tuple[int, int, int]:
    """``(nz, height, width)`` of the bounding box over every tile's corners."""
    return extent_shape(model_positions(nx, ny, transform), tile_shape)


def ideal_transform(tile_shape: Sequence[int], overlap_fraction: float, scale_factor: float = 1.0,
                    rotation_deg: float = 0.0) -> np.ndarray:
    """Motor matrix of a regular grid, optionally scaled and rotated by ``rotation_deg``."""
    step_y = (1 - overlap_fraction) * tile_shape[-2] * scale_factor
    step_x = (1 - overlap_fraction) * tile_shape[-1] * scale_factor
    angle = math.radians(rotation_deg)
    rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    return rotation @ np.diag([step_y, step_x])


def _pair_system(pairs: Sequence[Mapping], ny: int, prior: np.ndarray, max_deviation_px: float):
    """Tile indices ``t1``, ``t2``, displacements ``d`` and weights of the pairs usable for the solve."""
    if not pairs:
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 2)), np.zeros(0)
    tile = np.array([p["tile"] for p in pairs], dtype=int).reshape(-1, 2)
    step = np.array([[p["row_delta"], p["col_delta"]] for p in pairs], dtype=int)
    d = np.array([[p["measured_dy"], p["measured_dx"]] for p in pairs], dtype=float)
    weight = np.array([max(float(p.get("ncc", 1.0)), 0.0) for p in pairs])
    t1 = tile[:, 0] * ny + tile[:, 1]
    t2 = (tile[:, 0] + step[:, 0]) * ny + tile[:, 1] + step[:, 1]
    keep = (weight > 0) & (np.linalg.norm(d - (prior[t2] - prior[t1]), axis=1) <= max_deviation_px)
    return t1[keep], t2[keep], d[keep], weight[keep]


def _solve_positions(system, prior: np.ndarray, prior_weight: float) -> np.ndarray:
    """Least-squares positions (normal equations, sparse) from pair rows and a weak prior."""
    t1, t2, d, weight = system
    n = len(prior)
    w2 = weight**2
    laplacian = sparse.coo_matrix(
        (np.concatenate([w2, w2, -w2, -w2, np.full(n, prior_weight)]),
         (np.concatenate([t1, t2, t1, t2, np.arange(n)]), np.concatenate([t1, t2, t2, t1, np.arange(n)]))),
        shape=(n, n)).tocsc()
    rhs = prior_weight * prior.copy()
    np.add.at(rhs, t2, w2[:, None] * d)
    np.add.at(rhs, t1, -w2[:, None] * d)
    return np.asarray(spsolve(laplacian, rhs)).reshape(n, 2)


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
    (normal equations: a sparse weighted graph Laplacian plus ``prior_weight`` on the diagonal)
    (as MIST and ASHLAR place tiles); the weak prior anchors the solution and places tiles that
    no usable pair reaches. Pairs that disagree with a first solve by more than a robust cutoff
    (:func:`~linumpy_motor.register.robust.outlier_cutoff`, the fit's rule, at least 1 px) are dropped and the
    solve is repeated, so a wrong pair that passed the prior check does not bend the grid.

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
    system = _pair_system(pairs, ny, prior, max_deviation_px)
    positions = _solve_positions(system, prior, prior_weight)
    t1, t2, d, _ = system
    if len(t1):
        residuals = np.linalg.norm(positions[t2] - positions[t1] - d, axis=1)
        keep = residuals <= max(1.0, outlier_cutoff(robust_scale(residuals)))
        system = tuple(part[keep] for part in system)
        positions = _solve_positions(system, prior, prior_weight)
    connected = np.zeros(nx * ny, dtype=bool)
    connected[system[0]] = connected[system[1]] = True
    return positions, connected


def registered_positions(pairs: Sequence[Mapping], nx: int, ny: int, model: np.ndarray, *,
                         max_refinement_px: float = 10.0) -> np.ndarray:
    """The motor model's positions plus each tile's registered residual (placement ``registered``).

    The residual of a tile is its position in the global solve over the measured pairs
    (:func:`registration_positions`, anchored on the model) minus its model position, less the
    mean residual (a common offset is no correction), clipped to ``max_refinement_px`` per axis.
    Tiles that no usable pair reaches keep their model position.

    Parameters
    ----------
    pairs : sequence of dict
        The slice's measured pairs.
    nx, ny : int
        Grid size.
    model : np.ndarray
        ``(nx * ny, 2)`` model positions.
    max_refinement_px : float
        Largest correction per axis.

    Returns
    -------
    np.ndarray
        ``(nx * ny, 2)`` positions.
    """
    model = np.asarray(model, dtype=float).reshape(nx * ny, 2)
    solved, connected = registration_positions(pairs, nx, ny, model)
    residual = np.where(connected[:, None], solved - model, 0.0)
    if connected.any():
        residual[connected] -= residual[connected].mean(axis=0)
    return model + np.clip(residual, -max_refinement_px, max_refinement_px)


def shift_tile(tile: np.ndarray, dy: float, dx: float, min_shift_px: float = 0.05) -> np.ndarray:
    """Shift a (Z, Y, X) tile by (dy, dx) px with linear interpolation; unchanged below ``min_shift_px``."""
    if max(abs(dy), abs(dx)) < min_shift_px:
        return tile
    return ndimage.shift(tile, (0, dy, dx), order=1, mode="nearest")
