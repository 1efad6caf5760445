"""Measuring neighbour-tile displacements inside one slice, one row of tiles at a time."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from skimage.exposure import match_histograms
from skimage.filters import threshold_otsu

from .backend import get_backend
from .correlation import measure_shifts

BandReader = Callable[[int], np.ndarray]
"""Returns tile row ``i`` of a plane as a float32 array of shape ``(tile_h, ny * tile_w)``."""


def default_max_shift(tile_hw: tuple[int, int]) -> float:
    """Largest stage error searched by default: 10 % of the tile size (at least 5 px)."""
    return max(0.1 * max(tile_hw), 5.0)


def _pair_windows(top, bottom, j: int, tile_hw, steps, horizontal: bool):
    """The two expected-overlap windows of a pair (zero expected shift between them)."""
    h, w = tile_hw
    step_y, step_x = steps
    if horizontal:
        return top[:, j * w + step_x:(j + 1) * w], top[:, (j + 1) * w:(j + 2) * w - step_x]
    return top[step_y:h, j * w:(j + 1) * w], bottom[0:h - step_y, j * w:(j + 1) * w]


def measure_grid_pairs(
    band: BandReader,
    tile_hw: tuple[int, int],
    nx: int,
    ny: int,
    overlap_fraction: float,
    *,
    max_shift_px: float | None = None,
    histogram_match: bool = False,
    max_empty_fraction: float | None = None,
    use_gpu: bool = False,
    filter_sigma: float = 1.0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[list[dict], list[dict], dict]:
    """Measure every horizontal and vertical neighbour pair of a mosaic grid plane.

    Parameters
    ----------
    band : callable
        ``band(i)`` returns tile row ``i`` of the plane, shape ``(tile_h, ny * tile_w)``.
        Only two rows are held in memory at a time.
    tile_hw : (int, int)
        Tile height and width.
    nx, ny : int
        Number of tile rows and columns.
    overlap_fraction : float
        Expected overlap between neighbours, in (0, 0.5].
    max_shift_px : float or None
        Largest departure from the expected position searched (default: 10 % of the tile).
    histogram_match : bool
        Match the second window's histogram to the first before correlating.
    max_empty_fraction : float or None
        Skip pairs whose overlap is more than this fraction background (Otsu threshold over the
        overlaps of the plane). ``None``: skip pairs whose overlap is less than 10 % non-zero.
    use_gpu : bool
        Run the FFT work with CuPy when a CUDA device is available.
    filter_sigma : float
        Gaussian low-pass of the whitened spectrum, in px.
    progress : callable, optional
        Called as ``progress(rows done, nx)`` after each tile row (e.g. a :class:`~linumpy_motor.logs.Progress`).

    Returns
    -------
    measured : list of dict
        Pairs kept: ``tile`` (i, j), ``row_delta``, ``col_delta``, ``measured_dy``, ``measured_dx``
        (absolute displacement of the neighbour), ``ncc`` and ``empty_fraction``.
    skipped : list of dict
        Pairs left out, with ``tile``, ``row_delta``, ``col_delta`` and ``reason``.
    stats : dict
        Counts, NCC summary, the backend that ran and the search bound used.
    """
    if not 0 < overlap_fraction <= 0.5:
        raise ValueError(f"overlap_fraction must be in (0, 0.5], got {overlap_fraction}")
    h, w = tile_hw
    steps = (int(round((1 - overlap_fraction) * h)), int(round((1 - overlap_fraction) * w)))
    limit = default_max_shift(tile_hw) if max_shift_px is None else float(max_shift_px)
    xp, fft, backend = get_backend(use_gpu)
    pairs: list[dict] = []
    samples: list[np.ndarray] = []
    if progress is not None:
        progress(0, nx)
    top = band(0)
    for i in range(nx):
        bottom = band(i + 1) if i + 1 < nx else None
        for horizontal in (True, False):
            count = ny - 1 if horizontal else (ny if bottom is not None else 0)
            if count <= 0:
                continue
            windows = [_pair_windows(top, bottom, j, tile_hw, steps, horizontal) for j in range(count)]
            a = np.stack([wa for wa, _ in windows])
            b = np.stack([match_histograms(wb, wa) if histogram_match else wb for wa, wb in windows])
            bound = tuple(int(min(limit, size // 2 - 1)) for size in a.shape[1:])
            for j, result in enumerate(measure_shifts(a, b, bound, xp=xp, fft=fft, filter_sigma=filter_sigma)):
                expected = (0, steps[1]) if horizontal else (steps[0], 0)
                pairs.append({
                    "tile": [i, j], "row_delta": 0 if horizontal else 1, "col_delta": 1 if horizontal else 0,
                    "measured_dy": expected[0] + result.shift[0], "measured_dx": expected[1] + result.shift[1],
                    "ncc": result.ncc, "_a": a[j], "_b": b[j],
                })
            samples.extend(x[::4, ::4].ravel() for x in (a, b))
        top = bottom
        if progress is not None:
            progress(i + 1, nx)
    threshold = float(threshold_otsu(np.concatenate(samples))) if max_empty_fraction is not None and samples else None
    measured, skipped = _split_empty(pairs, threshold, max_empty_fraction)
    nccs = np.array([p["ncc"] for p in measured]) if measured else np.array([np.nan])
    stats = {
        "n_pairs_total": len(pairs), "n_measured": len(measured), "n_skipped_empty": len(skipped),
        "mean_ncc": float(np.nanmean(nccs)) if measured else None,
        "median_ncc": float(np.nanmedian(nccs)) if measured else None,
        "backend": backend, "max_shift_px": limit, "otsu_threshold": threshold,
        "expected_step_px": list(steps),
    }
    return measured, skipped, stats


def _split_empty(pairs: list[dict], threshold: float | None, max_empty_fraction: float | None):
    """Attach each pair's background fraction and split off those that are too empty."""
    measured, skipped = [], []
    for pair in pairs:
        a, b = pair.pop("_a"), pair.pop("_b")
        if threshold is None:
            empty = 1.0 - min(float(np.mean(a > 0)), float(np.mean(b > 0)))
            too_empty = empty > 0.9
        else:
            empty = max(float(np.mean(a <= threshold)), float(np.mean(b <= threshold)))
            too_empty = empty > max_empty_fraction
        pair["empty_fraction"] = empty
        if too_empty:
            skipped.append({key: pair[key] for key in ("tile", "row_delta", "col_delta", "empty_fraction")}
                           | {"reason": "empty overlap"})
        else:
            measured.append(pair)
    return measured, skipped


def band_reader(plane_source, tile_h: int) -> BandReader:
    """A :data:`BandReader` over a 2-D array-like (NumPy, zarr or dask): row ``i`` read on demand."""
    from .io import as_float

    return lambda i: as_float(plane_source[i * tile_h:(i + 1) * tile_h, :])


def measure_mosaic(grid, overlap_fraction: float, *, z: int | None = None, **options) -> tuple[list, list, dict]:
    """Measure the pairs of an opened :class:`~linumpy_motor.io.MosaicGrid` on one Z plane.

    Only the chosen plane (the central one by default) is read, one tile row at a time.
    ``options`` are passed to :func:`measure_grid_pairs`.
    """
    from .errors import InputError
    from .io import central_plane_index, read_block

    nz, h, w = grid.tile_shape
    z = central_plane_index(nz) if z is None else z
    if not 0 <= z < nz:
        raise InputError(grid.path, f"plane z={z} is outside the volume's {nz} planes")
    measured, skipped, stats = measure_grid_pairs(
        lambda i: read_block(grid, z, slice(i * h, (i + 1) * h), slice(None)), (h, w), grid.nx, grid.ny,
        overlap_fraction, **options,
    )
    stats["z"] = z
    return measured, skipped, stats
