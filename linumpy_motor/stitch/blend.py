"""Per-tile blending weight maps.

A weight map depends only on the tile shape and the blending mode (and, for ``diffusion``, on the
overlap width), so it is computed once per slice. The stitcher accumulates ``sum(w * tile)`` and
``sum(w)`` over the tiles covering each output pixel and divides; ``none`` overwrites instead.

Modes
-----
none
    The last tile (row-major order) wins; weights are 1.
average
    Plain mean of the covering tiles; weights are 1.
feather
    Weight = distance to the nearest tile edge (pixel centres, in px), so each tile fades out
    linearly towards its border and the blend is linear across an overlap.
diffusion
    Weight = harmonic function (Laplace solve) over the tile's overlap band: 1 on the inner border
    of the band (the part of the tile no neighbour overlaps), 0 just outside the tile, Laplace's
    equation in between. Along straight edges this is a linear ramp confined to the overlap; at the
    corners it is the smooth harmonic interpolation instead of a distance ridge. Upstream solves
    Laplace's equation over each overlap mask of the assembled mosaic; here the solve is per tile
    (all tiles share it) on a grid of at most ``DIFFUSION_GRID_PX`` px per side, upsampled by
    linear interpolation, which keeps it cheap (a few thousand unknowns, solved once).
"""

from __future__ import annotations

import math
from typing import Literal, get_args

import numpy as np
import scipy

from linumpy_motor.errors import InputError, check_choice
from linumpy_motor.register.geometry import effective_overlap_px

__all__ = ["BLENDING_HELP", "BLENDING_MODES", "DEFAULT_BLENDING", "DIFFUSION_GRID_PX", "MIN_WEIGHT", "BlendingMode",
           "overlap_px", "weight_map"]

BlendingMode = Literal["none", "average", "feather", "diffusion"]
"""How overlapping tiles are combined (see :data:`BLENDING_HELP`)."""
BLENDING_MODES: tuple[BlendingMode, ...] = get_args(BlendingMode)
DEFAULT_BLENDING: BlendingMode = "feather"  # the library's default blending mode
BLENDING_HELP = ("how overlaps are combined: 'none' (the last tile wins), 'average' (plain mean), 'feather' "
                 "(weights fall linearly to each tile's edge), 'diffusion' (harmonic weights over the overlap, "
                 "as upstream)")
DIFFUSION_GRID_PX = 64
MIN_WEIGHT = 1e-3


def overlap_px(transform: np.ndarray, tile_hw: tuple[int, int]) -> tuple[float, float]:
    """Overlap (rows, cols) in px between neighbouring tiles under the motor matrix ``transform``
    (:func:`~linumpy_motor.register.geometry.effective_overlap_px`), kept within [1, half the tile]."""
    h, w = tile_hw
    rows, cols = effective_overlap_px(transform, tile_hw)
    return float(np.clip(rows, 1.0, h / 2)), float(np.clip(cols, 1.0, w / 2))


def _feather(h: int, w: int) -> np.ndarray:
    dy = np.minimum(np.arange(h) + 0.5, h - 0.5 - np.arange(h))
    dx = np.minimum(np.arange(w) + 0.5, w - 0.5 - np.arange(w))
    return np.minimum(dy[:, None], dx[None, :])


def _harmonic_band(h: int, w: int, band_y: int, band_x: int) -> np.ndarray:
    """Solve Laplace's equation on the band of a ``h x w`` grid (0 outside the grid, 1 inside the band)."""
    inner = np.zeros((h, w), dtype=bool)
    inner[band_y:h - band_y, band_x:w - band_x] = True
    unknown = ~inner
    index = -np.ones((h, w), dtype=np.int64)
    index[unknown] = np.arange(int(unknown.sum()))
    n = int(unknown.sum())
    ys, xs = np.nonzero(unknown)
    rows, cols, vals = [np.arange(n)], [np.arange(n)], [np.full(n, 4.0)]
    rhs = np.zeros(n)
    for dy, dx in ((1, 0), (-1, 0), (0, 1), (0, -1)):
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        neighbour = np.full(n, -1, dtype=np.int64)
        neighbour[inside] = index[ny[inside], nx[inside]]
        free = neighbour >= 0
        rows.append(np.nonzero(free)[0])
        cols.append(neighbour[free])
        vals.append(-np.ones(int(free.sum())))
        rhs[inside & ~free] += 1.0  # a neighbour in the inner region holds 1; outside the grid 0
    matrix = scipy.sparse.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    field = np.ones((h, w))
    field[unknown] = scipy.sparse.linalg.spsolve(matrix, rhs)
    return field


def _diffusion(h: int, w: int, overlap: tuple[float, float]) -> np.ndarray:
    factor = max(1.0, max(h, w) / DIFFUSION_GRID_PX)
    gh, gw = max(3, round(h / factor)), max(3, round(w / factor))
    band_y = min(max(1, math.ceil(overlap[0] * gh / h)), (gh - 1) // 2)
    band_x = min(max(1, math.ceil(overlap[1] * gw / w)), (gw - 1) // 2)
    coarse = _harmonic_band(gh, gw, band_y, band_x)
    yy = (np.arange(h) + 0.5) * gh / h - 0.5
    xx = (np.arange(w) + 0.5) * gw / w - 0.5
    coords = np.stack(np.meshgrid(yy, xx, indexing="ij"))
    return scipy.ndimage.map_coordinates(coarse, coords, order=1, mode="nearest")


def weight_map(tile_hw: tuple[int, int], mode: str, overlap: tuple[float, float] | None = None) -> np.ndarray:
    """Blending weights of one tile.

    Parameters
    ----------
    tile_hw : (int, int)
        Tile height and width.
    mode : {"none", "average", "feather", "diffusion"}
        Blending mode (see the module docstring).
    overlap : (float, float), optional
        Overlap in px (rows, cols) between neighbours; required for ``diffusion``.

    Returns
    -------
    np.ndarray
        ``(h, w)`` float32 weights, positive everywhere (at least ``MIN_WEIGHT`` times the maximum),
        maximum 1.
    """
    check_choice("blending mode", mode, BLENDING_MODES)
    h, w = tile_hw
    if mode in ("none", "average"):
        return np.ones((h, w), dtype=np.float32)
    if mode == "diffusion":
        if overlap is None:
            raise InputError(None, "diffusion blending needs the overlap in px")
        weights = _diffusion(h, w, overlap)
    else:
        weights = _feather(h, w)
    weights = weights / weights.max()
    return np.maximum(weights, MIN_WEIGHT).astype(np.float32)
