"""Measuring neighbour-tile displacements inside one slice, one row of tiles at a time."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
from skimage.exposure import match_histograms
from skimage.filters import threshold_otsu

from linumpy_motor.backend import get_backend
from linumpy_motor.errors import InputError
from linumpy_motor.io.grid import central_plane_index, finite_float, read_block
from linumpy_motor.io.schemas import check_overlap
from linumpy_motor.register.correlation import (
    FILTER_SIGMA,
    measure_shifts,
    measure_steps,
    refine_shifts,
    search_bound,
    search_limit,
)
from linumpy_motor.register.flatfield import (
    DEFAULT_FLATFIELD,
    choose_flatfield,
    flatfield_file,
    flatfield_from_tiles,
    load_flatfield,
)
from linumpy_motor.register.geometry import integer_step, n_neighbour_pairs, pair_columns
from linumpy_motor.register.planes import DEFAULT_PLANE, VolumeReader, choose_plane
from linumpy_motor.register.robust import MAD_TO_SD

__all__ = ["BACKGROUND_MADS", "MAX_EMPTY_DEFAULT", "MIN_NULL_PAIRS", "MIN_STEP_NCC", "MIN_STEP_PAIRS", "NULL_PAIRS",
           "PLANE_CACHE_BYTES", "STEP_PAIRS", "BandReader", "backends_used", "band_reader", "measure_grid_pairs",
           "measure_mosaic", "measure_volume"]

NULL_PAIRS = 32  # pairs per direction whose windows, mismatched, sample the background NCC
STEP_PAIRS = 16  # pairs per direction whose whole tiles tell the overlap (measure_steps)
MIN_STEP_NCC = 0.1  # ... counted when the overlap their step implies correlates at least this well
MIN_STEP_PAIRS = 3  # ... and told only from at least this many such pairs
MIN_NULL_PAIRS = 8  # fewer and the background test is not made
BACKGROUND_MADS = 4.0
MAX_EMPTY_DEFAULT = 0.9
"""Without ``max_empty_fraction``: a pair is skipped when one of its overlaps is more than this fraction zero."""
PLANE_CACHE_BYTES = 512 * 2**20  # a measured plane up to this size is read once for flat field and pairs

logger = logging.getLogger(__name__)

BandReader = Callable[[int], np.ndarray]
"""Returns tile row ``i`` of a plane as a float32 array of shape ``(tile_h, ny * tile_w)``."""


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
    *,
    max_shift_px: float | None = None,
    histogram_match: bool = False,
    max_empty_fraction: float | None = None,
    use_gpu: bool = False,
    filter_sigma: float = FILTER_SIGMA,
    flatfield: np.ndarray | None = None,
    background_test: bool = True,
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
        Expected overlap between neighbours (checked by :func:`~linumpy_motor.io.schemas.check_overlap`).
    max_shift_px : float or None
        Largest departure from the expected position searched (default:
        :func:`~linumpy_motor.register.correlation.search_limit`).
    histogram_match : bool
        Match the second window's histogram to the first before correlating.
    max_empty_fraction : float or None
        Skip pairs whose overlap is more than this fraction background (Otsu threshold over the
        overlaps of the plane). ``None``: skip pairs one of whose overlaps is more than :data:`MAX_EMPTY_DEFAULT` zero.
    use_gpu : bool
        Run the FFT work with CuPy when a CUDA device is available.
    filter_sigma : float
        Gaussian low-pass of the whitened spectrum, in px.
    flatfield : np.ndarray or None
        ``(h, w)`` flat field every tile is divided by before measuring. Without it the two
        copies of an overlap carry opposite vignetting ramps, which biases the shift along the step.
    background_test : bool
        Mark ``background`` the pairs whose correlation peak is no better than that of windows that do
        not overlap at all (:func:`_background_threshold`): agarose and empty overlaps, whatever their
        level, but also tissue whose speckle decorrelates between the two acquisitions. The pairs are
        kept: the robust fit decides (``bench/bench_background.py`` measured it better than leaving
        them out); the mark is for the report.
    progress : callable, optional
        Called as ``progress(rows done, nx)`` after each tile row (e.g. :class:`~linumpy_motor.pipeline.logs.Progress`).

    Returns
    -------
    measured : list of dict
        Pairs kept: ``tile`` (i, j), ``row_delta``, ``col_delta``, ``measured_dy``, ``measured_dx``
        (absolute displacement of the neighbour), ``ncc``, ``peak`` (whitened correlation),
        ``empty_fraction``, ``levels`` (the mean of each tile's copy of the overlap, flat-field
        corrected) and, with the background test, ``background``.
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
    limit = search_limit(tile_hw, max_shift_px)
    xp, fft, backend = get_backend(use_gpu)
    maxima = _TileMaxima(ny, tile_hw)
    band = maxima.reader(band)
    if flatfield is not None:
        band = _flat_corrected(band, np.asarray(flatfield, dtype=np.float32), ny)
    pairs: list[dict] = []
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
            levels = np.stack([a.mean(axis=(1, 2)), np.stack([wb for _, wb in windows]).mean(axis=(1, 2))], axis=1)
            b = np.stack([match_histograms(wb, wa) if histogram_match else wb for wa, wb in windows])
            bound = search_bound(limit, a.shape[1:])
            null_sample.add(horizontal, zip(a, b))
            step_sample.add(horizontal, (_pair_tiles(top, bottom, j, tile_hw, horizontal) for j in columns))
            for j, result in enumerate(measure_shifts(a, b, bound, xp=xp, fft=fft, filter_sigma=filter_sigma,
                                                      subpixel=False)):
                pairs.append({
                    "tile": [i, j], "row_delta": 0 if horizontal else 1, "col_delta": 1 if horizontal else 0,
                    "ncc": result.ncc, "peak": result.peak, "levels": levels[j].tolist(), "_shift": result.shift,
                    "_a": a[j], "_b": b[j],
                })
            samples.extend(x[::4, ::4].ravel() for x in (a, b))
        if bottom is not None:  # else this was the last tile row
            top = bottom
        if progress is not None:
            progress(i + 1, nx)
    threshold = float(threshold_otsu(np.concatenate(samples))) if max_empty_fraction is not None and samples else None
    measured, skipped = _split_empty(pairs, threshold, max_empty_fraction)
    null = {}
    if background_test:
        null = {kind: _background_threshold(a, b, search_bound(limit, a.shape[1:]), xp=xp, fft=fft,
                                           filter_sigma=filter_sigma)
                for kind, (a, b) in _null_windows(null_sample).items()}
        _mark_background(measured, null)
    _refine_kept(measured, steps, xp=xp, fft=fft, filter_sigma=filter_sigma)
    nccs = np.array([p["ncc"] for p in measured]) if measured else np.array([np.nan])
    stats = {
        "n_pairs_total": len(pairs), "n_measured": len(measured),
        "n_skipped_empty": sum(s["reason"] == "empty overlap" for s in skipped),
        "n_background": sum(bool(p.get("background")) for p in measured),
        "background_peak_threshold": null,
        "flatfield_applied": flatfield is not None,
        "mean_ncc": float(np.nanmean(nccs)) if measured else None,
        "median_ncc": float(np.nanmedian(nccs)) if measured else None,
        "backend": backend, "max_shift_px": limit, "otsu_threshold": threshold,
        "expected_step_px": list(steps), "tiles_at_maximum": maxima.fractions(),
        "implied_overlap": _implied_overlaps(step_sample, tile_hw, limit, xp=xp, fft=fft, filter_sigma=filter_sigma),
    }
    return measured, skipped, stats


def backends_used(stats: Iterable[Mapping]) -> list[str]:
    """The array backends that measured a set of slices (their stats' ``backend``), sorted: the
    pooled fit's ``diagnostics["backend"]``, whoever runs it."""
    return sorted({s.get("backend", "numpy") for s in stats})


def _refine_kept(pairs: list[dict], steps: tuple[int, int], **options) -> None:
    """Set the sub-pixel ``measured_dy``, ``measured_dx`` of the pairs kept, one batch per direction, and
    drop their windows (only kept pairs are refined; batching a whole plane makes few, large FFT batches)."""
    for horizontal in (True, False):
        members = [p for p in pairs if bool(p["col_delta"]) == horizontal]
        if not members:
            continue
        refined = refine_shifts(np.stack([p["_a"] for p in members]), np.stack([p["_b"] for p in members]),
                                np.array([p["_shift"] for p in members], dtype=int), **options)
        expected = (0, steps[1]) if horizontal else (steps[0], 0)
        for pair, shift in zip(members, refined):
            pair["measured_dy"], pair["measured_dx"] = expected[0] + float(shift[0]), expected[1] + float(shift[1])
    for pair in pairs:
        for key in ("_a", "_b", "_shift"):
            del pair[key]


def _split_empty(pairs: list[dict], threshold: float | None, max_empty_fraction: float | None):
    """Attach each pair's background fraction and split off those that are too empty."""
    measured, skipped = [], []
    for pair in pairs:
        a, b = pair["_a"], pair["_b"]
        if threshold is None or max_empty_fraction is None:  # no threshold without a max fraction
            empty = 1.0 - min(float(np.mean(a > 0)), float(np.mean(b > 0)))
            too_empty = empty > MAX_EMPTY_DEFAULT
        else:
            empty = max(float(np.mean(a <= threshold)), float(np.mean(b <= threshold)))
            too_empty = empty > max_empty_fraction
        pair["empty_fraction"] = empty
        if too_empty:
            skipped.append({key: pair[key] for key in ("tile", "row_delta", "col_delta", "empty_fraction", "levels")}
                           | {"reason": "empty overlap"})
        else:
            measured.append(pair)
    return measured, skipped


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
        self.stride = {horizontal: max(1, n_neighbour_pairs(nx, ny, horizontal) // count)
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


def _mark_background(pairs: list[dict], thresholds: dict[str, float]) -> None:
    """Mark ``background`` the pairs whose correlation peak does not exceed their direction's background
    threshold (False where there is no threshold)."""
    for pair in pairs:
        threshold = thresholds.get("horizontal" if pair["col_delta"] else "vertical")
        pair["background"] = threshold is not None and pair["peak"] <= threshold


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


def measure_volume(read: VolumeReader, tile_shape: tuple[int, int, int], nx: int, ny: int, overlap_fraction: float,
                   *, z: int | None = None, plane: str = DEFAULT_PLANE,
                   flatfield: str | Path | np.ndarray | None = DEFAULT_FLATFIELD, label: str = "slice",
                   **options) -> tuple[list, list, dict]:
    """Measure the pairs of a mosaic-grid volume on a chosen plane, tiles flat-field corrected first.

    Parameters
    ----------
    read : VolumeReader
        Reads blocks of the volume ``(Z, nx * h, ny * w)``.
    tile_shape : (int, int, int)
        ``(Z, h, w)``.
    nx, ny : int
        Grid size.
    overlap_fraction : float
        Expected overlap.
    z : int or None
        Plane to measure; None: chosen by ``plane``.
    plane : {"auto", "central", "mean"}
        How the plane is chosen when ``z`` is None (:func:`~linumpy_motor.register.planes.choose_plane`).
    flatfield : "estimate", "none", None, np.ndarray, str or Path
        ``estimate``: the slice's flat field (the stitcher's estimator) on the measured plane; an
        array ``(h, w)`` or ``(Z, h, w)``, or the path of one in a ``.npy`` file: that flat field; none:
        no correction (:func:`~linumpy_motor.register.flatfield.choose_flatfield`).
    label : str
        Names the slice in errors and warnings.
    options
        Passed to :func:`measure_grid_pairs`.

    Returns
    -------
    measured, skipped, stats
        As :func:`measure_grid_pairs`; ``stats`` also has ``z`` (None for the mean over planes),
        ``plane_mode`` (and ``plane_scores``) and ``flatfield``.
    """
    nz, h, w = tile_shape
    if z is not None and not 0 <= z < nz:
        raise InputError(label, f"plane z={z} is outside the volume's {nz} planes")
    if not isinstance(flatfield, np.ndarray):
        flatfield_file(flatfield)  # a misspelt mode is refused before any reading
    if z is None:
        z, plane_info = choose_plane(read, nz, (h, w), nx, ny, overlap_fraction, plane,
                                     filter_sigma=options.get("filter_sigma", FILTER_SIGMA),
                                     max_shift_px=options.get("max_shift_px"))
    else:
        plane_info = {"plane_mode": "given"}
    rows: list | None = None

    def estimate() -> np.ndarray | None:
        nonlocal rows
        rows = _plane_rows(read, z, (h, w), nx, ny)
        return flatfield_from_tiles(
            (lambda i, j: rows[i][:, j * w:(j + 1) * w]) if rows is not None else
            (lambda i, j: _plane_block(read, z, slice(i * h, (i + 1) * h), slice(j * w, (j + 1) * w))),
            nx, ny, (h, w), label=label, log_level=logging.INFO)

    field, description = choose_flatfield(flatfield, tile_shape, estimate)
    if field is not None and field.ndim == 3:
        field = field[central_plane_index(nz) if z is None else z]
    band = (lambda i: rows[i]) if rows is not None else \
        (lambda i: _plane_block(read, z, slice(i * h, (i + 1) * h), slice(None)))
    measured, skipped, stats = measure_grid_pairs(band, (h, w), nx, ny, overlap_fraction, flatfield=field, **options)
    stats.update(z=z, flatfield=description, **plane_info)
    _log_measurement(Path(label).name, measured, skipped, stats)
    return measured, skipped, stats


def _log_measurement(name: str, measured: list[dict], skipped: list[dict], stats: Mapping) -> None:
    """One line on the plane, the flat field and the pairs of a slice; with debug, the plane scores and each
    pair's decision."""
    plane = "mean of the planes" if stats["z"] is None else f"z={stats['z']} ({stats.get('plane_mode')})"
    marked = sum(bool(p.get("background")) for p in measured)
    logger.info("%s: measured on plane %s, flat field %s: %d pairs (%d no better than chance), %d skipped",
                name, plane, stats["flatfield"], len(measured), marked, len(skipped))
    if stats.get("plane_scores"):
        logger.debug("%s: plane scores (overlap NCC, better half of the sampled pairs): %s", name,
                     ", ".join(f"z={z} {score:.3f}" for z, score in stats["plane_scores"].items()))
    for pair in measured:
        logger.debug("%s: pair %s %s: displacement (%.2f, %.2f) px, NCC %.3f, peak %.4f%s", name, pair["tile"],
                     "right" if pair["col_delta"] else "down", pair["measured_dy"], pair["measured_dx"], pair["ncc"],
                     pair["peak"], ", no better than chance" if pair.get("background") else "")
    for pair in skipped:
        logger.debug("%s: pair %s %s: skipped (%s)", name, pair["tile"], "right" if pair["col_delta"] else "down",
                     pair["reason"])


def measure_mosaic(grid, overlap_fraction: float, *, z: int | None = None, plane: str = DEFAULT_PLANE,
                   flatfield: str | Path | None = DEFAULT_FLATFIELD, **options) -> tuple[list, list, dict]:
    """Measure the pairs of an opened :class:`~linumpy_motor.io.grid.MosaicGrid` (see :func:`measure_volume`).

    The measured plane is read one tile row at a time; choosing it reads a few tiles through the
    depth, and the flat-field estimate a subset of tiles on a few planes. ``flatfield`` may also
    be the path of a ``.npy`` flat field, measured as a given array (the pairs record ``"given"``).
    ``options`` are passed to :func:`measure_grid_pairs`.
    """
    path = flatfield_file(flatfield)
    field = flatfield if path is None else load_flatfield(path, grid.tile_shape)
    return measure_volume(lambda zs, rows, cols: read_block(grid, zs, rows, cols), grid.tile_shape, grid.nx, grid.ny,
                          overlap_fraction, z=z, plane=plane, flatfield=field, label=str(grid.path), **options)
