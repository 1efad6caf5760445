"""Tile positions on the canvas: ideal grid, affine motor model, and registration (pair) solve."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy

from linumpy_motor.register.robust import outlier_cutoff, robust_scale

__all__ = ["MAX_DEVIATION_PX", "MAX_REFINEMENT_PX", "affine_positions", "effective_overlap", "effective_overlap_px",
           "extent_shape", "grid_corners", "grid_indices", "integer_step", "model_positions",
           "model_span", "n_neighbour_pairs", "neighbour_pairs", "nominal_step", "output_shape", "pair_columns",
           "pair_tiles", "pair_weights", "registered_positions", "registration_positions", "span",
           "step_lengths"]

MAX_DEVIATION_PX = 10.0
"""Pairs whose displacement differs from the prior's by more than this (px) are left out of the registration solve."""
MAX_REFINEMENT_PX = 10.0
"""Largest registered correction of a tile, per axis (px): upstream's default."""


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


def grid_corners(nx: int, ny: int) -> np.ndarray:
    """Indices ``(4, 2)`` of the grid's corner tiles: (0, 0), (0, ny - 1), (nx - 1, 0), (nx - 1, ny - 1)."""
    return np.array([[i, j] for i in (0, nx - 1) for j in (0, ny - 1)], dtype=float)


def span(positions: npt.ArrayLike, tile_hw: Sequence[float]) -> np.ndarray:
    """Height and width (px, float) of the bounding box over tiles of ``tile_hw`` at top-lefts ``positions``."""
    positions = np.asarray(positions, dtype=float).reshape(-1, 2)
    return (positions - positions.min(axis=0)).max(axis=0) + np.asarray(tile_hw, dtype=float)


def model_span(nx: int, ny: int, tile_hw: Sequence[float], transform: np.ndarray) -> np.ndarray:
    """:func:`span` of the motor model's tiles, from the grid's four corners alone.

    ``A @ [i, j]`` is linear, so its extremes over the grid lie at the corners: a claimed grid of any size
    is checked without a per-tile array.
    """
    return span(grid_corners(nx, ny) @ np.asarray(transform, dtype=float).T, tile_hw)


def extent_shape(positions: np.ndarray, tile_shape: Sequence[int]) -> tuple[int, int, int]:
    """``(nz, height, width)`` of the bounding box over every tile's corners, tiles at ``positions``."""
    nz, h, w = tile_shape
    height, width = span(positions, (h, w))
    return int(nz), int(math.ceil(height - 1e-9)), int(math.ceil(width - 1e-9))


def output_shape(nx: int, ny: int, tile_shape: Sequence[int], transform: np.ndarray) -> tuple[int, int, int]:
    """``(nz, height, width)`` of the bounding box over every tile's corners."""
    return extent_shape(model_positions(nx, ny, transform), tile_shape)


def nominal_step(tile_hw: Sequence[int], overlap_fraction: float, scale_factor: float = 1.0) -> tuple[float, float]:
    """Pitch ``(step_y, step_x)`` in px of a regular grid: ``(1 - overlap) * tile size * scale_factor``."""
    h, w = tile_hw[-2], tile_hw[-1]
    return (1 - overlap_fraction) * h * scale_factor, (1 - overlap_fraction) * w * scale_factor


def integer_step(tile_hw: Sequence[int], overlap_fraction: float, scale_factor: float = 1.0) -> tuple[int, int]:
    """:func:`nominal_step` rounded to whole px (where the expected overlaps of a pair are cut)."""
    step_y, step_x = nominal_step(tile_hw, overlap_fraction, scale_factor)
    return int(round(step_y)), int(round(step_x))


def step_lengths(transform: np.ndarray) -> tuple[float, float]:
    """Lengths (px) of the motor matrix's steps down the rows and along the columns (A's column norms)."""
    A = np.asarray(transform, dtype=float)
    return math.hypot(A[0, 0], A[1, 0]), math.hypot(A[0, 1], A[1, 1])


def effective_overlap_px(transform: np.ndarray, tile_hw: Sequence[int]) -> tuple[float, float]:
    """Overlap ``(rows, cols)`` in px between neighbouring tiles under ``transform``: tile size less step length."""
    step_y, step_x = step_lengths(transform)
    return tile_hw[-2] - step_y, tile_hw[-1] - step_x


def effective_overlap(transform: np.ndarray, tile_hw: Sequence[int]) -> tuple[float, float]:
    """:func:`effective_overlap_px` as fractions ``(Oy, Ox)`` of the tile: ``1 - step length / tile size``."""
    step_y, step_x = step_lengths(transform)
    return 1 - step_y / tile_hw[-2], 1 - step_x / tile_hw[-1]


