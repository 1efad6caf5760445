"""Which Z plane of a mosaic grid to measure on: the one whose overlaps correlate best.

Deep OCT planes are blurred and attenuated, and the top planes may lie above the tissue, so the
central plane is not always a good one (pair precision varies several-fold with depth). The
score of a plane is the NCC its overlaps reach: a few neighbour pairs spread over the grid are
measured on a few planes spread over the depth, and the plane where the better half of them
correlates best wins.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import numpy as np

from linumpy_motor.errors import check_choice
from linumpy_motor.io.grid import central_plane_index
from linumpy_motor.register.correlation import FILTER_SIGMA, measure_shifts, search_bound, search_limit
from linumpy_motor.register.geometry import integer_step, neighbour_pairs

__all__ = ["DEFAULT_PLANE", "PLANE_MODES", "SCORE_PAIRS", "SCORE_PLANES", "PlaneMode", "VolumeReader", "choose_plane",
           "plane_scores"]

PlaneMode = Literal["auto", "central", "mean"]
"""How the measured plane is chosen without an explicit z."""
PLANE_MODES: tuple[PlaneMode, ...] = get_args(PlaneMode)
DEFAULT_PLANE: PlaneMode = "auto"  # the library's default plane mode
SCORE_PAIRS = 8  # neighbour pairs measured per candidate plane
SCORE_PLANES = 12  # candidate planes at most, spread over the depth

VolumeReader = Callable[[slice, slice, slice], np.ndarray]
"""``read(zs, rows, cols)`` returns ``volume[zs, rows, cols]`` as float32."""


def _sample_pairs(nx: int, ny: int, count: int) -> list[tuple[int, int, bool]]:
    """Up to ``count`` neighbour pairs ``(i, j, horizontal)`` spread evenly over the grid."""
    pairs = neighbour_pairs(nx, ny)
    if len(pairs) <= count:
        return pairs
    return [pairs[k] for k in np.linspace(0, len(pairs) - 1, count).round().astype(int)]


def _pair_windows(read: VolumeReader, planes: np.ndarray, pair: tuple[int, int, bool], tile_hw: tuple[int, int],
                  steps: tuple[int, int], flatfield: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The expected-overlap windows ``(n_planes, H, W)`` of one pair on every candidate plane."""
    h, w = tile_hw
    i, j, horizontal = pair
    span = (slice(i * h, (i + 1) * h), slice(j * w, (j + 2) * w)) if horizontal else \
        (slice(i * h, (i + 2) * h), slice(j * w, (j + 1) * w))
    block = read(slice(int(planes.min()), int(planes.max()) + 1), *span)[planes - planes.min()]
    first = block[:, :h, :w]
    second = block[:, :h, w:] if horizontal else block[:, h:, :w]
    if flatfield is not None:
        first, second = first / flatfield, second / flatfield
    if horizontal:
        return first[:, :, steps[1]:], second[:, :, :w - steps[1]]
    return first[:, steps[0]:, :], second[:, :h - steps[0], :]


def plane_scores(read: VolumeReader, nz: int, tile_hw: tuple[int, int], nx: int, ny: int, overlap_fraction: float,
                 *, flatfield: np.ndarray | None = None, filter_sigma: float = FILTER_SIGMA,
                 max_shift_px: float | None = None) -> dict[int, float]:
    """Score of each candidate plane: mean NCC of the better half of the sampled pairs.

    Parameters
    ----------
    read : VolumeReader
        Reads a block of the mosaic grid.
    nz : int
        Planes in the volume.
    tile_hw : (int, int)
        Tile height and width.
    nx, ny : int
        Grid size.
    overlap_fraction : float
        Expected overlap.
    flatfield : np.ndarray or None
        ``(h, w)`` flat field to divide tiles by.
    filter_sigma : float
        As in :func:`~linumpy_motor.register.correlation.measure_shifts`.
    max_shift_px : float or None
        Largest stage error searched (default: :func:`~linumpy_motor.register.correlation.search_limit`).

    Returns
    -------
    dict
        Plane index to score (higher is better).
    """
    steps = integer_step(tile_hw, overlap_fraction)
    planes = np.unique(np.linspace(0, nz - 1, min(nz, SCORE_PLANES)).round().astype(int))
    limit = search_limit(tile_hw, max_shift_px)
    ncc: dict[bool, list[tuple[np.ndarray, np.ndarray]]] = {horizontal: [] for horizontal in (True, False)}
    for pair in _sample_pairs(nx, ny, SCORE_PAIRS):
        ncc[pair[2]].append(_pair_windows(read, planes, pair, tile_hw, steps, flatfield))
    scores = np.zeros((len(planes), 0))
    for windows in ncc.values():
        if not windows:
            continue
        a = np.stack([wa for wa, _ in windows], axis=1)  # (planes, pairs, H, W)
        b = np.stack([wb for _, wb in windows], axis=1)
        bound = search_bound(limit, a.shape[2:])
        values = [r.ncc for r in measure_shifts(a.reshape(-1, *a.shape[2:]), b.reshape(-1, *b.shape[2:]), bound,
                                                filter_sigma=filter_sigma, subpixel=False)]  # one batch
        scores = np.concatenate([scores, np.reshape(values, a.shape[:2])], axis=1)
    better_half = np.sort(scores, axis=1)[:, scores.shape[1] // 2:]
    return {int(p): float(s) for p, s in zip(planes, better_half.mean(axis=1))}


def choose_plane(read: VolumeReader, nz: int, tile_hw: tuple[int, int], nx: int, ny: int, overlap_fraction: float,
                 mode: str = DEFAULT_PLANE, **options) -> tuple[int | None, dict]:
    """The plane to measure for a plane ``mode``, and how it was chosen.

    Parameters
    ----------
    read, nz, tile_hw, nx, ny, overlap_fraction
        As in :func:`plane_scores`.
    mode : {"auto", "central", "mean"}
        ``auto``: the best-scoring plane; ``central``: the central plane; ``mean``: every plane
        averaged (returned plane None).
    options
        Passed to :func:`plane_scores`.

    Returns
    -------
    z : int or None
        The plane, or None for the mean over planes.
    info : dict
        ``plane_mode`` and, for ``auto``, ``plane_scores``.
    """
    check_choice("plane mode", mode, PLANE_MODES)
    if mode == "mean":
        return None, {"plane_mode": mode}
    if mode == "central" or nz == 1 or nx * ny < 2:
        return central_plane_index(nz), {"plane_mode": mode}
    scores = plane_scores(read, nz, tile_hw, nx, ny, overlap_fraction, **options)
    best = max(scores, key=lambda plane: scores[plane])
    return best, {"plane_mode": mode, "plane_scores": {str(p): round(s, 4) for p, s in scores.items()}}
