"""Stitch one slice: flat-field correct, place tiles at sub-pixel ``A @ [i, j]``, blend, write a pyramid.

The output is produced block by block: a block is ``z_chunk`` planes by ``block_px x block_px``
pixels of the canvas (exactly one shard of the output, or four chunks of an unsharded store), and
uses only the tiles that touch it. Blocks run on a thread pool, strip by strip (a few block rows),
down one block column of the strip after the other. Tiles are read ``READ_RUN`` tile rows per zarr
call, flat-field corrected and resampled once, and kept from the first block of the strip that
needs them to the last, so each tile is decoded about once per Z chunk. The strip height is chosen
so that the tiles kept fit in ``TILE_CACHE_BYTES``: peak memory is a few blocks per worker plus
that, whatever the slice size. With input chunks deeper than ``z_chunk`` (e.g. one chunk per whole
tile), each Z chunk of the output decodes the tile chunks again: raise ``z_chunk`` (more memory per
block) to decode less.

Placement: the canvas pixel ``(Y, X)`` samples tile ``t`` at ``(Y, X) - p_t`` where ``p_t`` is the
tile's top-left from :func:`geometry.affine_positions` (so the canvas starts at the smallest
``A @ [i, j]``). The sample is a linear interpolation of the tile, carried out on ``w * tile / flat``
and on ``w`` alike, and the output is ``sum(w * tile / flat) / sum(w)``: the weights taper to 0 over
the sub-pixel border, and the division renormalises the interpolation there. The output is float32.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from . import __version__, geometry, ngff, outputs, pyramid
from .backend import get_backend, to_numpy
from .blend import BLENDING_MODES, overlap_px, weight_map
from .errors import InputError
from .flatfield import resolve_flatfield
from .io import MosaicGrid, open_mosaic, read_block
from .outputs import atomic_output

BLOCK_BYTES = 16 * 2**20  # float32 accumulator of one block (all workers hold a few of these)
TILE_CACHE_BYTES = 40 * 2**20  # resampled tiles kept alive between their first and last block
READ_RUN = 2  # tile rows read with one call
MAX_STRIP_BLOCKS = 8  # block rows per strip at most (see :func:`_block_order`)
MAX_WORKERS = 8
MAX_CANVAS_TO_TILES = 4.0  # a real layout's canvas is smaller than its tiles' total area


class _TileStore:
    """Runs of resampled tiles, each loaded for the first block that needs one of its tiles and dropped
    after the last.

    ``uses`` counts, for each key ``(run, z start, strip)``, the tile uses by blocks, each one a
    :meth:`get` then a :meth:`release`. A run being loaded by one thread is waited for, not loaded
    again, by another.
    """

    def __init__(self, load: Callable[[int, slice], list], uses: dict[tuple[int, int, int], int]) -> None:
        self.load = load
        self.remaining = dict(uses)
        self.runs: dict[tuple[int, int, int], Future] = {}
        self.lock = threading.Lock()

    def get(self, run: int, zs: slice, strip: int) -> list:
        """``load(run, zs)``, loaded once per strip while its blocks still need it."""
        key = (run, zs.start, strip)
        with self.lock:
            entry = self.runs.get(key)
            owner = entry is None
            if owner:
                entry = self.runs[key] = Future()
        if owner:
            try:
                entry.set_result(self.load(run, zs))
            except BaseException as exc:
                entry.set_exception(exc)
                raise
        return entry.result()

    def release(self, run: int, zs: slice, strip: int) -> None:
        """One block is done with one tile of ``run``; the strip's last use drops the run."""
        key = (run, zs.start, strip)
        with self.lock:
            self.remaining[key] -= 1
            if self.remaining[key] == 0:
                self.runs.pop(key, None)


