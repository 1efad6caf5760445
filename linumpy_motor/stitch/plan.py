"""The plan of a slice's stitch, a value: which tiles meet which block, from which loads, in which order.

Blocks are ordered Z load by Z load, strip by strip (``k`` block rows, or block columns when that decodes
less), one block across the strip after the other, and all the block's Z chunks in a row, so a load (the
tiles of one zarr read, all the planes of their input chunk) is alive over about three block columns of
one strip. With one strip over the whole slice every input chunk is decoded exactly once, whatever its
depth; when that would hold more than ``cache_bytes`` the strips are cut shorter and the tiles straddling a
strip boundary are decoded once per strip they meet (about ``1 + h / S`` decodes per chunk for strips ``S``
px high and tiles ``h`` px high): :attr:`StitchPlan.decode_factor`. Everything here is pure.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np

from linumpy_motor.stitch import pyramid

__all__ = ["CACHE_BYTES", "READ_RUN_BYTES", "BlockPlan", "Layout", "LoadKey", "Region", "StitchPlan", "make_layout",
           "plan_stitch", "read_run"]

CACHE_BYTES = 512 * 2**20  # decoded tiles kept alive between their first and last block (see the module doc)
READ_RUN_BYTES = 4 * 2**20  # tiles of a load smaller than this are read two tile rows per zarr call

Region = tuple[slice, slice, slice]
LoadKey = tuple[int, int, int, int]  # (run, first plane, last plane + 1, strip)


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


def read_run(z_load: int, h: int, w: int) -> int:
    """Tile rows read per zarr call for tiles of ``z_load`` planes of ``h`` by ``w``: 2 under :data:`READ_RUN_BYTES`,
    else 1."""
    return 2 if 4 * z_load * h * w < READ_RUN_BYTES else 1


def make_layout(nx: int, ny: int, tile_shape: tuple[int, int, int], z_load: int, positions: np.ndarray) -> Layout:
    """The :class:`Layout` of ``nx`` by ``ny`` tiles at ``positions`` (top-lefts, the canvas starting at 0)
    whose input chunks hold ``z_load`` planes."""
    _, h, w = tile_shape
    z_load = max(1, int(z_load))
    origins = np.floor(positions).astype(np.int64)
    fractions = np.asarray(positions, dtype=float) - origins
    return Layout(nx=int(nx), ny=int(ny), tile_shape=(int(tile_shape[0]), int(h), int(w)), z_load=z_load,
                  read_run=read_run(z_load, h, w),
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
