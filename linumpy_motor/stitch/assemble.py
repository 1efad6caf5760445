"""Stitch one slice: flat-field correct, place tiles at sub-pixel ``A @ [i, j]``, blend, write a pyramid.

The output is produced block by block: a block is ``z_chunk`` planes by ``block_px x block_px``
pixels of the canvas (exactly one shard of the output, or four chunks of an unsharded store), and
uses only the tiles that touch it.

The work is split in three parts: a *plan* (:class:`StitchPlan`, a value made by the pure
:func:`plan_stitch` from a :class:`Layout`: which tiles meet which block, from which loads, in which
order, in which strips), the *reading* (:class:`_TileReader` decodes a load, :class:`_LoadCache`
keeps it from its first block to its last) and the *numerics* (:func:`render_block`, :func:`_lerp`,
:func:`~linumpy_motor.stitch.pyramid.downsample_mean`). Decoding, rendering and encoding run as
three overlapping stages, each on ``threads`` threads, over a window of ``2 * threads`` blocks
(:func:`_write_pyramid`), so every core has work while the others wait on zarr.

Decoding: a tile is decoded with all the planes of its input chunk (a *load*: ``R`` tiles of one
tile column in one zarr call, ``R`` = 2 for tiles under ``READ_RUN_BYTES``, else 1, straight into
its zero-padded buffer, then gain-multiplied) when the first block that needs it enters the window,
and kept until the last; its buffers then take the next load. Every block resamples just its own
window of the tile, ``LERP_BYTES`` of planes at a time. Blocks are ordered Z load by Z load,
strip by strip (``k`` block rows, or block columns when that decodes less), one block across the
strip after the other, and all the block's Z chunks in a row, so a load is alive over about three
block columns of one strip. With one strip over the whole slice every input chunk is decoded
exactly once, whatever its depth (one chunk per whole tile included); when that would hold more
than ``cache_bytes`` the strips are cut shorter and the tiles straddling a strip boundary are
decoded once per strip they meet (about ``1 + h / S`` decodes per chunk for strips ``S`` px high
and tiles ``h`` px high). The summary reports the plan's ``decode_factor``.

Peak memory, whatever the slice size (``T`` = one tile of one load as float32,
``zl * (h + 2) * (w + 2) * 4`` bytes, ``zl`` the planes of the input chunk, ``b`` = ``block_px``,
``zc`` = ``z_chunk``, ``W`` = ``threads``)::

    peak ≈ max(cache_bytes, L1 * T) + W * (R * T + 6 * zc * (b + 2)**2 * 4) + 2 * W * 1.25 * zc * b**2 * 4
           + interpreter

where ``L1 ≤ R * (ceil(b / step_y) + 2) * (ceil(b / step_x) + 2 + 2 * W)`` is what a one-block strip
needs (``step`` = the tile pitch in px): the tiles meeting the strip over the block being drawn,
the next ``2 * W`` ones and their neighbours. The second term is each thread's read buffer and its
block accumulators and resampling temporaries, the third the rendered blocks (and their level 1)
waiting to be encoded. Nothing in it grows with the slice.

Placement: the canvas pixel ``(Y, X)`` samples tile ``t`` at ``(Y, X) - p_t`` where ``p_t`` is the
tile's top-left (the model's ``A @ [i, j]`` or given positions, shifted so the canvas starts at the
smallest). The sample is a linear interpolation of the tile, carried out on ``w * tile / flat`` and on ``w``
alike, and the output is ``sum(w * tile / flat) / sum(w)``: the weights taper to 0 over the
sub-pixel border, and the division renormalises the interpolation there. The output is float32.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, InvalidStateError, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np

from linumpy_motor import __version__
from linumpy_motor.backend import array_backend, to_numpy
from linumpy_motor.errors import InputError, check_choice
from linumpy_motor.io import ngff, outputs
from linumpy_motor.io.grid import MosaicGrid, open_mosaic, read_block
from linumpy_motor.io.outputs import atomic_output
from linumpy_motor.io.schemas import check_transform
from linumpy_motor.memory import check_memory
from linumpy_motor.parallel import blas_on_one_thread, resolve_threads
from linumpy_motor.register import geometry
from linumpy_motor.register.flatfield import DEFAULT_FLATFIELD, READ_THREADS, flatfield_file, resolve_flatfield
from linumpy_motor.stitch import pyramid
from linumpy_motor.stitch.blend import BLENDING_MODES, DEFAULT_BLENDING, overlap_px, weight_map

__all__ = ["BLOCK_BYTES", "BLOCK_PX", "CACHE_BYTES", "LERP_BYTES", "MAX_CANVAS_TO_TILES", "MIN_BLOCK_PX",
           "READ_RUN_BYTES", "BlockPlan", "Layout", "LoadKey", "ProgressCallback", "Region", "StitchPlan",
           "check_canvas", "default_z_chunk", "lookahead_blocks", "make_layout", "peak_bytes", "plan_stitch",
           "render_block", "stitch_slice"]

BLOCK_PX = 512  # default Y and X size of a block (one output shard)
BLOCK_BYTES = 16 * 2**20  # float32 accumulator of one block (each thread holds a few of these)
MIN_BLOCK_PX = 32  # smallest block side: output chunks are half a block
CACHE_BYTES = 512 * 2**20  # decoded tiles kept alive between their first and last block (see the module doc)
READ_RUN_BYTES = 4 * 2**20  # tiles of a load smaller than this are read two tile rows per zarr call
LERP_BYTES = 2**20  # planes of a tile resampled at once: about this much per pass, so it stays in the core's cache
MAX_CANVAS_TO_TILES = 4.0  # a real layout's canvas is smaller than its tiles' total area

Region = tuple[slice, slice, slice]
LoadKey = tuple[int, int, int, int]  # (run, first plane, last plane + 1, strip)
ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class Layout:
    """Where the tiles go and how they are read: what a :class:`StitchPlan` is made from besides the blocks.

    Small tiles are read two tile rows at a time (a *run*: one column of tiles, one zarr call), which
    spares most of zarr's per-call cost; tiles of ``READ_RUN_BYTES`` or more one at a time (a run of
    two would be decoded again by each strip that needs only one of its tiles).

    Attributes
    ----------
    nx, ny : int
        Tile rows and columns of the grid.
    tile_shape : (int, int, int)
        ``(Z, h, w)`` of one tile.
    z_load : int
        Planes decoded together (the input's Z chunk).
    read_run : int
        Tile rows read per zarr call (1 or 2).
    origins : tuple of (int, int)
        Each tile's integer top-left on the canvas (row-major).
    fractions : tuple of (float, float)
        Each tile's sub-pixel offset, in ``[0, 1)``.
    """

    nx: int
    ny: int
    tile_shape: tuple[int, int, int]
    z_load: int
    read_run: int
    origins: tuple[tuple[int, int], ...]
    fractions: tuple[tuple[float, float], ...]

    def load_planes(self, zs: slice) -> tuple[int, int]:
        """Planes ``[z0, z1)`` of the whole input chunks that hold ``zs``."""
        zl, nz = self.z_load, self.tile_shape[0]
        return zs.start // zl * zl, min(-(-zs.stop // zl) * zl, nz)

    def run_of(self, tile: int) -> int:
        """The run (one zarr read) holding ``tile``."""
        row, col = divmod(tile, self.ny)
        return (row // self.read_run) * self.ny + col

    def run_size(self, run: int) -> int:
        """Tiles in ``run``."""
        i0 = run // self.ny * self.read_run
        return min(i0 + self.read_run, self.nx) - i0

    def load_bytes(self, key: LoadKey) -> int:
        """Bytes held by one load (its tiles padded by one pixel on every side, float32)."""
        _, h, w = self.tile_shape
        return self.run_size(key[0]) * (key[2] - key[1]) * (h + 2) * (w + 2) * 4

    def key(self, tile: int, region: Region, strip_px: int, vertical: bool) -> LoadKey:
        """The load holding ``tile`` for ``region`` when strips are ``strip_px`` rows (columns if ``vertical``)."""
        zs, ys, xs = region
        along = xs if vertical else ys
        return (self.run_of(tile), *self.load_planes(zs), along.start // strip_px)

    def tiles_touching(self, ys: slice, xs: slice) -> tuple[int, ...]:
        """Indices (row-major) of the tiles whose footprint ``h + 1`` by ``w + 1`` meets the region."""
        _, h, w = self.tile_shape
        origins = np.asarray(self.origins, dtype=np.int64).reshape(-1, 2)
        oy, ox = origins[:, 0], origins[:, 1]
        hit = (oy < ys.stop) & (oy + h + 1 > ys.start) & (ox < xs.stop) & (ox + w + 1 > xs.start)
        return tuple(int(t) for t in np.nonzero(hit)[0])


def make_layout(nx: int, ny: int, tile_shape: tuple[int, int, int], z_load: int, positions: np.ndarray) -> Layout:
    """The :class:`Layout` of ``nx`` by ``ny`` tiles at ``positions`` (top-lefts, the canvas starting at 0)
    whose input chunks hold ``z_load`` planes."""
    _, h, w = tile_shape
    z_load = max(1, int(z_load))
    origins = np.floor(positions).astype(np.int64)
    fractions = np.asarray(positions, dtype=float) - origins
    return Layout(nx=int(nx), ny=int(ny), tile_shape=(int(tile_shape[0]), int(h), int(w)), z_load=z_load,
                  read_run=2 if 4 * z_load * h * w < READ_RUN_BYTES else 1,
                  origins=tuple((int(a), int(b)) for a, b in origins),
                  fractions=tuple((float(a), float(b)) for a, b in fractions))


@dataclass(frozen=True)
class BlockPlan:
    """One block of level 0: its region, the tiles meeting it and, per tile, the load holding it."""

    region: Region
    tiles: tuple[int, ...]
    keys: tuple[LoadKey, ...]


@dataclass(frozen=True)
class StitchPlan:
    """Which blocks are rendered in which order, from which loads: a value made by :func:`plan_stitch`.

    Attributes
    ----------
    layout : Layout
        The tiles' places and reads.
    strip_px : int
        Strip size in px (block rows, or block columns when ``vertical``).
    vertical : bool
        Whether strips are block columns.
    blocks : tuple of BlockPlan
        Every level-0 block once, in rendering order.
    uses : tuple of (LoadKey, int)
        Each load and the tile uses made of it by the blocks (a load is dropped after its last).
    lookahead : int
        Blocks rendered, prefetched or being written beyond the oldest unfinished one.
    peak_load_bytes : int
        Most bytes of loads alive at once (each from its first block to its last + ``lookahead``).
    decoded_bytes : int
        Bytes decoded in all (a load once).
    """

    layout: Layout
    strip_px: int
    vertical: bool
    blocks: tuple[BlockPlan, ...]
    uses: tuple[tuple[LoadKey, int], ...]
    lookahead: int
    peak_load_bytes: int
    decoded_bytes: int

    @property
    def decode_factor(self) -> float:
        """Input bytes decoded over the input (1.0: each chunk once)."""
        nz, h, w = self.layout.tile_shape
        return round(self.decoded_bytes / (self.layout.nx * self.layout.ny * nz * (h + 2) * (w + 2) * 4), 3)


def _block_uses(layout: Layout, touching: dict, order: list[Region], strip_px: int,
                vertical: bool) -> dict[LoadKey, list[int]]:
    """Per load: the positions in ``order`` of the blocks using one of its tiles (once per tile)."""
    uses: dict[LoadKey, list[int]] = {}
    for k, region in enumerate(order):
        for t in touching[region[1].start, region[2].start]:
            uses.setdefault(layout.key(t, region, strip_px, vertical), []).append(k)
    return uses


def _peak_and_decoded(layout: Layout, uses: dict[LoadKey, list[int]], n_blocks: int,
                      lookahead: int) -> tuple[int, int]:
    """Most bytes of loads alive at once (each load from its first block to its last, ``lookahead`` blocks
    ahead) and the bytes decoded in all."""
    alive = np.zeros(n_blocks + lookahead + 1, dtype=np.int64)
    decoded = 0
    for key, blocks in uses.items():
        size = layout.load_bytes(key)
        alive[blocks[0]] += size
        alive[blocks[-1] + lookahead] -= size
        decoded += size
    return int(np.cumsum(alive).max(initial=0)), decoded


def _rank(layout: Layout, region: Region, strip: int, vertical: bool) -> tuple[int, ...]:
    """Sort key of a block: Z load, strip, across the strip, along it, Z chunk."""
    along, across = (2, 1) if vertical else (1, 2)
    return (layout.load_planes(region[0])[0], region[along].start // strip, region[across].start,
            region[along].start, region[0].start)


def _block_order(layout: Layout, shape: tuple[int, int, int], block: tuple[int, int, int], cache_bytes: int,
                 lookahead: int) -> tuple[list[Region], int, bool]:
    """The order blocks are rendered in, the strip size in px and whether strips are block columns.

    Z load by Z load, strip by strip, one block across the strip after the other, all the Z chunks
    of a block in a row. For each orientation the strip is the largest number of block rows (or
    columns), up to the whole slice, whose loads alive at once fit in ``cache_bytes``; the
    orientation decoding less wins. Every Z load has the same plan: the choice looks at the first.
    Pure: nothing given is changed.
    """
    regions = list(pyramid.iter_blocks(shape, block))
    touching = {(r[1].start, r[2].start): layout.tiles_touching(r[1], r[2]) for r in regions}
    first_load = [r for r in regions if layout.load_planes(r[0])[0] == 0]
    best = None
    for vertical in (False, True):
        along = 2 if vertical else 1
        for strip_blocks in range(-(-shape[along] // block[along]), 0, -1):
            strip = strip_blocks * block[along]
            order = sorted(first_load, key=partial(_rank, layout, strip=strip, vertical=vertical))
            peak, decoded = _peak_and_decoded(layout, _block_uses(layout, touching, order, strip, vertical),
                                              len(order), lookahead)
            if peak <= cache_bytes:
                break
        if best is None or (decoded, peak) < best[0]:
            best = ((decoded, peak), strip, vertical)
    assert best is not None  # the loop over both orientations always sets it
    _, strip, vertical = best
    return sorted(regions, key=partial(_rank, layout, strip=strip, vertical=vertical)), strip, vertical


def plan_stitch(layout: Layout, shape: tuple[int, int, int], block: tuple[int, int, int], *,
                cache_bytes: int = CACHE_BYTES, lookahead: int = 2) -> StitchPlan:
    """Plan the rendering of level 0 of ``shape`` in blocks of ``block`` (a pure function: a value out).

    Parameters
    ----------
    layout : Layout
        The tiles' places and reads (:func:`make_layout`).
    shape : (int, int, int)
        Level-0 ``(Z, Y, X)``.
    block : (int, int, int)
        Block (one output shard) ``(Z, Y, X)``.
    cache_bytes : int
        Most bytes of decoded tiles to hold at once (the strips are cut to fit, see the module doc).
    lookahead : int
        Blocks in flight beyond the oldest unfinished one (rendered, prefetched or written): their
        loads are alive too.

    Returns
    -------
    StitchPlan
    """
    order, strip, vertical = _block_order(layout, shape, block, cache_bytes, lookahead)
    touching = {(r[1].start, r[2].start): layout.tiles_touching(r[1], r[2]) for r in order}
    uses = _block_uses(layout, touching, order, strip, vertical)
    peak, decoded = _peak_and_decoded(layout, uses, len(order), lookahead)
    blocks = tuple(BlockPlan(region=r, tiles=(tiles := touching[r[1].start, r[2].start]),
                             keys=tuple(layout.key(t, r, strip, vertical) for t in tiles)) for r in order)
    return StitchPlan(layout=layout, strip_px=strip, vertical=vertical, blocks=blocks,
                      uses=tuple((key, len(b)) for key, b in uses.items()), lookahead=lookahead,
                      peak_load_bytes=peak, decoded_bytes=decoded)


class _LoadCache:
    """Loads of tiles, each made once (by a prefetch or by the first block that needs it) and dropped
    after the last use.

    ``uses`` counts, for each :data:`LoadKey`, the tile uses by blocks, each one a :meth:`get` then a
    :meth:`release`. A load being made is waited for, not made again. A dropped load's tiles go to
    ``recycle`` (the reader decodes the next loads into them).
    """

    def __init__(self, read: Callable[[int, int, int], list], uses: dict[LoadKey, int],
                 recycle: Callable[[list], None]) -> None:
        self.read = read
        self.recycle = recycle
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
            entry.set_result(self.read(*key[:3]))
        except BaseException as exc:
            entry.set_exception(exc)

    def prefetch(self, keys: Sequence[LoadKey], executor: Executor) -> None:
        """Start making, on ``executor``, each of ``keys`` not made or under way."""
        for key in keys:
            entry = self._claim(key)
            if entry is not None:
                executor.submit(self._fill, key, entry)

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
            dropped = self.loads.pop(key, None) if self.remaining[key] == 0 else None
        if dropped is not None:
            self.recycle(dropped.result())

    def abort(self, exc: BaseException) -> None:
        """Fail every load not made yet with ``exc`` (its decoding was cancelled: nobody waits for ever)."""
        with self.lock:
            entries = list(self.loads.values())
        for entry in entries:
            try:
                entry.set_exception(exc)
            except InvalidStateError:  # made meanwhile
                pass


class _TileReader:
    """Reads a load: the tiles of one run, planes ``[z0, z1)``, each times its gain (weights / flat field)
    and padded with one zero row and column on every side (:meth:`__call__`).

    The host buffers of dropped loads (:meth:`recycle`) are decoded into again: a fresh buffer is new
    memory the kernel must zero page by page, at the cost of a copy.
    """

    def __init__(self, grid: MosaicGrid, layout: Layout, gain: np.ndarray, xp) -> None:
        self.grid = grid
        self.layout = layout
        self.gain = xp.asarray(gain.astype(np.float32))
        self.xp = xp
        self.free: list[np.ndarray] = []
        self.lock = threading.Lock()

    def recycle(self, tiles: Sequence) -> None:
        """Take back the host buffers of tiles no block needs any more (device tiles are let go)."""
        with self.lock:
            self.free.extend(tile for tile in tiles if isinstance(tile, np.ndarray))

    def drop_buffers(self) -> None:
        """Let go of the spare buffers (no load will be read any more)."""
        with self.lock:
            self.free = []

    def _buffer(self, shape: tuple[int, int, int]) -> np.ndarray:
        with self.lock:  # loads come Z load by Z load: another shape's buffers are never asked for again
            self.free = [tile for tile in self.free if tile.shape == shape]
            if self.free:
                return self.free.pop()
        return np.empty(shape, dtype=np.float32)

    def __call__(self, run: int, z0: int, z1: int) -> list:
        _, h, w = self.layout.tile_shape
        i0, j = divmod(run, self.layout.ny)
        i0 *= self.layout.read_run
        i1 = i0 + self.layout.run_size(run)
        zs, cols = slice(z0, z1), slice(j * w, (j + 1) * w)
        padded = [self._buffer((z1 - z0, h + 2, w + 2)) for _ in range(i0, i1)]
        if len(padded) == 1:  # decoded in place
            read_block(self.grid, zs, slice(i0 * h, i1 * h), cols, out=padded[0][:, 1:-1, 1:-1])
        else:
            raw = read_block(self.grid, zs, slice(i0 * h, i1 * h), cols)
            for k, tile in enumerate(padded):
                tile[:, 1:-1, 1:-1] = raw[:, k * h:(k + 1) * h]
        gain = self.gain if self.gain.ndim == 2 else self.gain[z0:z1]
        tiles = []
        for host in padded:
            host[:, [0, -1], :] = 0
            host[:, :, [0, -1]] = 0
            tile = self.xp.asarray(host)
            tile[:, 1:-1, 1:-1] *= gain
            tiles.append(tile)
        if self.xp is not np:
            self.recycle(padded)
        return tiles


def render_block(block: BlockPlan, layout: Layout, tiles: Sequence, weights, overwrite: bool, xp):
    """The blended output over one block: ``sum(w * tile / flat) / sum(w)`` resampled (a pure function).

    Parameters
    ----------
    block : BlockPlan
        The block's region, tiles and loads.
    layout : Layout
        The tiles' origins and sub-pixel fractions.
    tiles : sequence of arrays
        Per tile of ``block.tiles``: the padded, gain-multiplied planes of its load (``(z1 - z0, h + 2, w + 2)``).
    weights : array
        ``(h + 2, w + 2)`` blending weights padded with zeros.
    overwrite : bool
        The last tile wins where it has weight (blending ``none``) instead of the weighted mean.
    xp : module
        NumPy or CuPy.

    Returns
    -------
    array
        float32 ``(Z, Y, X)`` of the region, of the backend.
    """
    zs, ys, xs = block.region
    _, h, w = layout.tile_shape
    num = xp.zeros((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), dtype=xp.float32)
    den = xp.zeros(num.shape[1:], dtype=xp.float32)
    for t, key, padded in zip(block.tiles, block.keys, tiles, strict=True):
        oy, ox = layout.origins[t]
        fy, fx = layout.fractions[t]
        r0, r1 = max(ys.start, oy), min(ys.stop, oy + h + 1)
        c0, c1 = max(xs.start, ox), min(xs.stop, ox + w + 1)
        # footprint rows r0 - oy .. r1 - oy need padded rows r0 - oy .. r1 - oy + 1 (see _lerp); whole rows are
        # resampled, contiguous, and the footprint's columns c0 - ox .. c1 - ox taken from the result
        rows, cols = slice(r0 - oy, r1 - oy + 1), slice(c0 - ox, c1 - ox)
        weight = _lerp(weights[rows], fy, fx, xp)[:, cols]
        out_rows, out_cols = slice(r0 - ys.start, r1 - ys.start), slice(c0 - xs.start, c1 - xs.start)
        covered = weight > 0 if overwrite else None
        first = zs.start - key[1]
        slab = max(1, LERP_BYTES // (4 * (r1 - r0 + 1) * (w + 2)))
        for z0 in range(0, len(num), slab):  # a few planes at a time: the passes' temporaries stay in cache
            z1 = min(z0 + slab, len(num))
            values = _lerp(padded[first + z0:first + z1, rows], fy, fx, xp)[..., cols]
            target = num[z0:z1, out_rows, out_cols]
            if overwrite:
                target[...] = xp.where(covered, values, target)
            else:
                target += values
        if overwrite:
            den[out_rows, out_cols] = xp.where(covered, weight, den[out_rows, out_cols])
        else:
            den[out_rows, out_cols] += weight
    den[den == 0] = 1  # uncovered: num is 0 there too
    num /= den
    return num


def _lerp(padded, fy: float, fx: float, xp=np):
    """Linear interpolation at ``k - fy, l - fx`` of a source padded with one leading row and column.

    ``padded[..., m, n]`` holds source row ``m - 1`` and column ``n - 1``; the result has one row and
    one column less and holds the samples for rows ``0 ..`` and columns ``0 ..``:
    ``(1 - f) * a[m + 1] + f * a[m]`` (:func:`_mix`). Each output sample depends only on its own 2x2
    neighbourhood, so a window of the padded tile gives exactly the matching window of the full result.

    Both passes run over contiguous operands (NumPy copies strided ones through a buffer, three times
    slower): ``padded`` is given whole rows, and the column pass runs over the row pass's result as one
    flat run, each sample with the next (the pair that straddles two rows lands in the column dropped).
    The result is a view of that run.
    """
    rows = _mix(padded[..., :-1, :], padded[..., 1:, :], fy, xp)
    run = rows.reshape(-1)
    out = xp.empty_like(run)
    _mix(run[:-1], run[1:], fx, xp, out=out[:-1])
    return out.reshape(rows.shape)[..., :-1]


def _mix(first, second, f: float, xp=np, out=None):
    """``f * first + (1 - f) * second`` in three passes, from the nearer of the two: computed from the farther
    one, a sample next to the zero padding (``(1 - f) * second`` with ``f`` near 1) lost most of its digits
    (5 % at ``f = 1 - 1e-6``), at the mosaic's outer rows and columns. Into ``out`` when given."""
    near, far, t = (second, first, f) if f <= 0.5 else (first, second, 1.0 - f)
    out = xp.subtract(far, near, out=out)
    out *= t
    out += near
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
    window = lookahead_blocks(threads)
    strip = reads * (int(np.ceil(block_px / step_y)) + 2) * (int(np.ceil(block_px / step_x)) + 2 + window) * tile
    cache = min(cache_bytes, grid.nx * grid.ny * tile)
    rendered = window * 5 * z_chunk * block_px**2  # float32 level 0 and its level-1 quarter, waiting to be written
    return max(cache, strip) + threads * (reads * tile + 6 * z_chunk * (block_px + 2) ** 2 * 4) + rendered


def default_z_chunk(grid: MosaicGrid, block_px: int) -> int:
    """Planes per block: a block accumulator stays ~``BLOCK_BYTES``, and blocks never straddle an
    input chunk in Z (a divisor of the input's Z chunk when it is deeper, else a whole number of them)."""
    budget = max(1, BLOCK_BYTES // (4 * block_px * block_px))
    nz, zl = grid.tile_shape[0], max(1, int(grid.array.chunks[0]))
    if zl <= budget:
        return int(min(nz, budget // zl * zl))
    divisors = [d for d in range(budget, 0, -1) if zl % d == 0]
    return int(divisors[0] if divisors[0] * 2 > budget else budget)


def lookahead_blocks(threads: int) -> int:
    """Blocks in flight (prefetched, rendered or being written) with ``threads`` threads per stage."""
    return 2 * max(1, threads)


def _write_pyramid(group, plan: StitchPlan, read: _TileReader, weights, overwrite: bool, xp,
                   shapes: list[tuple[int, int, int]], block: tuple[int, int, int], *, sharded: bool, threads: int,
                   progress: ProgressCallback | None) -> None:
    """Render level 0 block by block, then the downsampled levels.

    Three stages overlap, each on its own pool of ``threads`` threads, so decoding, resampling and
    blending, and encoding keep the cores busy together (zstd and NumPy release the GIL): the loads
    of a block are decoded (prefetched) when it enters the window of ``plan.lookahead`` blocks in
    flight, it is rendered once they are there, and written (level 0 and its 2x2 mean, level 1)
    while the next ones render. A block leaves the window when written; blocks are completed in the
    plan's order.

    Level 1 chunks are the half-size blocks, unsharded (a level-1 shard would gather four blocks
    written concurrently). Levels 2 and up are built from level 1.
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
    cache = _LoadCache(read, dict(plan.uses), read.recycle)
    run = plan.layout.read_run
    ny = plan.layout.ny

    def write(region: Region, out) -> None:
        level0[region] = to_numpy(out)
        if level1 is not None:
            z, y, x = region
            level1[z, y.start // 2:(y.stop + 1) // 2, x.start // 2:(x.stop + 1) // 2] = to_numpy(
                pyramid.downsample_mean(out))

    def render(item: BlockPlan) -> Future:
        tiles = [cache.get(key)[t // ny % run] for t, key in zip(item.tiles, item.keys, strict=True)]
        out = render_block(item, plan.layout, tiles, weights, overwrite, xp)
        del tiles
        for key in item.keys:
            cache.release(key)
        return writers.submit(write, item.region, out)

    decoders = ThreadPoolExecutor(threads, "stitch-decode")
    renderers = ThreadPoolExecutor(threads, "stitch-render")
    writers = ThreadPoolExecutor(threads, "stitch-write")
    try:
        if progress is not None:
            progress(0, total)
        pending: deque[Future] = deque()
        for item in plan.blocks:
            while len(pending) >= plan.lookahead:
                pending.popleft().result().result()
                step()
            cache.prefetch(list(dict.fromkeys(item.keys)), decoders)
            pending.append(renderers.submit(render, item))
        while pending:
            pending.popleft().result().result()
            step()
        read.drop_buffers()  # level 0 is done: the levels above need no decoded tiles
        pyramid.write_levels(group, shapes, chunks=chunks, shards=shards, block=block, executor=writers,
                             on_block_done=step, first=2)
    except BaseException as exc:
        decoders.shutdown(wait=False, cancel_futures=True)
        cache.abort(exc)  # renderers waiting on a cancelled load stop waiting
        renderers.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        for pool in (decoders, renderers, writers):
            pool.shutdown(wait=True)


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
        (:func:`linumpy_motor.parallel.blas_on_one_thread`).
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
    xp, backend = array_backend(use_gpu)
    placed = _placed(grid, A, positions)
    shapes = pyramid.level_shapes(geometry.extent_shape(placed, grid.tile_shape), pyramid_top_px)
    block = (zc, block_px, block_px)
    with atomic_output(output, "stitch") as tmp, blas_on_one_thread():
        flat, flat_description = resolve_flatfield(grid, flatfield)
        layout = make_layout(grid.nx, grid.ny, grid.tile_shape, int(grid.array.chunks[0]), placed - placed.min(axis=0))
        plan = plan_stitch(layout, shapes[0], block, cache_bytes=cache_bytes, lookahead=lookahead_blocks(threads))
        weights = weight_map((h, w), blending, overlap_px(A, (h, w)))
        read = _TileReader(grid, layout, weights if flat is None else weights / flat, xp)
        group = ngff.create_group(tmp, ngff_version)
        _write_pyramid(group, plan, read, xp.asarray(np.pad(weights, 1)), blending == "none", xp, shapes, block,
                       sharded=group.metadata.zarr_format == 3, threads=threads, progress=progress)
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
        "dtype": "float32", "threads": threads, "decode_factor": plan.decode_factor,
        "cache_peak_bytes": plan.peak_load_bytes,
    }
