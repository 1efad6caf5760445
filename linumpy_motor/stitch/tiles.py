"""Decoded tiles for the stitch: each load read once, gain-multiplied and padded (:class:`TileReader`), and kept
from the first block that needs it to the last (:class:`LoadCache`), its buffers then decoded into again."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, Future, InvalidStateError

import numpy as np

from linumpy_motor.io.grid import MosaicGrid, read_block
from linumpy_motor.stitch.plan import Layout, LoadKey

__all__ = ["LoadCache", "TileReader"]


class LoadCache:
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


class TileReader:
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
