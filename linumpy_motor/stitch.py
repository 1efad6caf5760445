"""Stitch one slice: flat-field correct, place tiles at sub-pixel ``A @ [i, j]``, blend, write a pyramid.

The output is produced block by block: a block is ``z_chunk`` planes by ``block_px x block_px``
pixels of the canvas (exactly one shard of the output, or four chunks of an unsharded store), and
uses only the tiles that touch it. Blocks run on a thread pool, down one block column after the
other, and a small cache of recently used tiles (a fixed number) spares most second decodes of a
tile shared by vertically neighbouring blocks. Peak memory is a few blocks per worker plus the
cache, whatever the slice size. With input chunks deeper than ``z_chunk`` (e.g. one chunk per
whole tile), each Z chunk of the output decodes the tile chunks again: raise ``z_chunk`` (more
memory per block) to decode less.

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
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from . import __version__, geometry, ngff, pyramid
from .backend import get_backend, to_numpy
from .blend import BLENDING_MODES, overlap_px, weight_map
from .errors import InputError
from .flatfield import resolve_flatfield
from .io import MosaicGrid, atomic_output, open_mosaic, read_block

BLOCK_BYTES = 16 * 2**20  # float32 accumulator of one block (all workers hold a few of these)
TILE_CACHE_TILES = 8  # prepared tiles kept for the next blocks of the same block column
MAX_WORKERS = 8


class _TileCache:
    """The ``capacity`` most recently used prepared tiles.

    A tile touches up to four blocks (more when tiles are larger than blocks). Blocks are rendered
    down one block column after the other, so the block below finds most of the tiles it shares
    with the one above here instead of decoding their chunks again (about 1.4 decodes per tile for
    256 px tiles and 512 px blocks, 2 for 512 px tiles, against 2 and 4 without the cache). The
    number of tiles is fixed, so memory does not grow with the slice.
    """

    def __init__(self, load: Callable[[int, slice], object], capacity: int) -> None:
        self.load = load
        self.capacity = capacity
        self.tiles: OrderedDict[tuple[int, int], object] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, t: int, zs: slice):
        """``load(t, zs)``, from the cache when it is there."""
        key = (t, zs.start)
        with self.lock:
            if key in self.tiles:
                self.tiles.move_to_end(key)
                return self.tiles[key]
        tile = self.load(t, zs)
        with self.lock:
            self.tiles[key] = tile  # another thread may have loaded it meanwhile: same content
            while len(self.tiles) > self.capacity:
                self.tiles.popitem(last=False)
        return tile


class _Canvas:
    """Everything a block needs: the tiles' integer origins and sub-pixel fractions, and the gains."""

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
        self.cache = _TileCache(self._prepared, TILE_CACHE_TILES)

    def _prepared(self, t: int, zs: slice):
        """Tile ``t``, planes ``zs``, times its gain (weights / flat field), with a border of zeros."""
        nz, h, w = self.grid.tile_shape
        i, j = divmod(t, self.grid.ny)
        raw = read_block(self.grid, zs, slice(i * h, (i + 1) * h), slice(j * w, (j + 1) * w))
        out = self.xp.zeros((raw.shape[0], h + 2, w + 2), dtype=self.xp.float32)
        gain = self.gain if self.gain.ndim == 2 else self.gain[zs]
        self.xp.multiply(self.xp.asarray(raw), gain, out=out[:, 1:-1, 1:-1])
        return out

    def tiles_touching(self, ys: slice, xs: slice) -> np.ndarray:
        """Indices (row-major) of the tiles whose footprint ``h + 1`` by ``w + 1`` meets the region."""
        _, h, w = self.grid.tile_shape
        oy, ox = self.origins[:, 0], self.origins[:, 1]
        return np.nonzero((oy < ys.stop) & (oy + h + 1 > ys.start) & (ox < xs.stop) & (ox + w + 1 > xs.start))[0]

    def render(self, zs: slice, ys: slice, xs: slice) -> np.ndarray:
        """The blended output over one region ``(z, y, x)`` of the canvas, float32."""
        xp = self.xp
        num = xp.zeros((zs.stop - zs.start, ys.stop - ys.start, xs.stop - xs.start), dtype=xp.float32)
        den = xp.zeros(num.shape[1:], dtype=xp.float32)
        for t in self.tiles_touching(ys, xs):
            (rows, cols), values, weights = self._place(int(t), zs, ys, xs)
            if self.overwrite:
                covered = weights > 0
                num[:, rows, cols] = xp.where(covered, values, num[:, rows, cols])
                den[rows, cols] = xp.where(covered, weights, den[rows, cols])
            else:
                num[:, rows, cols] += values
                den[rows, cols] += weights
        den[den == 0] = 1  # uncovered: num is 0 there too
        num /= den
        return to_numpy(num)

    def _place(self, t: int, zs: slice, ys: slice, xs: slice):
        """Tile ``t`` (one of :meth:`tiles_touching`) linearly resampled onto the part of the region it
        covers, with its weights."""
        _, h, w = self.grid.tile_shape
        (oy, ox), (fy, fx) = self.origins[t], self.fractions[t].tolist()
        r0, r1 = max(ys.start, oy), min(ys.stop, oy + h + 1)
        c0, c1 = max(xs.start, ox), min(xs.stop, ox + w + 1)
        # output rows k0 .. k1 - 1 of the resampled tile need source rows k0 - 1 .. k1 - 1, which the
        # zero border shifts to k0 .. k1 in the prepared tile (the same for columns)
        k0, k1, l0, l1 = r0 - oy, r1 - oy, c0 - ox, c1 - ox
        values = _lerp(self.cache.get(t, zs)[:, k0:k1 + 1, l0:l1 + 1], fy, fx)
        weights = _lerp(self.weights[k0:k1 + 1, l0:l1 + 1], fy, fx)
        return (slice(r0 - ys.start, r1 - ys.start), slice(c0 - xs.start, c1 - xs.start)), values, weights


