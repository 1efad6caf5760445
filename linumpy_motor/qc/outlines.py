"""Tile outlines over a slice's canvas, for the report's figures: pure geometry, no plotting library."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from linumpy_motor.register.geometry import affine_positions

__all__ = ["SEAM_MARK_FRACTION", "corner_marks", "tile_outlines"]

SEAM_MARK_FRACTION = 0.12
"""Tile corners are marked with ticks this fraction of a tile side long, leaving the seams themselves visible."""


def tile_outlines(nx: int, ny: int, tile_hw: Sequence[int], transform: np.ndarray,
                  positions: npt.ArrayLike | None = None) -> np.ndarray:
    """Closed outlines ``(nx * ny, 5, 2)`` of every tile as (x, y) = (col, row) canvas pixels.

    Tiles sit at ``A @ [i, j]``, or at ``positions`` (``(nx * ny, 2)``, as the stitcher placed them).
    """
    h, w = tile_hw
    corners = np.array([[0, 0], [0, w], [h, w], [h, 0], [0, 0]], dtype=float)
    placed = affine_positions(nx, ny, transform) if positions is None else np.asarray(positions, dtype=float)
    rows_cols = (placed - placed.min(axis=0))[:, None, :] + corners[None]
    return rows_cols[..., ::-1]


def corner_marks(outlines: np.ndarray, fraction: float = SEAM_MARK_FRACTION) -> np.ndarray:
    """Short ticks ``(n * 8, 2, 2)`` along the two edges at each corner of each closed tile outline."""
    corners = outlines[:, :4]
    following, preceding = np.roll(corners, -1, axis=1), np.roll(corners, 1, axis=1)
    ticks = [np.stack([corners, corners + fraction * (other - corners)], axis=2) for other in (following, preceding)]
    return np.concatenate(ticks, axis=1).reshape(-1, 2, 2)
