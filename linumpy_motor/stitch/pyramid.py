"""Multiscale pyramids: each level is the previous one 2x2-mean downsampled in Y and X (Z kept)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor

import numpy as np
import zarr

from linumpy_motor.io import ngff

TOP_PX = 512  # by default the smallest level fits in this many pixels a side

__all__ = ["TOP_PX", "create_level", "downsample_mean", "iter_blocks", "level_scales", "level_shapes", "write_levels"]


def level_shapes(shape: Sequence[int], top_px: int = TOP_PX) -> list[tuple[int, int, int]]:
    """Shapes of the pyramid levels: halve Y and X (rounding up) until both fit in ``top_px``.

    Parameters
    ----------
    shape : (int, int, int)
        ``(Z, Y, X)`` of level 0.
    top_px : int
        Largest Y or X size allowed for the smallest level.
    """
    nz, height, width = (int(s) for s in shape)
    shapes = [(nz, height, width)]
    while max(height, width) > top_px:
        height, width = math.ceil(height / 2), math.ceil(width / 2)
        shapes.append((nz, height, width))
    return shapes


def level_scales(scale: Sequence[float], n_levels: int) -> list[tuple[float, float, float]]:
    """Physical pixel size of each level: Y and X double per level, Z is kept."""
    sz, sy, sx = (float(s) for s in scale)
    return [(sz, sy * 2**k, sx * 2**k) for k in range(n_levels)]


def downsample_mean(block: np.ndarray) -> np.ndarray:
    """2x2 mean over the last two axes; an odd trailing row or column averages the pixels it has."""
    *lead, h, w = block.shape
    if h % 2 or w % 2:
        block = np.pad(block, [(0, 0)] * len(lead) + [(0, h % 2), (0, w % 2)], mode="edge")
    out = block[..., 0::2, 0::2] + block[..., 1::2, 0::2]
    out += block[..., 0::2, 1::2]
    out += block[..., 1::2, 1::2]
    out *= 0.25
    return out


def create_level(group: zarr.Group, name: str, shape: Sequence[int], chunks: Sequence[int],
                 shards: Sequence[int] | None = None) -> zarr.Array:
    """A float32 level (:func:`ngff.create_level`) that writes every chunk it is given.

    Zarr skips chunks equal to the fill value after comparing each one (bit by bit, slowly) to it;
    a stitched image has almost no such chunk, so the comparison is not worth its time.
    """
    level = ngff.create_level(group, name, shape, np.float32, chunks, shards=shards)
    return level.with_config({"write_empty_chunks": True})


def iter_blocks(shape: Sequence[int], block: Sequence[int]) -> Iterator[tuple[slice, slice, slice]]:
    """Regions of ``shape`` cut on the ``block`` grid, as (z, y, x) slices."""
    ranges = [range(0, int(n), int(b)) for n, b in zip(shape, block, strict=True)]
    for z in ranges[0]:
        for y in ranges[1]:
            for x in ranges[2]:
                yield (slice(z, min(z + block[0], shape[0])), slice(y, min(y + block[1], shape[1])),
                       slice(x, min(x + block[2], shape[2])))


def write_levels(
    group: zarr.Group,
    shapes: Sequence[Sequence[int]],
    *,
    chunks: Sequence[int],
    shards: Sequence[int] | None,
    block: Sequence[int],
    executor: Executor,
    on_block_done: Callable[[], None] = lambda: None,
    first: int = 1,
) -> None:
    """Write levels ``first .. len(shapes) - 1``, each from the level before, already in ``group``.

    Level ``k`` is processed block by block (``block`` is a whole number of shards, so parallel
    writes never share a chunk or shard); each block reads the matching region of level ``k - 1``
    one quadrant at a time, so a read is never larger than the block itself.

    Parameters
    ----------
    group : zarr.Group
        Holds levels ``"0" .. str(first - 1)``; levels are created as ``str(first)``, ...
    shapes : sequence of (Z, Y, X)
        All level shapes (from :func:`level_shapes`).
    chunks, shards : sequence of int
        Chunk and shard shapes of the new levels (``shards`` None for zarr v2).
    block : (int, int, int)
        Work unit, a multiple of the shard (or chunk) shape.
    executor : Executor
        Runs the blocks of one level in parallel.
    on_block_done : callable
        Called once per finished block (progress).
    first : int
        First level to write.
    """
    quarter = [max(1, b // 2) for b in block]
    for k in range(first, len(shapes)):
        source = group[str(k - 1)]
        target = create_level(group, str(k), shapes[k], chunks, shards)

        def work(region: tuple[slice, slice, slice], source=source, target=target) -> None:
            z, y, x = region
            out = np.empty((z.stop - z.start, y.stop - y.start, x.stop - x.start), dtype=np.float32)
            for _, ys, xs in iter_blocks(out.shape, (out.shape[0], quarter[1], quarter[2])):
                # one quadrant at a time: the source read stays the size of one output block
                rows = slice(2 * (y.start + ys.start), 2 * (y.start + ys.stop))
                cols = slice(2 * (x.start + xs.start), 2 * (x.start + xs.stop))
                out[:, ys, xs] = downsample_mean(source[z, rows, cols])
            target[region] = out

        for future in [executor.submit(work, region) for region in iter_blocks(shapes[k], block)]:
            future.result()
            on_block_done()