def _lerp(padded, fy: float, fx: float):
    """Linear interpolation at ``k - fy, l - fx`` of a source padded with one leading row and column.

    ``padded[..., m, n]`` holds source row ``k0 - 1 + m`` and column ``l0 - 1 + n``; the result has
    one row and one column less and holds the samples for rows ``k0 ..`` and columns ``l0 ..``:
    ``(1 - f) * a[m + 1] + f * a[m]``, computed in place as ``a[m + 1] + f * (a[m] - a[m + 1])``.
    """
    rows = padded[..., :-1, :] - padded[..., 1:, :]
    rows *= fy
    rows += padded[..., 1:, :]
    out = rows[..., :-1] - rows[..., 1:]
    out *= fx
    out += rows[..., 1:]
    return out


def _inside(a: Path, b: Path) -> bool:
    return a == b or b in a.parents


def _written_by_stitch(path: Path) -> bool:
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except Exception:  # not a zarr group at all
        return False
    return (attrs.get("linumpy_motor") or {}).get("stage") == "stitch"


def check_output(source: Path, output: Path) -> None:
    """Refuse an output that is, holds or lies inside the input store, or replaces anything but a
    previous stitched slice.

    Raises
    ------
    InputError
    """
    src, out = source.resolve(), output.resolve()
    if _inside(out, src) or _inside(src, out):
        raise InputError(output, f"output must not be, hold or lie inside the input store {source}")
    if out.exists() and not _written_by_stitch(out):
        raise InputError(output, "exists and is not a stitched slice; refusing to replace it")


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
    level0 = ngff.create_level(group, "0", shapes[0], np.float32, chunks, shards=shards)
    level1 = ngff.create_level(group, "1", shapes[1], np.float32, chunks) if len(shapes) > 1 else None

    def work(region: tuple[slice, slice, slice]) -> None:
        out = canvas.render(*region)
        level0[region] = out
        if level1 is not None:
            z, y, x = region
            level1[z, y.start // 2:(y.stop + 1) // 2, x.start // 2:(x.stop + 1) // 2] = pyramid.downsample_mean(out)

    with (ThreadPoolExecutor(workers) as pool,
          tqdm(total=total, disable=not progress, file=sys.stderr, unit="block", desc=label) as bar):
        try:
            column_order = sorted(pyramid.iter_blocks(shapes[0], block), key=lambda r: (r[0].start, r[2].start))
            futures: list[Future] = [pool.submit(work, region) for region in column_order]
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
    nz, h, w = grid.tile_shape
    zc = int(z_chunk) if z_chunk is not None else default_z_chunk(grid, block_px)
    if zc < 1:
        raise ValueError(f"z_chunk must be >= 1, got {zc}")
    zc = min(zc, nz)
    xp, _, backend = get_backend(use_gpu)
    shapes = pyramid.level_shapes(geometry.output_shape(grid.nx, grid.ny, grid.tile_shape, A), pyramid_top_px)
    block = (zc, block_px, block_px)
    with atomic_output(output) as tmp:
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
