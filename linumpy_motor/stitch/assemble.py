"""Stitch one slice: flat-field correct, place tiles at sub-pixel ``A @ [i, j]``, blend, write a pyramid.

The output is produced block by block: a block is ``z_chunk`` planes by ``block_px x block_px``
pixels of the canvas (exactly one shard of the output, or four chunks of an unsharded store), and
uses only the tiles that touch it. Blocks run on a pool of ``threads`` threads.

Decoding: a tile is decoded with all the planes of its input chunk (a *load*: ``R`` tiles of one
tile column in one zarr call, ``R`` = 2 for tiles under ``READ_RUN_BYTES``, else 1; gain-multiplied
and zero-padded) by the first block that needs it and kept until the last; every block then
resamples just its own window of the tile. Blocks are ordered Z load by Z load, strip by strip
(``k`` block rows, or block columns when that decodes less), one block across the strip after the
other, and all the block's Z chunks in a row, so a load is alive over about three block columns of
one strip. With one strip over the whole slice every input chunk is decoded exactly once, whatever
its depth (one chunk per whole tile included); when that would hold more than ``cache_bytes`` the
strips are cut shorter and the tiles straddling a strip boundary are decoded once per strip they
meet (about ``1 + h / S`` decodes per chunk for strips ``S`` px high and tiles ``h`` px high). The
summary reports the plan's ``decode_factor``.

Peak memory, whatever the slice size (``T`` = one tile of one load as float32,
``zl * (h + 2) * (w + 2) * 4`` bytes, ``zl`` the planes of the input chunk, ``b`` = ``block_px``,
``zc`` = ``z_chunk``, ``W`` = ``threads``)::

    peak ≈ max(cache_bytes, L1 * T) + W * (R * T + 6 * zc * (b + 2)**2 * 4) + interpreter

where ``L1 ≤ R * (ceil(b / step_y) + 2) * (ceil(b / step_x) + 2 + W)`` is what a one-block strip
needs (``step`` = the tile pitch in px): the tiles meeting the strip over the block being drawn,
the next ``W`` ones and their neighbours. The second term is each thread's read buffer and its block
accumulators, resampling temporaries and level-1 output. Nothing in it grows with the slice.

Placement: the canvas pixel ``(Y, X)`` samples tile ``t`` at ``(Y, X) - p_t`` where ``p_t`` is the
tile's top-left (the model's ``A @ [i, j]`` or given positions, shifted so the canvas starts at the
smallest). The sample is a linear interpolation of the tile, carried out on ``w * tile / flat`` and on ``w``
alike, and the output is ``sum(w * tile / flat) / sum(w)``: the weights taper to 0 over the
sub-pixel border, and the division renormalises the interpolation there. The output is float32.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from linumpy_motor import __version__
from linumpy_motor.backend import get_backend, to_numpy
from linumpy_motor.errors import InputError, check_choice
from linumpy_motor.io import ngff, outputs
from linumpy_motor.io.grid import MosaicGrid, open_mosaic, read_block
from linumpy_motor.io.outputs import atomic_output
from linumpy_motor.io.schemas import check_transform
from linumpy_motor.memory import check_memory
from linumpy_motor.parallel import limited_threads, resolve_threads
from linumpy_motor.register import geometry
from linumpy_motor.register.flatfield import DEFAULT_FLATFIELD, READ_THREADS, flatfield_file, resolve_flatfield
from linumpy_motor.stitch import pyramid
from linumpy_motor.stitch.blend import BLENDING_MODES, DEFAULT_BLENDING, overlap_px, weight_map

__all__ = ["BLOCK_BYTES", "BLOCK_PX", "CACHE_BYTES", "MAX_CANVAS_TO_TILES", "MIN_BLOCK_PX", "READ_RUN_BYTES",
           "LoadKey", "ProgressCallback", "Region", "check_canvas", "default_z_chunk", "peak_bytes", "stitch_slice"]

BLOCK_PX = 512  # default Y and X size of a block (one output shard)
BLOCK_BYTES = 16 * 2**20  # float32 accumulator of one block (each thread holds a few of these)
MIN_BLOCK_PX = 32  # smallest block side: output chunks are half a block
CACHE_BYTES = 512 * 2**20  # decoded tiles kept alive between their first and last block (see the module doc)
READ_RUN_BYTES = 4 * 2**20  # tiles of a load smaller than this are read two tile rows per zarr call
MAX_CANVAS_TO_TILES = 4.0  # a real layout's canvas is smaller than its tiles' total area

Region = tuple[slice, slice, slice]
LoadKey = tuple[int, int, int, int]  # (run, first plane, last plane + 1, strip)
ProgressCallback = Callable[[int, int], None]


class _LoadCache:
    """Loads of tiles, each made by the first block that needs one of its tiles and dropped after the
    last.

    ``uses`` counts, for each :data:`LoadKey`, the tile uses by blocks, each one a :meth:`get` then a
    :meth:`release`. A load being made by one thread is waited for, not made again, by another;
    :meth:`fetch` lets threads that need the same new loads share them out instead of waiting.
    """

    def __init__(self, load: Callable[[int, int, int], list], uses: dict[LoadKey, int]) -> None:
        self.load = load
        self.remaining = dict(uses)
        self.loads: dict[LoadKey, Future] = {}
        self.lock = threading.Lock()

    def _claim(self, key: LoadKey) -> Future | None:
        """A new future for ``key`` that this thread must fill, or None when the load is already made
        or under way."""
        with self.lock:
            if key in self.loads:
                return None
            entry = self.loads[key] = Future()
            return entry

    def _fill(self, key: LoadKey, entry: Future) -> None:
        try:
            entry.set_result(self.load(*key[:3]))
        except BaseException as exc:
            entry.set_exception(exc)
            raise

    def fetch(self, keys: list[LoadKey]) -> None:
        """Make, one after the other, each of ``keys`` that no thread has started (without waiting for
        those under way): two blocks needing the same new tiles decode them in parallel."""
        for key in keys:
            entry = self._claim(key)
            if entry is not None:
                self._fill(key, entry)

    def get(self, key: LoadKey) -> list:
        """The padded tiles of ``key``, loaded at most once while its blocks still need them."""
        entry = self._claim(key)
        if entry is not None:
            self._fill(key, entry)
        with self.lock:
            entry = self.loads[key]
        return entry.result()

    def release(self, key: LoadKey) -> None:
        """One block is done with one tile of ``key``; the last use drops the load."""
        with self.lock:
            self.remaining[key] -= 1
            if self.remaining[key] == 0:
                self.loads.pop(key, None)


class _Canvas:
    """Everything a block needs: the tiles' integer origins and sub-pixel fractions, the gains, the loads.

    Small tiles are read two tile rows at a time (a run: one column of tiles, one zarr call), which
    spares most of zarr's per-call cost; tiles of ``READ_RUN_BYTES`` or more one at a time (a run of
    two would be decoded again by each strip that needs only one of its tiles).
    """

    def __init__(self, grid: MosaicGrid, positions: np.ndarray, weights: np.ndarray, flat: np.ndarray | None,
                 overwrite: bool, xp) -> None:
        self.grid = grid
        self.origins = np.floor(positions).astype(np.int64)
        self.fractions = positions - self.origins
        self.overwrite = overwrite
        self.xp = xp
        gain = weights if flat is None else weights / flat
        self.gain = xp.asarray(gain.astype(np.float32))
        self.weights = xp.asarray(np.pad(weights, 1))
        self.z_load = max(1, int(grid.array.chunks[0]))  # planes decoded together
        _, h, w = grid.tile_shape
        self.read_run = 2 if 4 * self.z_load * h * w < READ_RUN_BYTES else 1
        rows, cols = np.divmod(np.arange(grid.nx * grid.ny), grid.ny)
        self.run_of = (rows // self.read_run) * grid.ny + cols  # run index of each tile
        self.run_sizes = np.bincount(self.run_of)
        self.strip_px = 1
        self.vertical = False
        self.cache = _LoadCache(self._load, {})

    def load_planes(self, zs: slice) -> tuple[int, int]:
        """Planes ``[z0, z1)`` of the whole input chunks that hold ``zs``."""
        zl, nz = self.z_load, self.grid.tile_shape[0]
        return zs.start // zl * zl, min(-(-zs.stop // zl) * zl, nz)

    def load_bytes(self, key: LoadKey) -> int:
        """Bytes held by one load."""
        _, h, w = self.grid.tile_shape
        return int(self.run_sizes[key[0]]) * (key[2] - key[1]) * (h + 2) * (w + 2) * 4

    def key(self, tile: int, region: Region) -> LoadKey:
        """The load holding ``tile`` for ``region``."""
        zs, ys, xs = region
        along = xs if self.vertical else ys
        return (int(self.run_of[tile]), *self.load_planes(zs), along.start // self.strip_px)

    def uses(self, regions: list[Region]) -> dict[LoadKey, list[int]]:
        """Per load: the blocks among ``regions`` using one of its tiles, in order (once per tile)."""
        uses: dict[LoadKey, list[int]] = {}
        for k, region in enumerate(regions):
            for t in self.tiles_touching(region[1], region[2]).tolist():
                uses.setdefault(self.key(t, region), []).append(k)
        return uses

    def plan(self, regions: list[Region], strip_px: int, vertical: bool) -> None:
        """Get ready to render each of ``regions`` once, in this order, in strips of ``strip_px``."""
        self.strip_px, self.vertical = strip_px, vertical
        self.cache = _LoadCache(self._load, {key: len(blocks) for key, blocks in self.uses(regions).items()})

    def _load(self, run: int, z0: int, z1: int) -> list:
        """The tiles of ``run``, planes ``[z0, z1)``, each times its gain (weights / flat field) and padded
        with one zero row and column on every side."""
        xp = self.xp
        _, h, w = self.grid.tile_shape
        i0, j = divmod(run, self.grid.ny)
        i0 *= self.read_run
        i1 = min(i0 + self.read_run, self.grid.nx)
        raw = xp.asarray(read_block(self.grid, slice(z0, z1), slice(i0 * h, i1 * h), slice(j * w, (j + 1) * w)))
        gain = self.gain if self.gain.ndim == 2 else self.gain[z0:z1]
        tiles = []
        for i in range(i0, i1):
            padded = xp.empty((z1 - z0, h + 2, w + 2), dtype=xp.float32)
            padded[:, [0, -1], :] = 0
            padded[:, :, [0, -1]] = 0
            xp.multiply(raw[:, (i - i0) * h:(i - i0 + 1) * h], gain, out=padded[:, 1:-1, 1:-1])
            tiles.append(padded)
        return tiles

    def tiles_touching(self, ys: slice, xs: slice) -> np.ndarray:
        """Indices (row-major) of the tiles whose footprint ``h + 1`` by ``w + 1`` meets the region."""
        _, h, w = self.grid.tile_shape
        oy, ox = self.origins[:, 0], self.origins[:, 1]
        return np.nonzero((oy < ys.stop) & (oy + h + 1 > ys.start) & (ox < xs.stop) & (ox + w + 1 > xs.start))[0]

    def render(self, zs: slice, ys: slice, xs: slice):
        """The blended output over one region ``(z, y, x)`` of the canvas (one of :meth:`plan`'s), float32,
        as an array of the backend."""
        xp = self.xp
        _, h, w = self.grid.tile_shape
        num = xp.zeros((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), dtype=xp.float32)
        den = xp.zeros(num.shape[1:], dtype=xp.float32)
        tiles = self.tiles_touching(ys, xs).tolist()
        self.cache.fetch(list(dict.fromkeys(self.key(t, (zs, ys, xs)) for t in tiles)))
        for t in tiles:
            oy, ox = self.origins[t].tolist()
            fy, fx = self.fractions[t].tolist()
            r0, r1 = max(ys.start, oy), min(ys.stop, oy + h + 1)
            c0, c1 = max(xs.start, ox), min(xs.stop, ox + w + 1)
            key = self.key(t, (zs, ys, xs))
            padded = self.cache.get(key)[t // self.grid.ny % self.read_run]
            # footprint rows r0 - oy .. r1 - oy need padded rows r0 - oy .. r1 - oy + 1 (see _lerp)
            rows, cols = slice(r0 - oy, r1 - oy + 1), slice(c0 - ox, c1 - ox + 1)
            values = _lerp(padded[zs.start - key[1]:zs.stop - key[1], rows, cols], fy, fx)
            weights = _lerp(self.weights[rows, cols], fy, fx)
            self.cache.release(key)
            out_rows, out_cols = slice(r0 - ys.start, r1 - ys.start), slice(c0 - xs.start, c1 - xs.start)
            if self.overwrite:
                covered = weights > 0
                num[:, out_rows, out_cols] = xp.where(covered, values, num[:, out_rows, out_cols])
                den[out_rows, out_cols] = xp.where(covered, weights, den[out_rows, out_cols])
            else:
                num[:, out_rows, out_cols] += values
                den[out_rows, out_cols] += weights
        den[den == 0] = 1  # uncovered: num is 0 there too
        num /= den
        return num


def _lerp(padded, fy: float, fx: float):
    """Linear interpolation at ``k - fy, l - fx`` of a source padded with one leading row and column.

    ``padded[..., m, n]`` holds source row ``m - 1`` and column ``n - 1``; the result has one row and
    one column less and holds the samples for rows ``0 ..`` and columns ``0 ..``:
    ``(1 - f) * a[m + 1] + f * a[m]``, computed as ``a[m + 1] + f * (a[m] - a[m + 1])``. Each output
    sample depends only on its own 2x2 neighbourhood, so a window of the padded tile gives exactly
    the matching window of the full result.
    """
    rows = padded[..., :-1, :] - padded[..., 1:, :]
    rows *= fy
    rows += padded[..., 1:, :]
    out = rows[..., :-1] - rows[..., 1:]
    out *= fx
    out += rows[..., 1:]
    return out


def _placed(grid: MosaicGrid, A: np.ndarray, positions: np.ndarray | None) -> np.ndarray:
    """Each tile's top-left, unshifted: ``positions`` when given (checked), else ``A @ [i, j]``."""
    if positions is None:
        return geometry.model_positions(grid.nx, grid.ny, A)
    positions = np.asarray(positions, dtype=float)
    if positions.shape != (grid.nx * grid.ny, 2) or not np.isfinite(positions).all():
        raise InputError(None, f"positions must be finite, one (row, col) per tile ({grid.nx * grid.ny}), "
                               f"got shape {positions.shape}")
    return positions


def check_canvas(grid: MosaicGrid, A: np.ndarray) -> None:
    """Refuse a transform whose canvas is far larger than the tiles could fill (before allocating it).

    Raises
    ------
    InputError
        The canvas is over ``MAX_CANVAS_TO_TILES`` times the tiles' total area (no file named:
        callers that read the transform from a file name it).
    """
    _, h, w = grid.tile_shape
    height, width = geometry.model_span(grid.nx, grid.ny, (h, w), A)
    ratio = float(height * width) / (grid.nx * grid.ny * h * w)
    if ratio > MAX_CANVAS_TO_TILES:
        raise InputError(None, f"transform {A.tolist()} spreads the {grid.nx}x{grid.ny} tiles over a "
                               f"{height:.0f}x{width:.0f} px canvas, {ratio:.3g} times their area (is it this "
                               f"acquisition's motor matrix, in px per tile step?)")


def peak_bytes(grid: MosaicGrid, A: np.ndarray, threads: int, z_chunk: int, *, cache_bytes: int = CACHE_BYTES,
               block_px: int = BLOCK_PX) -> int:
    """Estimated peak of data held while stitching a slice: the module docstring's formula, the interpreter
    left out, with the cache no larger than the whole slice decoded (checked before the stitch starts,
    :func:`~linumpy_motor.memory.check_memory`)."""
    nz, h, w = grid.tile_shape
    tile = min(nz, max(1, int(grid.array.chunks[0]))) * (h + 2) * (w + 2) * 4
    reads = 2 if tile < READ_RUN_BYTES else 1
    step_y, step_x = (max(1.0, step) for step in geometry.step_lengths(A))
    strip = reads * (int(np.ceil(block_px / step_y)) + 2) * (int(np.ceil(block_px / step_x)) + 2 + threads) * tile
    cache = min(cache_bytes, grid.nx * grid.ny * tile)
    return max(cache, strip) + threads * (reads * tile + 6 * z_chunk * (block_px + 2) ** 2 * 4)


def default_z_chunk(grid: MosaicGrid, block_px: int) -> int:
    """Planes per block: a block accumulator stays ~``BLOCK_BYTES``, and blocks never straddle an
    input chunk in Z (a divisor of the input's Z chunk when it is deeper, else a whole number of them)."""
    budget = max(1, BLOCK_BYTES // (4 * block_px * block_px))
    nz, zl = grid.tile_shape[0], max(1, int(grid.array.chunks[0]))
    if zl <= budget:
        return int(min(nz, budget // zl * zl))
    divisors = [d for d in range(budget, 0, -1) if zl % d == 0]
    return int(divisors[0] if divisors[0] * 2 > budget else budget)


def _peak_load_bytes(canvas: _Canvas, order: list[Region], workers: int) -> tuple[int, int]:
    """Most bytes of loads alive at once when ``order`` is rendered (each load from its first block to
    its last, ``workers`` blocks ahead), and the bytes decoded in all."""
    alive = np.zeros(len(order) + workers + 1, dtype=np.int64)
    decoded = 0
    for key, blocks in canvas.uses(order).items():
        size = canvas.load_bytes(key)
        alive[blocks[0]] += size
        alive[blocks[-1] + workers] -= size
        decoded += size
    return int(np.cumsum(alive).max(initial=0)), decoded


def _block_order(canvas: _Canvas, shape: tuple[int, int, int], block: tuple[int, int, int], cache_bytes: int,
                 workers: int) -> tuple[list[Region], int, bool]:
    """The order blocks are rendered in, the strip size in px and whether strips are block columns.

    Z load by Z load, strip by strip, one block across the strip after the other, all the Z chunks
    of a block in a row. For each orientation the strip is the largest number of block rows (or
    columns), up to the whole slice, whose loads alive at once fit in ``cache_bytes``; the
    orientation decoding less wins. Every Z load has the same plan: the choice looks at the first.
    """
    regions = list(pyramid.iter_blocks(shape, block))
    first_load = [r for r in regions if canvas.load_planes(r[0])[0] == 0]
    best = None
    for vertical in (False, True):
        along, across = (2, 1) if vertical else (1, 2)
        for strip_blocks in range(-(-shape[along] // block[along]), 0, -1):
            strip = strip_blocks * block[along]
            canvas.strip_px, canvas.vertical = strip, vertical

            def rank(region: Region, along=along, across=across, strip=strip):
                return (canvas.load_planes(region[0])[0], region[along].start // strip, region[across].start,
                        region[along].start, region[0].start)

            peak, decoded = _peak_load_bytes(canvas, sorted(first_load, key=rank), workers)
            if peak <= cache_bytes:
                break
        if best is None or (decoded, peak) < best[0]:
            best = ((decoded, peak), sorted(regions, key=rank), strip, vertical)
    assert best is not None  # the loop over both orientations always sets it
    return best[1], best[2], best[3]


def _write_pyramid(group, canvas: _Canvas, shapes: list[tuple[int, int, int]], block: tuple[int, int, int], *,
                   sharded: bool, threads: int, cache_bytes: int, progress: ProgressCallback | None) -> dict:
    """Render level 0 block by block on a thread pool, then the downsampled levels; return the plan's
    ``decode_factor`` (input chunks decoded per chunk) and ``cache_peak_bytes``.

    Level 1 is downsampled from each rendered block while it is in memory; its chunks are the
    half-size blocks, unsharded (a level-1 shard would gather four blocks written concurrently).
    Levels 2 and up are built from level 1.
    """
    chunks = (block[0], block[1] // 2, block[2] // 2)
    shards = block if sharded else None
    total = sum(len(list(pyramid.iter_blocks(s, block))) for s in shapes[:1] + shapes[2:])
    done = 0

    def step() -> None:
        nonlocal done
        done += 1
        if progress is not None:
            progress(done, total)

    level0 = pyramid.create_level(group, "0", shapes[0], chunks, shards)
    level1 = pyramid.create_level(group, "1", shapes[1], chunks) if len(shapes) > 1 else None

    def work(region: Region) -> None:
        out = canvas.render(*region)
        level0[region] = to_numpy(out)
        if level1 is not None:
            z, y, x = region
            level1[z, y.start // 2:(y.stop + 1) // 2, x.start // 2:(x.stop + 1) // 2] = to_numpy(
                pyramid.downsample_mean(out))

    with ThreadPoolExecutor(threads) as pool:
        try:
            order, strip_px, vertical = _block_order(canvas, shapes[0], block, cache_bytes, threads)
            canvas.plan(order, strip_px, vertical)
            peak, decoded = _peak_load_bytes(canvas, order, threads)
            if progress is not None:
                progress(0, total)
            futures: list[Future] = [pool.submit(work, region) for region in order]
            for future in futures:
                future.result()
                step()
            pyramid.write_levels(group, shapes, chunks=chunks, shards=shards, block=block, executor=pool,
                                 on_block_done=step, first=2)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    _, h, w = canvas.grid.tile_shape
    once = canvas.grid.nx * canvas.grid.ny * shapes[0][0] * (h + 2) * (w + 2) * 4
    return {"decode_factor": round(decoded / once, 3), "cache_peak_bytes": peak}


def stitch_slice(
    source: str | Path | MosaicGrid,
    output: str | Path,
    transform: np.ndarray,
    *,
    blending: str = DEFAULT_BLENDING,
    flatfield: str | Path | None = DEFAULT_FLATFIELD,
    ngff_version: str = ngff.DEFAULT_NGFF_VERSION,
    z_chunk: int | None = None,
    block_px: int = BLOCK_PX,
    use_gpu: bool = False,
    progress: ProgressCallback | None = None,
    pyramid_top_px: int = pyramid.TOP_PX,
    threads: int | None = None,
    cache_bytes: int = CACHE_BYTES,
    positions: np.ndarray | None = None,
) -> dict:
    """Stitch one slice's mosaic grid into an OME-Zarr image with a multiscale pyramid.

    Parameters
    ----------
    source : str, Path or MosaicGrid
        The slice's mosaic grid (NGFF 0.4 or 0.5; any supported dtype, complex as magnitude).
    output : str or Path
        The ``*.ome.zarr`` to write (atomically: a temporary sibling renamed on success).
    transform : np.ndarray
        The 2x2 motor matrix A; tile ``(i, j)`` goes to ``A @ [i, j]``.
    blending : {"none", "average", "feather", "diffusion"}
        How overlaps are combined (see :mod:`linumpy_motor.stitch.blend`).
    flatfield : str, Path or None
        ``"estimate"`` (from the slice's tissue tiles), ``"none"``, or a ``.npy`` flat field
        ``(h, w)`` or ``(Z, h, w)``.
    ngff_version : {"0.4", "0.5"}
        0.5: zarr v3, one shard per block (level 1 unsharded, see :func:`_write_pyramid`);
        0.4: zarr v2.
    z_chunk : int, optional
        Z planes per block and per output chunk (default: :func:`default_z_chunk`).
    block_px : int
        Y and X size of a block (even, at least :data:`MIN_BLOCK_PX`); output chunks are ``block_px // 2``.
    use_gpu : bool
        Resample, blend and downsample level 1 with CuPy when a CUDA device is usable (the decoded
        tiles are then cached in GPU memory; same code path), else NumPy with a warning.
    progress : callable, optional
        Called as ``progress(blocks done, blocks)`` once before the first block and after each output
        block (all levels), e.g. a :class:`~linumpy_motor.pipeline.logs.Progress`.
    pyramid_top_px : int
        Halve Y and X until the smallest level fits in this many pixels.
    threads : int, optional
        Threads rendering blocks (default: the cores this process may use,
        :func:`linumpy_motor.parallel.available_cores`); BLAS is held to one thread meanwhile
        (:func:`linumpy_motor.parallel.limited_threads`).
    cache_bytes : int
        Decoded tiles held at once (see the module docstring: with enough of it each input chunk is
        decoded once; peak memory is about this plus a few blocks per thread).
    positions : np.ndarray, optional
        ``(nx * ny, 2)`` top-left of each tile (row-major, any origin) overriding ``A @ [i, j]``:
        the model with its backlash term, or with each tile's registered residual
        (:func:`linumpy_motor.pipeline.steps.tile_positions`). ``transform`` still sizes the overlaps.

    Returns
    -------
    dict
        ``output``, ``shape`` (level 0, z/y/x), ``levels`` (shapes), ``seconds``, ``backend``,
        ``blending``, ``flatfield``, ``ngff_version``, ``chunks``, ``dtype``, ``threads``,
        ``decode_factor`` (input bytes decoded over the input, 1.0 = each chunk once; the flat-field
        estimate's reads not counted) and ``cache_peak_bytes`` (planned decoded tiles held at once).

    Raises
    ------
    InputError
        Unreadable or corrupt input, a bad transform or flat field, or an output that would
        overwrite the input.
    InputError
        An unknown blending mode or NGFF version, or a bad ``block_px`` / ``z_chunk``.
    """
    start = time.perf_counter()
    check_choice("blending mode", blending, BLENDING_MODES)
    ngff.check_version(ngff_version)
    if block_px < MIN_BLOCK_PX or block_px % 2:
        raise InputError(None, f"block_px must be an even number >= {MIN_BLOCK_PX}, got {block_px}")
    grid = source if isinstance(source, MosaicGrid) else open_mosaic(source)
    output = Path(output)
    outputs.check_output(output, grid.path, *filter(None, [flatfield_file(flatfield)]), stage="stitch")
    A = check_transform(transform)
    check_canvas(grid, A)
    nz, h, w = grid.tile_shape
    zc = int(z_chunk) if z_chunk is not None else default_z_chunk(grid, block_px)
    if zc < 1:
        raise InputError(None, f"z_chunk must be >= 1, got {zc}")
    zc = min(zc, nz)
    threads = resolve_threads(threads)
    check_memory("stitch", grid.path, peak_bytes(grid, A, threads, zc, cache_bytes=cache_bytes, block_px=block_px),
                 threads + READ_THREADS)
    xp, _, backend = get_backend(use_gpu)
    placed = _placed(grid, A, positions)
    shapes = pyramid.level_shapes(geometry.extent_shape(placed, grid.tile_shape), pyramid_top_px)
    block = (zc, block_px, block_px)
    with atomic_output(output, "stitch") as tmp, limited_threads(threads):
        flat, flat_description = resolve_flatfield(grid, flatfield)
        canvas = _Canvas(grid, placed - placed.min(axis=0), weight_map((h, w), blending, overlap_px(A, (h, w))),
                         flat, blending == "none", xp)
        group = ngff.create_group(tmp, ngff_version)
        plan = _write_pyramid(group, canvas, shapes, block, sharded=group.metadata.zarr_format == 3, threads=threads,
                              cache_bytes=cache_bytes, progress=progress)
        metadata = {
            "stage": "stitch", "version": __version__, "source": str(grid.path), "transform": A.tolist(),
            "canvas_origin": placed.min(axis=0).tolist(), "positions": placed.tolist(),
            "blending": blending, "flatfield": flat_description, "interpolation": "linear", "dtype": "float32",
            "tile_shape": [nz, h, w], "grid": [grid.nx, grid.ny], "backend": backend,
        }
        multiscale = ngff.multiscales(pyramid.level_scales(grid.scale, len(shapes)), grid.units, ngff_version,
                                      name=output.name.removesuffix(".ome.zarr"))
        group.attrs.update(ngff.root_attributes(multiscale, ngff_version, {"linumpy_motor": metadata}))
    return {
        "output": str(output), "shape": list(shapes[0]), "levels": [list(s) for s in shapes],
        "seconds": round(time.perf_counter() - start, 3), "backend": backend, "blending": blending,
        "flatfield": flat_description, "ngff_version": ngff_version, "chunks": [zc, block_px // 2, block_px // 2],
        "dtype": "float32", "threads": threads, **plan,
    }