def pair_columns(i: int, nx: int, ny: int, horizontal: bool) -> range:
    """Columns ``j`` of the neighbour pairs starting on tile row ``i``: ``(i, j)`` with ``(i, j + 1)`` when
    ``horizontal``, else with ``(i + 1, j)``."""
    if not 0 <= i < nx:
        return range(0)
    if horizontal:
        return range(max(ny - 1, 0))
    return range(ny if i + 1 < nx else 0)


def neighbour_pairs(nx: int, ny: int, horizontal: bool | None = None) -> list[tuple[int, int, bool]]:
    """``(i, j, horizontal)`` of the neighbour pairs of an ``nx x ny`` grid (of one direction, or of both:
    horizontal ones first), row-major within a direction."""
    directions = (True, False) if horizontal is None else (horizontal,)
    return [(i, j, h) for h in directions for i in range(nx) for j in pair_columns(i, nx, ny, h)]


def n_neighbour_pairs(nx: int, ny: int, horizontal: bool | None = None) -> int:
    """How many :func:`neighbour_pairs` the grid has: ``nx (ny - 1)`` horizontal and ``(nx - 1) ny`` vertical."""
    directions = (True, False) if horizontal is None else (horizontal,)
    return sum(len(pair_columns(i, nx, ny, h)) for h in directions for i in range(nx))


def pair_weights(pairs: np.ndarray) -> np.ndarray:
    """Each pair's weight: its NCC clipped to [0, 1] (a pair given without one has NCC 1,
    :func:`~linumpy_motor.io.records.pair_table`); 0 leaves a pair out.

    The one rule for whether a pair is usable (weight > 0) and how much it counts, in the fit, the
    registration solve and the QC report.
    """
    return np.clip(pairs["ncc"].astype(float), 0.0, 1.0)


def pair_tiles(pairs: np.ndarray, ny: int) -> tuple[np.ndarray, np.ndarray]:
    """Row-major indices of each pair's tile and of its neighbour ``tile + (row_delta, col_delta)``."""
    i, j = pairs["tile"][:, 0], pairs["tile"][:, 1]
    return i * ny + j, (i + pairs["row_delta"]) * ny + j + pairs["col_delta"]


def _pair_system(pairs: np.ndarray, ny: int, prior: np.ndarray, max_deviation_px: float):
    """Tile indices ``t1``, ``t2``, displacements ``d`` and weights of the pairs usable for the solve."""
    if not len(pairs):
        return np.zeros(0, int), np.zeros(0, int), np.zeros((0, 2)), np.zeros(0)
    d = np.column_stack([pairs["measured_dy"], pairs["measured_dx"]]).astype(float)
    weight = pair_weights(pairs)
    t1, t2 = pair_tiles(pairs, ny)
    keep = (weight > 0) & (np.linalg.norm(d - (prior[t2] - prior[t1]), axis=1) <= max_deviation_px)
    return t1[keep], t2[keep], d[keep], weight[keep]


def _solve_positions(system, prior: np.ndarray, prior_weight: float) -> np.ndarray:
    """Least-squares positions (normal equations, sparse) from pair rows and a weak prior."""
    t1, t2, d, weight = system
    n = len(prior)
    w2 = weight**2
    laplacian = scipy.sparse.coo_matrix(
        (np.concatenate([w2, w2, -w2, -w2, np.full(n, prior_weight)]),
         (np.concatenate([t1, t2, t1, t2, np.arange(n)]), np.concatenate([t1, t2, t2, t1, np.arange(n)]))),
        shape=(n, n)).tocsc()
    rhs = prior_weight * prior.copy()
    np.add.at(rhs, t2, w2[:, None] * d)
    np.add.at(rhs, t1, -w2[:, None] * d)
    return np.asarray(scipy.sparse.linalg.spsolve(laplacian, rhs)).reshape(n, 2)


def registration_positions(
    pairs: np.ndarray,
    nx: int,
    ny: int,
    prior: np.ndarray,
    *,
    max_deviation_px: float = MAX_DEVIATION_PX,
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
    pairs : np.ndarray
        Measured pairs, a pair table (:data:`~linumpy_motor.io.records.PAIR_DTYPE`).
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


def registered_positions(pairs: np.ndarray, nx: int, ny: int, model: np.ndarray, *,
                         max_refinement_px: float = MAX_REFINEMENT_PX) -> np.ndarray:
    """The motor model's positions plus each tile's registered residual (placement ``registered``).

    The residual of a tile is its position in the global solve over the measured pairs
    (:func:`registration_positions`, anchored on the model) minus its model position, less the
    mean residual (a common offset is no correction), clipped to ``max_refinement_px`` per axis.
    Tiles that no usable pair reaches keep their model position.

    Parameters
    ----------
    pairs : np.ndarray
        The slice's measured pairs, a pair table.
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

