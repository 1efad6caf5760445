"""Measuring neighbour-tile displacements inside one slice, one row of tiles at a time."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import skimage

from linumpy_motor.backend import get_backend
from linumpy_motor.errors import InputError
from linumpy_motor.io.grid import central_plane_index, finite_float, read_block
from linumpy_motor.io.records import PAIR_DTYPE
from linumpy_motor.io.schemas import check_overlap
from linumpy_motor.parallel import resolve_threads
from linumpy_motor.register.correlation import (
    FILTER_SIGMA,
    PairShift,
    measure_shifts,
    measure_steps,
    refine_shifts,
    search_bound,
    search_limit,
)
from linumpy_motor.register.flatfield import (
    DEFAULT_FLATFIELD,
    MAX_TILES,
    choose_flatfield,
    flatfield_file,
    flatfield_from_tiles,
    load_flatfield,
)
from linumpy_motor.register.geometry import integer_step, n_neighbour_pairs, pair_columns
from linumpy_motor.register.planes import DEFAULT_PLANE, PlaneMode, VolumeReader, choose_plane
from linumpy_motor.register.robust import MAD_TO_SD

__all__ = ["BACKGROUND_MADS", "INTEGER_BATCH_BYTES", "MAX_EMPTY_DEFAULT", "MEASURE_FIXED_BYTES", "MIN_NULL_PAIRS",
           "MIN_OVERLAP_PX", "MIN_STEP_NCC", "MIN_STEP_PAIRS", "NULL_PAIRS", "PLANE_CACHE_BYTES", "STEP_PAIRS",
           "TILE_SAMPLE_COPIES", "WINDOW_COPIES",
           "BandReader", "MeasureOptions", "backends_used", "band_reader", "check_overlap_px", "measure_grid_pairs",
           "measure_mosaic", "measure_volume", "peak_bytes", "value_range"]

NULL_PAIRS = 32  # pairs per direction whose windows, mismatched, sample the background NCC
STEP_PAIRS = 16  # pairs per direction whose whole tiles tell the overlap (measure_steps)
MIN_STEP_NCC = 0.1  # ... counted when the overlap their step implies correlates at least this well
MIN_STEP_PAIRS = 3  # ... and told only from at least this many such pairs
MIN_NULL_PAIRS = 8  # fewer and the background test is not made
BACKGROUND_MADS = 4.0
MAX_EMPTY_DEFAULT = 0.9
"""Without ``max_empty_fraction``: a pair is skipped when one of its overlaps is more than this fraction zero."""
PLANE_CACHE_BYTES = 512 * 2**20  # a measured plane up to this size is read once for flat field and pairs
MIN_OVERLAP_PX = 2
"""Fewer px of nominal overlap between neighbour tiles leave nothing to correlate: such a grid is refused."""


def check_overlap_px(tile_hw: tuple[int, int], nx: int, ny: int, overlap_fraction: float, label: str) -> None:
    """Refuse tiles whose nominal overlap with a neighbour is under :data:`MIN_OVERLAP_PX` px (e.g. tiles 1 or 2 px
    high: a store chunked by pixel row, without a ``tile_shape`` attribute, read as one tile per chunk)."""
    steps = integer_step(tile_hw, overlap_fraction)
    for axis, (size, step, neighbours) in enumerate(zip(tile_hw, steps, (nx, ny))):
        if neighbours > 1 and size - step < MIN_OVERLAP_PX:
            raise InputError(label, f"tiles of {tile_hw[0]}x{tile_hw[1]} px overlap by {size - step} px along "
                                    f"{'y' if axis == 0 else 'x'} at overlap {overlap_fraction} (at least "
                                    f"{MIN_OVERLAP_PX} px are needed): is the tile shape right? (set the store's "
                                    "'tile_shape' attribute)")

logger = logging.getLogger(__name__)

BandReader = Callable[[int], np.ndarray]
"""Returns tile row ``i`` of a plane as a float32 array of shape ``(tile_h, ny * tile_w)``."""


@dataclass(frozen=True, eq=False)
class MeasureOptions:
    """How a slice's pairs are measured: the one options object of the measuring step.

    Its defaults are the library's (and the command line's, :class:`~linumpy_motor.pipeline.options.RunOptions`).

    Attributes
    ----------
    z : int or None
        Plane to measure; None: chosen by ``plane``.
    plane : {"auto", "central", "mean"}
        How the plane is chosen when ``z`` is None (:func:`~linumpy_motor.register.planes.choose_plane`).
    flatfield : "estimate", "none", None, np.ndarray, str or Path
        The flat field tiles are divided by first (:func:`~linumpy_motor.register.flatfield.choose_flatfield`;
        :func:`measure_mosaic` also takes the path of a ``.npy`` one).
    background_test : bool
        Mark ``background`` the pairs whose correlation peak is no better than that of windows that do
        not overlap at all (:func:`_background_threshold`): agarose and empty overlaps, whatever their
        level, but also tissue whose speckle decorrelates between the two acquisitions. The pairs are
        kept: the robust fit decides (``bench/bench_background.py`` measured it better than leaving
        them out); the mark is for the report.
    max_shift_px : float or None
        Largest departure from the expected position searched (default:
        :func:`~linumpy_motor.register.correlation.search_limit`).
    histogram_match : bool
        Match the second window's histogram to the first before correlating.
    max_empty_fraction : float or None
        Skip pairs whose overlap is more than this fraction background (Otsu threshold over the
        overlaps of the plane). ``None``: skip pairs one of whose overlaps is more than
        :data:`MAX_EMPTY_DEFAULT` zero.
    use_gpu : bool
        Run the FFT work with CuPy when a CUDA device is available.
    filter_sigma : float
        Gaussian low-pass of the whitened spectrum, in px.
    threads : int or None
        Threads measuring at once: the two directions' pairs, the background and the overlap samples
        (None: the cores this process may use, :func:`~linumpy_motor.parallel.resolve_threads`).
    """

    z: int | None = None
    plane: PlaneMode = DEFAULT_PLANE
    flatfield: str | Path | np.ndarray | None = DEFAULT_FLATFIELD
    background_test: bool = True
    max_shift_px: float | None = None
    histogram_match: bool = False
    max_empty_fraction: float | None = None
    use_gpu: bool = False
    filter_sigma: float = FILTER_SIGMA
    threads: int | None = None


@dataclass
class _Candidates:
    """The pairs of a plane as first measured (integer shifts), with their windows, before any is left out."""

    tiles: list[tuple[int, int]] = field(default_factory=list)
    horizontal: list[bool] = field(default_factory=list)
    results: dict[int, PairShift] = field(default_factory=dict)
    """Integer shift, NCC and peak of the pairs kept (:func:`_measure_direction`), by index."""
    a: list[np.ndarray] = field(default_factory=list)
    b: list[np.ndarray] = field(default_factory=list)
    levels: list[tuple[float, float]] = field(default_factory=list)
    filled: list[float] = field(default_factory=list)
    """Per pair, the smaller of its two windows' fractions of non-zero pixels."""

    def deltas(self, k: int) -> tuple[int, int]:
        """``(row_delta, col_delta)`` of pair ``k``."""
        return (0, 1) if self.horizontal[k] else (1, 0)

    def key(self, k: int) -> dict:
        """How a skipped pair is named: ``tile``, ``row_delta``, ``col_delta``, and its ``levels``."""
        row_delta, col_delta = self.deltas(k)
        return {"tile": list(self.tiles[k]), "row_delta": row_delta, "col_delta": col_delta,
                "levels": list(self.levels[k])}