class _Canvas:
    """Everything a block needs: the tiles' integer origins and sub-pixel fractions, and the gains.

    Tiles are read ``READ_RUN`` tile rows at a time (a run: one column of tiles, one zarr call), which
    spares most of zarr's per-call cost; blocks going down a column use the run's tiles soon after.
    """

    def __init__(self, grid: MosaicGrid, transform: np.ndarray, weights: np.ndarray, flat: np.ndarray | None,
                 overwrite: bool, xp) -> None:
        self.grid = grid
        positions = geometry.affine_positions(grid.nx, grid.ny, transform)
        self.origins = np.floor(positions).astype(np.int64)
        self.fractions = positions - self.origins
        self.overwrite = overwrite
        self.xp = xp
        gain = weights if flat is None else weights / flat
        self.gain = xp.asarray(gain.astype(np.float32))
        self.weights = xp.asarray(np.pad(weights, 1))
        rows, cols = np.divmod(np.arange(grid.nx * grid.ny), grid.ny)
        self.run_of = (rows // READ_RUN) * grid.ny + cols  # run index of each tile
        self.run_sizes = np.bincount(self.run_of)
        self.strip_px = 1
        self.store = _TileStore(self._resampled_run, {})

    def run_uses(self, regions: list[tuple[slice, slice, slice]],
                 strip_px: int) -> dict[tuple[int, int, int], list[int]]:
        """Per ``(run, z start, strip)``: the blocks among ``regions`` using that run's tiles, in order.

        Strips are ``strip_px`` canvas rows; a run is read once per strip that uses it.
        """
        uses: dict[tuple[int, int, int], list[int]] = {}
        for k, (zs, ys, xs) in enumerate(regions):
            for t in self.tiles_touching(ys, xs).tolist():
                uses.setdefault((int(self.run_of[t]), zs.start, ys.start // strip_px), []).append(k)
        return uses

    def plan(self, regions: list[tuple[slice, slice, slice]], strip_px: int) -> None:
        """Get ready to render each of ``regions`` once, strips of ``strip_px`` rows one after the other."""
        self.strip_px = strip_px
        uses = self.run_uses(regions, strip_px)
        self.store = _TileStore(self._resampled_run, {key: len(blocks) for key, blocks in uses.items()})

    def _resampled_run(self, run: int, zs: slice) -> list:
        """The tiles of ``run``, planes ``zs``, each times its gain (weights / flat field), linearly
        resampled at its sub-pixel offset onto its ``h + 1`` by ``w + 1`` footprint, with its
        resampled weights."""
        _, h, w = self.grid.tile_shape
        i0, j = divmod(run, self.grid.ny)
        i0 *= READ_RUN
        i1 = min(i0 + READ_RUN, self.grid.nx)
        raw = self.xp.asarray(read_block(self.grid, zs, slice(i0 * h, i1 * h), slice(j * w, (j + 1) * w)))
        gain = self.gain if self.gain.ndim == 2 else self.gain[zs]
        tiles = []
        for i in range(i0, i1):
            padded = self.xp.zeros((raw.shape[0], h + 2, w + 2), dtype=self.xp.float32)
            self.xp.multiply(raw[:, (i - i0) * h:(i - i0 + 1) * h], gain, out=padded[:, 1:-1, 1:-1])
            fy, fx = self.fractions[i * self.grid.ny + j].tolist()
            tiles.append((_lerp(padded, fy, fx), _lerp(self.weights, fy, fx)))
        return tiles

    def tiles_touching(self, ys: slice, xs: slice) -> np.ndarray:
        """Indices (row-major) of the tiles whose footprint ``h + 1`` by ``w + 1`` meets the region."""
        _, h, w = self.grid.tile_shape
        oy, ox = self.origins[:, 0], self.origins[:, 1]
        return np.nonzero((oy < ys.stop) & (oy + h + 1 > ys.start) & (ox < xs.stop) & (ox + w + 1 > xs.start))[0]

    def render(self, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        """The blended output over one region ``(z, y, x)`` of the canvas (one of :meth:`plan`'s), float32."""
        xp = self.xp
        _, h, w = self.grid.tile_shape
        num = xp.zeros((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), dtype=xp.float32)
        den = xp.zeros(num.shape[1:], dtype=xp.float32)
        for t in self.tiles_touching(ys, xs).tolist():
            oy, ox = self.origins[t].tolist()
            r0, r1 = max(ys.start, oy), min(ys.stop, oy + h + 1)
            c0, c1 = max(xs.start, ox), min(xs.stop, ox + w + 1)
            run = int(self.run_of[t])
            strip = ys.start // self.strip_px
            resampled, resampled_weights = self.store.get(run, zs, strip)[t // self.grid.ny % READ_RUN]
            values = resampled[:, r0 - oy:r1 - oy, c0 - ox:c1 - ox]
            weights = resampled_weights[r0 - oy:r1 - oy, c0 - ox:c1 - ox]
            rows, cols = slice(r0 - ys.start, r1 - ys.start), slice(c0 - xs.start, c1 - xs.start)
            if self.overwrite:
                covered = weights > 0
                num[:, rows, cols] = xp.where(covered, values, num[:, rows, cols])
                den[rows, cols] = xp.where(covered, weights, den[rows, cols])
            else:
                num[:, rows, cols] += values
                den[rows, cols] += weights
            self.store.release(run, zs, strip)
        den[den == 0] = 1  # uncovered: num is 0 there too
        num /= den
        return to_numpy(num)


def _lerp(padded, fy: float, fx: float):
    """Linear interpolation at ``k - fy, l - fx`` of a source padded with one leading row and column.

    ``padded[..., m, n]`` holds source row ``m - 1`` and column ``n - 1``; the result has one row and
    one column less and holds the samples for rows ``0 ..`` and columns ``0 ..``:
    ``(1 - f) * a[m + 1] + f * a[m]``, computed in place as ``a[m + 1] + f * (a[m] - a[m + 1])``.
    """
    rows = padded[..., :-1, :] - padded[..., 1:, :]
    rows *= fy
    rows += padded[..., 1:, :]
    out = rows[..., :-1] - rows[..., 1:]
    out *= fx
    out += rows[..., 1:]
    return out


def check_output(source: Path, output: Path) -> None:
    """Refuse an output that is, holds or lies inside the input store, or that this program may not
    replace (:mod:`linumpy_motor.outputs`).

    Raises
    ------
    InputError
    """
    outputs.check_outside(output, source)
    outputs.check_replaceable(output)


def check_canvas(grid: MosaicGrid, A: np.ndarray) -> None:
    """Refuse a transform whose canvas is far larger than the tiles could fill (before allocating it).

    Raises
    ------
    InputError
        The canvas is over ``MAX_CANVAS_TO_TILES`` times the tiles' total area (no file named:
        callers that read the transform from a file name it).
    """
    corners = np.array([[0, 0], [0, grid.ny - 1], [grid.nx - 1, 0], [grid.nx - 1, grid.ny - 1]], float) @ A.T
    _, h, w = grid.tile_shape
    height, width = np.ptp(corners, axis=0) + (h, w)
    ratio = float(height * width) / (grid.nx * grid.ny * h * w)
    if ratio > MAX_CANVAS_TO_TILES:
        raise InputError(None, f"transform {A.tolist()} spreads the {grid.nx}x{grid.ny} tiles over a "
                               f"{height:.0f}x{width:.0f} px canvas, {ratio:.3g} times their area (is it this "
                               f"acquisition's motor matrix, in px per tile step?)")


def _check_transform(transform) -> np.ndarray:
    A = np.asarray(transform, dtype=float)
    if A.shape != (2, 2) or not np.isfinite(A).all() or abs(np.linalg.det(A)) < 1e-9:
        raise InputError(None, f"transform must be a finite, invertible 2x2 matrix, got {A.tolist()}")
    return A


def default_z_chunk(grid: MosaicGrid, block_px: int) -> int:
    """Planes per block: the input's Z chunk, capped so one block accumulator stays ~``BLOCK_BYTES``."""
    budget = max(1, BLOCK_BYTES // (4 * block_px * block_px))
    return int(min(grid.tile_shape[0], grid.array.chunks[0], budget))


def _workers() -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cores, MAX_WORKERS))


def _peak_live_tiles(canvas: _Canvas, regions: list[tuple[slice, slice, slice]], strip_px: int) -> int:
    """Most tiles held at once when ``regions`` are rendered in order, each run of tiles from its
    first block to its last in a strip."""
    alive = np.zeros(len(regions) + 1, dtype=np.int64)
    for (run, _, _), blocks in canvas.run_uses(regions, strip_px).items():
        alive[blocks[0]] += canvas.run_sizes[run]
        alive[blocks[-1] + 1] -= canvas.run_sizes[run]
    return int(np.cumsum(alive).max(initial=0))


def _block_order(canvas: _Canvas, shape: tuple[int, int, int],
                 block: tuple[int, int, int]) -> tuple[list[tuple[slice, slice, slice]], int]:
    """The order blocks are rendered in, and the strip height in px: Z chunk by Z chunk, then strip
    by strip (``n`` block rows), down one block column of the strip after the other.

    A tile is read once per strip it meets (the block columns of a strip reuse it), so tall strips
    read less; ``n`` is the largest (at most ``MAX_STRIP_BLOCKS``) whose tiles alive at once fit in
    ``TILE_CACHE_BYTES``, which bounds memory whatever the slice size.
    """
    _, h, w = canvas.grid.tile_shape
    tile_bytes = 4 * (block[0] + 1) * (h + 1) * (w + 1)
    regions = list(pyramid.iter_blocks(shape, block))
    strip_blocks = MAX_STRIP_BLOCKS
    while True:
        strip = strip_blocks * block[1]
        order = sorted(regions, key=lambda r: (r[0].start, r[1].start // strip, r[2].start, r[1].start))
        first_chunk = [r for r in order if r[0].start == 0]
        if strip_blocks == 1 or _peak_live_tiles(canvas, first_chunk, strip) * tile_bytes <= TILE_CACHE_BYTES:
            return order, strip
        strip_blocks //= 2


def _write_pyramid(group, canvas: _Canvas, shapes: list[tuple[int, int, int]], block: tuple[int, int, int], *,
                   sharded: bool, workers: int, progress: bool, label: str) -> None:
    """Render level 0 block by block on a thread pool, then the downsampled levels.

    Level 1 is downsampled from each rendered block while it is in memory; its chunks are the
    half-size blocks, unsharded (a level-1 shard would gather four blocks written concurrently).
    Levels 2 and up are built from level 1.
    """
    chunks = (block[0], block[1] // 2, block[2] // 2)
    shards = block if sharded else None
    total = sum(len(list(pyramid.iter_blocks(s, block))) for s in shapes[:1] + shapes[2:])
    level0 = pyramid.create_level(group, "0", shapes[0], chunks, shards)
    level1 = pyramid.create_level(group, "1", shapes[1], chunks) if len(shapes) > 1 else None

    def work(region: tuple[slice, slice, slice]) -> None:
        out = canvas.render(*region)
        level0[region] = out
        if level1 is not None:
            z, y, x = region
            level1[z, y.start // 2:(y.stop + 1) // 2, x.start // 2:(x.stop + 1) // 2] = pyramid.downsample_mean(out)

    with (ThreadPoolExecutor(workers) as pool,
          tqdm(total=total, disable=not progress, file=sys.stderr, unit="block", desc=label) as bar):
        try:
            order, strip_px = _block_order(canvas, shapes[0], block)
            canvas.plan(order, strip_px)
            futures: list[Future] = [pool.submit(work, region) for region in order]
            for future in futures:
                future.result()
                bar.update()
            pyramid.write_levels(group, shapes, chunks=chunks, shards=shards, block=block, executor=pool,
                                 on_block_done=bar.update, first=2)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def stitch_slice(
    source: str | Path | MosaicGrid,
    output: str | Path,
    transform: np.ndarray,
    *,
    blending: str = "feather",
    flatfield: str | Path | None = "estimate",
    ngff_version: str = "0.5",
    z_chunk: int | None = None,
    block_px: int = 512,
    use_gpu: bool = False,
    progress: bool = False,
    pyramid_top_px: int = 512,
    workers: int | None = None,
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
        How overlaps are combined (see :mod:`linumpy_motor.blend`).
    flatfield : str, Path or None
        ``"estimate"`` (from the slice's tissue tiles), ``"none"``, or a ``.npy`` flat field
        ``(h, w)`` or ``(Z, h, w)``.
    ngff_version : {"0.4", "0.5"}
        0.5: zarr v3, one shard per block (level 1 unsharded, see :func:`_write_pyramid`);
        0.4: zarr v2.
    z_chunk : int, optional
        Z planes per block and per output chunk (default: :func:`default_z_chunk`).
    block_px : int
        Y and X size of a block (even, >= 32); output chunks are ``block_px // 2``.
    use_gpu : bool
        Accumulate with CuPy when a CUDA device is usable (same code path), else NumPy.
    progress : bool
        Show a progress bar on stderr.
    pyramid_top_px : int
        Halve Y and X until the smallest level fits in this many pixels.
    workers : int, optional
        Threads (default: the usable cores, at most ``MAX_WORKERS``).

    Returns
    -------
    dict
        ``output``, ``shape`` (level 0, z/y/x), ``levels`` (shapes), ``seconds``, ``backend``,
        ``blending``, ``flatfield``, ``ngff_version``, ``chunks``, ``dtype``.

    Raises
    ------
    InputError
        Unreadable or corrupt input, a bad transform or flat field, or an output that would
        overwrite the input.
    ValueError
        An unknown blending mode or NGFF version, or a bad ``block_px`` / ``z_chunk``.
    """
    start = time.perf_counter()
    if blending not in BLENDING_MODES:
        raise ValueError(f"unknown blending mode {blending!r}; use one of {BLENDING_MODES}")
    if ngff_version not in ngff.NGFF_VERSIONS:
        raise ValueError(f"unsupported NGFF version {ngff_version!r}; use one of {ngff.NGFF_VERSIONS}")
    if block_px < 32 or block_px % 2:
        raise ValueError(f"block_px must be an even number >= 32, got {block_px}")
    grid = source if isinstance(source, MosaicGrid) else open_mosaic(source)
    output = Path(output)
    check_output(grid.path, output)
    A = _check_transform(transform)
    check_canvas(grid, A)
    nz, h, w = grid.tile_shape
    zc = int(z_chunk) if z_chunk is not None else default_z_chunk(grid, block_px)
    if zc < 1:
        raise ValueError(f"z_chunk must be >= 1, got {zc}")
    zc = min(zc, nz)
    xp, _, backend = get_backend(use_gpu)
    shapes = pyramid.level_shapes(geometry.output_shape(grid.nx, grid.ny, grid.tile_shape, A), pyramid_top_px)
    block = (zc, block_px, block_px)
    with atomic_output(output, "stitch") as tmp:
        flat, flat_description = resolve_flatfield(grid, flatfield)
        canvas = _Canvas(grid, A, weight_map((h, w), blending, overlap_px(A, (h, w))), flat, blending == "none", xp)
        group = ngff.create_group(tmp, ngff_version)
        _write_pyramid(group, canvas, shapes, block, sharded=ngff_version == "0.5", workers=workers or _workers(),
                       progress=progress, label=output.name)
        metadata = {
            "stage": "stitch", "version": __version__, "source": str(grid.path), "transform": A.tolist(),
            "canvas_origin": (geometry.grid_indices(grid.nx, grid.ny) @ A.T).min(axis=0).tolist(),
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
        "dtype": "float32",
    }