def _pair_windows(top, bottom, j: int, tile_hw, steps, horizontal: bool):
    """The two expected-overlap windows of a pair (zero expected shift between them)."""
    h, w = tile_hw
    step_y, step_x = steps
    if horizontal:
        return top[:, j * w + step_x:(j + 1) * w], top[:, (j + 1) * w:(j + 2) * w - step_x]
    return top[step_y:h, j * w:(j + 1) * w], bottom[0:h - step_y, j * w:(j + 1) * w]


def _pair_tiles(top, bottom, j: int, tile_hw, horizontal: bool):
    """The two whole tiles of a pair."""
    w = tile_hw[1]
    return top[:, j * w:(j + 1) * w], (top[:, (j + 1) * w:(j + 2) * w] if horizontal else bottom[:, j * w:(j + 1) * w])


def measure_grid_pairs(
    band: BandReader,
    tile_hw: tuple[int, int],
    nx: int,
    ny: int,
    overlap_fraction: float,
    options: MeasureOptions = MeasureOptions(),
    *,
    flatfield: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[np.ndarray, list[dict], dict]:
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
        Expected overlap between neighbours (checked by :func:`~linumpy_motor.io.schemas.check_overlap`).
    options : MeasureOptions
        Its ``max_shift_px``, ``histogram_match``, ``max_empty_fraction``, ``use_gpu``,
        ``filter_sigma`` and ``background_test`` (the plane and flat field are chosen by the caller).
    flatfield : np.ndarray or None
        ``(h, w)`` flat field every tile is divided by before measuring. Without it the two
        copies of an overlap carry opposite vignetting ramps, which biases the shift along the step.
    progress : callable, optional
        Called as ``progress(rows done, nx)`` after each tile row (e.g. :class:`~linumpy_motor.pipeline.logs.Progress`).

    Returns
    -------
    measured : np.ndarray
        The pairs kept, a pair table (:data:`~linumpy_motor.io.records.PAIR_DTYPE`): ``tile``,
        ``row_delta``, ``col_delta``, ``measured_dy``, ``measured_dx`` (absolute displacement of the
        neighbour, sub-pixel), ``ncc``, ``peak`` (whitened correlation), ``empty_fraction``, ``levels``
        (the mean of each tile's copy of the overlap, flat-field corrected) and ``background`` (marked by
        the background test); tile row by tile row.
    skipped : list of dict
        Pairs left out, with ``tile``, ``row_delta``, ``col_delta``, ``levels`` and ``reason``.
    stats : dict
        Counts, NCC summary, the backend that ran, the search bound used, ``background_peak_threshold``
        per direction, ``tiles_at_maximum`` (per tile, the fraction of its pixels at the plane's
        largest value, before the flat field) and ``implied_overlap`` (per direction, the overlap the
        whole tiles imply whatever overlap was given: :func:`_implied_overlaps`).
    """
    check_overlap(overlap_fraction)
    steps = integer_step(tile_hw, overlap_fraction)
    limit = search_limit(tile_hw, options.max_shift_px)
    xp, fft, backend = get_backend(options.use_gpu)
    maxima = _TileMaxima(ny, tile_hw)
    band = maxima.reader(band)
    if flatfield is not None:
        band = _flat_corrected(band, np.asarray(flatfield, dtype=np.float32), ny)
    found = _Candidates()
    samples: list[np.ndarray] = []
    null_sample, step_sample = _Spread(nx, ny, NULL_PAIRS), _Spread(nx, ny, STEP_PAIRS)
    if progress is not None:
        progress(0, nx)
    top = band(0)
    for i in range(nx):
        bottom = band(i + 1) if i + 1 < nx else None
        for horizontal in (True, False):
            columns = pair_columns(i, nx, ny, horizontal)
            if not columns:
                continue
            windows = [_pair_windows(top, bottom, j, tile_hw, steps, horizontal) for j in columns]
            a = np.stack([wa for wa, _ in windows])
            b = np.stack([wb for _, wb in windows])
            levels = np.stack([a.mean(axis=(1, 2)), b.mean(axis=(1, 2))], axis=1)
            if options.histogram_match:
                b = np.stack([skimage.exposure.match_histograms(wb, wa) for wa, wb in zip(a, b)])
            found.filled.extend(np.minimum((a != 0).mean(axis=(1, 2)), (b != 0).mean(axis=(1, 2))).tolist())
            null_sample.add(horizontal, zip(a, b))
            step_sample.add(horizontal, (_pair_tiles(top, bottom, j, tile_hw, horizontal) for j in columns))
            for k, j in enumerate(columns):
                found.tiles.append((i, j))
                found.horizontal.append(horizontal)
                found.a.append(a[k])
                found.b.append(b[k])
                found.levels.append((float(levels[k][0]), float(levels[k][1])))
            if options.max_empty_fraction is not None:  # the Otsu threshold's sample, needed only then
                samples.extend(x[::4, ::4].ravel() for x in (a, b))
        if bottom is not None:  # else this was the last tile row
            top = bottom
        if progress is not None:
            progress(i + 1, nx)
    fraction = options.max_empty_fraction
    threshold = float(skimage.filters.threshold_otsu(np.concatenate(samples))) if fraction is not None and samples \
        else None
    empty, kept, skipped = _split_empty(found, threshold, fraction)
    correlate = {"xp": xp, "fft": fft, "filter_sigma": options.filter_sigma}
    directions = {horizontal: [k for k in kept if found.horizontal[k] == horizontal] for horizontal in (True, False)}
    nulls = _null_windows(null_sample) if options.background_test else {}
    with ThreadPoolExecutor(max(1, resolve_threads(options.threads)), "measure") as pool:  # NumPy and the FFTs
        # release the GIL: the directions, and the background and overlap samples, are measured at once
        shifts = {horizontal: pool.submit(_measure_direction, found, members, limit, **correlate)
                  for horizontal, members in directions.items() if members}
        null_futures = {kind: pool.submit(_background_threshold, a, b, search_bound(limit, a.shape[1:]), **correlate)
                        for kind, (a, b) in nulls.items()}
        implied = pool.submit(_implied_overlaps, step_sample, tile_hw, limit, **correlate)
        refined = {horizontal: future.result() for horizontal, future in shifts.items()}
        null = {kind: future.result() for kind, future in null_futures.items()}
        implied_overlap = implied.result()
    measured = _pair_table(found, kept, empty, steps, refined)
    if options.background_test:
        _mark_background(measured, null)
    stats = {
        "n_pairs_total": len(found.tiles), "n_measured": len(measured),
        "n_skipped_empty": sum(s["reason"] == "empty overlap" for s in skipped),
        "n_background": int(measured["background"].sum()),
        "background_peak_threshold": null,
        "flatfield_applied": flatfield is not None,
        "mean_ncc": float(np.nanmean(measured["ncc"])) if len(measured) else None,
        "median_ncc": float(np.nanmedian(measured["ncc"])) if len(measured) else None,
        "backend": backend, "max_shift_px": limit, "otsu_threshold": threshold,
        "expected_step_px": list(steps), "tiles_at_maximum": maxima.fractions(),
        "implied_overlap": implied_overlap,
    }
    return measured, skipped, stats


def backends_used(stats: Iterable[Mapping]) -> list[str]:
    """The array backends that measured a set of slices (their stats' ``backend``), sorted: the
    pooled fit's ``diagnostics["backend"]``, whoever runs it."""
    return sorted({s.get("backend", "numpy") for s in stats})


INTEGER_BATCH_BYTES = 2 * 2**20
"""Window data (per side) phase-correlated in one batch by :func:`_measure_direction`: batches that stay in the
CPU's cache (32 MB ones were 7 % slower on a 24x28 grid of 192 px tiles)."""


def _measure_direction(found: _Candidates, members: list[int], limit: float, **options) -> np.ndarray:
    """Pairs ``members`` (all of one direction) measured: their integer shifts, NCC and peak into ``found.results``,
    in batches of :data:`INTEGER_BATCH_BYTES` (not one per tile row: a batch's fixed cost was a quarter of a
    6-pair row's), then their sub-pixel shifts ``(len(members), 2)``, refined all at once (few, large FFT
    batches). ``options`` go to :func:`~linumpy_motor.register.correlation.measure_shifts`.
    """
    a, b = np.stack([found.a[k] for k in members]), np.stack([found.b[k] for k in members])
    size = max(1, INTEGER_BATCH_BYTES // (4 * a.shape[1] * a.shape[2]))
    for start in range(0, len(members), size):
        batch = slice(start, start + size)
        found.results.update(zip(members[batch], measure_shifts(a[batch], b[batch], search_bound(limit, a.shape[1:]),
                                                                subpixel=False, **options)))
    return refine_shifts(a, b, np.array([found.results[k].shift for k in members], dtype=int), **options)


def _pair_table(found: _Candidates, kept: list[int], empty: list[float], steps: tuple[int, int],
                refined: Mapping[bool, np.ndarray]) -> np.ndarray:
    """The pair table of the pairs kept, from their measurement (:func:`_measure_direction`): ``refined``, per
    direction, the sub-pixel shifts of its pairs in the order of ``kept``."""
    table = np.zeros(len(kept), dtype=PAIR_DTYPE)
    if not kept:
        return table
    table["tile"] = [found.tiles[k] for k in kept]
    table["row_delta"], table["col_delta"] = np.array([found.deltas(k) for k in kept]).T
    table["ncc"] = [found.results[k].ncc for k in kept]
    table["peak"] = [found.results[k].peak for k in kept]
    table["empty_fraction"] = [empty[k] for k in kept]
    table["levels"] = [found.levels[k] for k in kept]
    for horizontal, shifts in refined.items():
        rows = [row for row, k in enumerate(kept) if found.horizontal[k] == horizontal]
        expected = (0, steps[1]) if horizontal else (steps[0], 0)
        table["measured_dy"][rows] = expected[0] + shifts[:, 0]
        table["measured_dx"][rows] = expected[1] + shifts[:, 1]
    return table


def _split_empty(found: _Candidates, threshold: float | None,
                 max_empty_fraction: float | None) -> tuple[list[float], list[int], list[dict]]:
    """Each pair's background fraction, the pairs kept (indices) and those too empty (skipped entries)."""
    empty, kept, skipped = [], [], []
    for k, (a, b) in enumerate(zip(found.a, found.b)):
        if threshold is None or max_empty_fraction is None:  # no threshold without a max fraction
            fraction = 1.0 - found.filled[k]
            too_empty = fraction > MAX_EMPTY_DEFAULT
        else:
            fraction = max(float(np.mean(a <= threshold)), float(np.mean(b <= threshold)))
            too_empty = fraction > max_empty_fraction
        empty.append(fraction)
        if too_empty:
            skipped.append(found.key(k) | {"empty_fraction": fraction, "reason": "empty overlap"})
        else:
            kept.append(k)
    return empty, kept, skipped


def _flat_corrected(band: BandReader, flatfield: np.ndarray, ny: int) -> BandReader:
    """``band`` with every tile divided by the flat field."""
    gain = np.tile(1.0 / flatfield, (1, ny)).astype(np.float32)
    return lambda i: band(i) * gain


class _TileMaxima:
    """Each tile's largest value and how many of its pixels reach it, from the rows read (before any
    flat field): what tells a saturated tile."""

    def __init__(self, ny: int, tile_hw: tuple[int, int]) -> None:
        self.shape = (tile_hw[0], ny, tile_hw[1])
        self.maxima: list[np.ndarray] = []
        self.counts: list[np.ndarray] = []
        self.minimum = np.inf

    def reader(self, band: BandReader) -> BandReader:
        """``band``, each row it returns recorded (every tile row is read once, in order)."""
        def read(i: int) -> np.ndarray:
            row = band(i)
            tiles = row.reshape(self.shape)
            self.maxima.append(tiles.max(axis=(0, 2)))
            self.counts.append((tiles == self.maxima[-1][None, :, None]).sum(axis=(0, 2)))
            self.minimum = min(self.minimum, float(row.min()))
            return row
        return read

    def fractions(self) -> list[list[float]]:
        """Per tile (rows of the grid), the fraction of its pixels at the plane's largest value; all 0
        on a constant plane."""
        maxima, counts = np.array(self.maxima), np.array(self.counts)
        top = float(maxima.max(initial=-np.inf))
        fractions = np.where(maxima == top, counts / (self.shape[0] * self.shape[2]), 0.0) if top > self.minimum \
            else np.zeros(maxima.shape)
        return [[float(f) for f in row] for row in fractions.round(4)]


class _Spread:
    """Copies of what ``count`` pairs per direction, spread over the grid, were offered."""

    def __init__(self, nx: int, ny: int, count: int) -> None:
        self.stride = {horizontal: _sample_stride(n_neighbour_pairs(nx, ny, horizontal), count)
                       for horizontal in (True, False)}
        self.count = {True: 0, False: 0}
        self.kept: dict[bool, list[tuple[np.ndarray, np.ndarray]]] = {True: [], False: []}

    def add(self, horizontal: bool, pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
        """Offer one tile row's pairs of one direction (two arrays each, copied when kept)."""
        for first, second in pairs:
            if self.count[horizontal] % self.stride[horizontal] == 0:
                self.kept[horizontal].append((first.copy(), second.copy()))
            self.count[horizontal] += 1

    def stacked(self, minimum: int = 1) -> dict[bool, tuple[np.ndarray, np.ndarray]]:
        """Per direction with at least ``minimum`` kept pairs: the kept firsts and seconds, stacked."""
        return {horizontal: (np.stack([x for x, _ in kept]), np.stack([y for _, y in kept]))
                for horizontal, kept in self.kept.items() if len(kept) >= minimum}


def _null_windows(sample: _Spread) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per direction with at least ``MIN_NULL_PAIRS`` sampled pairs: windows ``a`` of each pair and ``b``
    of the pair half-way round the list (far away on the grid, so they do not overlap)."""
    return {"horizontal" if horizontal else "vertical": (a, np.roll(b, len(b) // 2, axis=0))
            for horizontal, (a, b) in sample.stacked(MIN_NULL_PAIRS).items()}


def _implied_overlaps(sample: _Spread, tile_hw: tuple[int, int], limit: float, **options) -> dict[str, dict]:
    """The overlap the sampled whole-tile pairs imply, per direction (:func:`~linumpy_motor.register.correlation.
    measure_steps`): the median over the better-correlated half of the pairs (the rest may hold no tissue),
    those of NCC :data:`MIN_STEP_NCC` at least; a direction without :data:`MIN_STEP_PAIRS` such pairs is left out.

    Returns
    -------
    dict
        ``horizontal`` / ``vertical``: ``overlap`` (1 - step length / tile size, as
        :func:`~linumpy_motor.register.geometry.effective_overlap`), ``median_ncc`` and ``n_pairs``.
    """
    found = {}
    for horizontal, (a, b) in sample.stacked().items():
        size = tile_hw[1] if horizontal else tile_hw[0]
        shifts = measure_steps(a, b, horizontal, search_bound(limit, a.shape[1:])[0 if horizontal else 1], **options)
        ncc = np.array([s.ncc for s in shifts])
        better = (ncc >= np.median(ncc)) & (ncc >= MIN_STEP_NCC)
        if better.sum() < MIN_STEP_PAIRS:  # empty tiles, or nothing the whole tiles share: no overlap to tell
            continue
        overlaps = np.array([1.0 - float(np.hypot(*s.shift)) / size for s in shifts])
        found["horizontal" if horizontal else "vertical"] = {
            "overlap": float(np.median(overlaps[better])), "median_ncc": float(np.median(ncc)), "n_pairs": len(a)}
    return found


def _background_threshold(a: np.ndarray, b: np.ndarray, bound: tuple[int, int], **options) -> float:
    """Correlation peak above which a pair is more than chance: windows that do not overlap, measured as pairs.

    The whitened correlation peak of two unrelated windows is what noise, agarose and repeated
    texture give without any true overlap (the NCC would not do: smooth shading gives unrelated
    windows a high NCC). The threshold is their median plus ``BACKGROUND_MADS`` robust standard
    deviations (1.4826 MAD), so a few unrelated windows that happen to match do not raise it.

    Parameters
    ----------
    a, b : np.ndarray
        ``(n, H, W)`` windows of pairs that do not overlap.
    bound : (int, int)
        The search bound the real pairs were measured with.
    options
        Passed to :func:`~linumpy_motor.register.correlation.measure_shifts`.
    """
    peak = np.array([r.peak for r in measure_shifts(a, b, bound, subpixel=False, **options)])
    median = float(np.median(peak))
    return median + BACKGROUND_MADS * MAD_TO_SD * float(np.median(np.abs(peak - median)))


def _mark_background(table: np.ndarray, thresholds: dict[str, float]) -> None:
    """Mark ``background`` the pairs of a pair table whose correlation peak does not exceed their direction's
    background threshold (False where there is no threshold)."""
    for horizontal, kind in ((True, "horizontal"), (False, "vertical")):
        threshold = thresholds.get(kind)
        rows = (table["col_delta"] != 0) == horizontal
        table["background"][rows] = False if threshold is None else table["peak"][rows] <= threshold


def band_reader(plane_source, tile_h: int) -> BandReader:
    """A :data:`BandReader` over a 2-D array-like (NumPy, zarr or dask): row ``i`` read on demand, refused
    when it holds NaN or Inf (:func:`~linumpy_motor.io.grid.finite_float`)."""
    return lambda i: finite_float(plane_source[i * tile_h:(i + 1) * tile_h, :], None)


def _plane_block(read: VolumeReader, z: int | None, rows: slice, cols: slice) -> np.ndarray:
    """``rows, cols`` of plane ``z`` (of the mean over all planes when ``z`` is None)."""
    if z is None:
        return read(slice(None), rows, cols).mean(axis=0)
    return read(slice(z, z + 1), rows, cols)[0]


def _plane_rows(read: VolumeReader, z: int | None, tile_hw: tuple[int, int], nx: int, ny: int) -> list | None:
    """Every tile row of the measured plane, read once, when the plane is at most ``PLANE_CACHE_BYTES``
    (the flat-field estimate and the measurement then share one read); None for a larger plane."""
    h, w = tile_hw
    if nx * h * ny * w * 4 > PLANE_CACHE_BYTES:
        return None
    return [_plane_block(read, z, slice(i * h, (i + 1) * h), slice(None)) for i in range(nx)]


WINDOW_COPIES = 3.0
"""Bytes held per byte of the pairs' overlap windows while they are measured (the windows, each direction's
stack of them, their framed spectra and correlation surfaces, both directions at once)."""
TILE_SAMPLE_COPIES = 3.0
"""... and per byte of the whole-tile pairs sampled for the implied overlap (:data:`STEP_PAIRS` per direction:
their copies, stacks and :func:`~linumpy_motor.register.correlation.measure_steps`' float64 buffers)."""
MEASURE_FIXED_BYTES = 8 * 2**20
"""... plus this much whatever the grid (the flat-field fit, the pair table, small buffers)."""


def _sample_stride(n_pairs: int, count: int) -> int:
    """Every how many pairs of a direction :class:`_Spread` keeps one, to keep about ``count`` of ``n_pairs``."""
    return max(1, n_pairs // count)


def peak_bytes(tile_shape: tuple[int, int, int], nx: int, ny: int, overlap: float) -> int:
    """Estimated peak of data held while measuring a slice (:func:`~linumpy_motor.memory.check_memory`).

    The measured plane when it is cached (up to :data:`PLANE_CACHE_BYTES`), plus the larger of the
    flat-field estimate's tile sample (twice its tiles) and the pair measurement: its overlap windows
    times :data:`WINDOW_COPIES` and its whole-tile sample times :data:`TILE_SAMPLE_COPIES`, plus
    :data:`MEASURE_FIXED_BYTES`. An estimate, not a bound: fitted on the traced peaks of measurements of
    grids of 96 to 512 px tiles and 10 to 30 % overlap, it is 0.92x to 1.18x of them, so a job that
    would fit is not refused for a margin (a pipeline task that does run out is killed and retried
    with more memory).

    Raises
    ------
    InputError
        A bad ``overlap`` (:func:`~linumpy_motor.io.schemas.check_overlap`).
    """
    check_overlap(overlap)
    _, h, w = tile_shape
    tile = h * w * 4
    plane = nx * ny * tile
    step_y, step_x = integer_step((h, w), overlap)
    n_h, n_v = n_neighbour_pairs(nx, ny, True), n_neighbour_pairs(nx, ny, False)
    windows = 2 * 4 * (n_h * h * (w - step_x) + n_v * (h - step_y) * w)  # both windows of every pair
    sampled = sum(-(-n // _sample_stride(n, STEP_PAIRS)) for n in (n_h, n_v) if n)
    pairs = WINDOW_COPIES * windows + TILE_SAMPLE_COPIES * 2 * tile * sampled
    flat = 2 * min(nx * ny, MAX_TILES) * tile
    return int((plane if plane <= PLANE_CACHE_BYTES else 0) + max(flat, pairs) + MEASURE_FIXED_BYTES)


def value_range(block: np.ndarray) -> tuple[float, float] | None:
    """``(offset, scale)`` that map a slice's values onto about [0, 1] before measuring, from its first data read.

    OCT intensities come in any range: linear (positive), in dB (mostly negative), or scaled by huge
    factors (1e10, 1e37, whose squares overflow float32 in the correlations). The offset is the block's
    minimum when it is negative, else 0 (positive data are only scaled: every test and threshold of the
    measurement is unchanged by a scale); the scale spans the offset to the block's 99.9th percentile.
    Exact zeros (missing chunks, read as background) are left out. None when the block holds nothing
    but zeros or one value.
    """
    values = block[block != 0].astype(np.float64)
    if not values.size:
        return None
    offset = min(0.0, float(values.min()))
    scale = float(np.percentile(values, 99.9)) - offset
    return (offset, scale) if scale > 0 else None


class _Normalised:
    """A :data:`~linumpy_motor.register.planes.VolumeReader` whose values are mapped by ``(value - offset) / scale``
    (:func:`value_range`, set by the first block read that holds data; exact zeros stay zero).

    The measurement reads nothing more for it (the plane choice, the flat-field estimate and the pairs
    read what they always read); the first read is one of a fixed sequence, so the mapping is the same
    from run to run, and reads from several threads wait for it.
    """

    def __init__(self, read: VolumeReader) -> None:
        self.read = read
        self.mapping: tuple[float, float] | None = None
        self.lock = threading.Lock()

    def __call__(self, zs: slice, rows: slice, cols: slice) -> np.ndarray:
        block = self.read(zs, rows, cols)
        if self.mapping is None:
            with self.lock:
                if self.mapping is None:
                    self.mapping = value_range(block)
        if self.mapping is None:  # only zeros so far: nothing to map
            return block
        offset, scale = self.mapping
        if offset == 0:  # positive data are only scaled: zeros stay zeros (one float32 pass per block)
            return np.multiply(block, np.float32(1 / scale), dtype=np.float32)
        mapped = ((block.astype(np.float64) - offset) / scale).astype(np.float32)
        return np.where(block == 0, np.float32(0), mapped)


def measure_volume(read: VolumeReader, tile_shape: tuple[int, int, int], nx: int, ny: int, overlap_fraction: float,
                   options: MeasureOptions = MeasureOptions(), *, label: str = "slice",
                   progress: Callable[[int, int], None] | None = None,
                   on_flatfield: Callable[[np.ndarray | None], None] | None = None,
                   ) -> tuple[np.ndarray, list[dict], dict]:
    """Measure the pairs of a mosaic-grid volume on a chosen plane, tiles flat-field corrected first.

    Parameters
    ----------
    read : VolumeReader
        Reads blocks of the volume ``(Z, nx * h, ny * w)``.
    tile_shape : (int, int, int)
        ``(Z, h, w)``: ``Z`` is the number of planes ``read`` has.
    nx, ny : int
        Grid size.
    overlap_fraction : float
        Expected overlap.
    options : MeasureOptions
        The plane (``z``, else chosen by ``plane``), the flat field (``estimate``: the slice's, with
        the stitcher's estimator, on the measured plane; an array ``(h, w)`` or ``(Z, h, w)``: that
        flat field; none: no correction) and the options of :func:`measure_grid_pairs`.
    label : str
        Names the slice in errors and warnings.
    progress : callable, optional
        As in :func:`measure_grid_pairs`.
    on_flatfield : callable, optional
        Given the flat field chosen for the slice, as a gain of the values ``read`` returns (an
        estimate on values shifted by a negative offset is no such gain: None then), so a caller can
        keep it for the stitch instead of estimating it again.

    Returns
    -------
    measured, skipped, stats
        As :func:`measure_grid_pairs`; ``stats`` also has ``z`` (None for the mean over planes),
        ``plane_mode`` (and ``plane_scores``) and ``flatfield``.
    """
    nz, h, w = tile_shape
    z = options.z
    if z is not None and not 0 <= z < nz:
        raise InputError(label, f"plane z={z} is outside the volume's {nz} planes")
    check_overlap_px((h, w), nx, ny, overlap_fraction, label)
    if not isinstance(options.flatfield, np.ndarray):
        flatfield_file(options.flatfield)  # a misspelt mode is refused before any reading
    read = _Normalised(read)  # any value range is measured alike (dB, negative, huge)
    if z is None:
        z, plane_info = choose_plane(read, nz, (h, w), nx, ny, overlap_fraction, options.plane,
                                     filter_sigma=options.filter_sigma, max_shift_px=options.max_shift_px)
    else:
        plane_info = {"plane_mode": "given"}
    rows: list | None = None

    def estimate() -> np.ndarray | None:
        nonlocal rows
        rows = _plane_rows(read, z, (h, w), nx, ny)
        tiles = ((i, j) for i in range(nx) for j in range(ny))
        while rows is None and read.mapping is None and (tile := next(tiles, None)) is not None:
            i, j = tile  # the estimate reads tiles on threads: the mapping comes from a fixed tile first
            _plane_block(read, z, slice(i * h, (i + 1) * h), slice(j * w, (j + 1) * w))
        return flatfield_from_tiles(
            (lambda i, j: rows[i][:, j * w:(j + 1) * w]) if rows is not None else
            (lambda i, j: _plane_block(read, z, slice(i * h, (i + 1) * h), slice(j * w, (j + 1) * w))),
            nx, ny, (h, w), label=label, log_level=logging.INFO)

    flat, description = choose_flatfield(options.flatfield, tile_shape, estimate)
    if on_flatfield is not None:
        shifted = isinstance(options.flatfield, str) and read.mapping is not None and read.mapping[0] != 0
        on_flatfield(None if shifted else flat)
    if flat is not None and flat.ndim == 3:
        flat = flat[central_plane_index(nz) if z is None else z]
    band = (lambda i: rows[i]) if rows is not None else \
        (lambda i: _plane_block(read, z, slice(i * h, (i + 1) * h), slice(None)))
    measured, skipped, stats = measure_grid_pairs(band, (h, w), nx, ny, overlap_fraction, options, flatfield=flat,
                                                  progress=progress)
    stats.update(z=z, flatfield=description, **plane_info)
    _log_measurement(Path(label).name, measured, skipped, stats)
    return measured, skipped, stats


def _log_measurement(name: str, measured: np.ndarray, skipped: list[dict], stats: Mapping) -> None:
    """One line on the plane, the flat field and the pairs of a slice; with debug, the plane scores and each
    pair's decision."""
    plane = "mean of the planes" if stats["z"] is None else f"z={stats['z']} ({stats.get('plane_mode')})"
    logger.info("%s: measured on plane %s, flat field %s: %d pairs (%d no better than chance), %d skipped",
                name, plane, stats["flatfield"], len(measured), int(measured["background"].sum()), len(skipped))
    if not logger.isEnabledFor(logging.DEBUG):  # the pairs' lines cost a few ms per slice to format, even unshown
        return
    if stats.get("plane_scores"):
        logger.debug("%s: plane scores (overlap NCC, better half of the sampled pairs): %s", name,
                     ", ".join(f"z={z} {score:.3f}" for z, score in stats["plane_scores"].items()))
    for pair in measured:
        logger.debug("%s: pair %s %s: displacement (%.2f, %.2f) px, NCC %.3f, peak %.4f%s", name,
                     [int(v) for v in pair["tile"]], "right" if pair["col_delta"] else "down", pair["measured_dy"],
                     pair["measured_dx"], pair["ncc"], pair["peak"],
                     ", no better than chance" if pair["background"] else "")
    for skip in skipped:
        logger.debug("%s: pair %s %s: skipped (%s)", name, skip["tile"], "right" if skip["col_delta"] else "down",
                     skip["reason"])


def measure_mosaic(grid, overlap_fraction: float, options: MeasureOptions = MeasureOptions(), *,
                   progress: Callable[[int, int], None] | None = None,
                   on_flatfield: Callable[[np.ndarray | None], None] | None = None,
                   ) -> tuple[np.ndarray, list[dict], dict]:
    """Measure the pairs of an opened :class:`~linumpy_motor.io.grid.MosaicGrid` (see :func:`measure_volume`).

    The measured plane is read one tile row at a time; choosing it reads a few tiles through the
    depth, and the flat-field estimate a subset of tiles on a few planes. ``options.flatfield`` may
    also be the path of a ``.npy`` flat field, measured as a given array (the pairs record ``"given"``).
    """
    path = flatfield_file(None if isinstance(options.flatfield, np.ndarray) else options.flatfield)
    if path is not None:
        options = replace(options, flatfield=load_flatfield(path, grid.tile_shape))
    return measure_volume(lambda zs, rows, cols: read_block(grid, zs, rows, cols), grid.tile_shape, grid.nx, grid.ny,
                          overlap_fraction, options, label=str(grid.path), progress=progress,
                          on_flatfield=on_flatfield)
