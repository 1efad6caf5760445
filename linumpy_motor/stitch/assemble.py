"""Stitch one slice: flat-field correct, place tiles at sub-pixel ``A @ [i, j]``, blend, write a pyramid.

The output is produced block by block: a block is ``z_chunk`` planes by ``block_px x block_px``
pixels of the canvas (exactly one shard of the output, or four chunks of an unsharded store), and
uses only the tiles that touch it.

The work is split in three parts, each its own module: a *plan* (:mod:`.plan`: a
:class:`~.plan.StitchPlan`, a value made by the pure :func:`~.plan.plan_stitch` from a
:class:`~.plan.Layout`: which tiles meet which block, from which loads, in which order, in which
strips), the *reading* (:mod:`.tiles`: a :class:`~.tiles.TileReader` decodes a load, a
:class:`~.tiles.LoadCache` keeps it from its first block to its last) and the *numerics*
(:mod:`.render`, :func:`~linumpy_motor.stitch.pyramid.downsample_mean`). This module runs them: decoding,
rendering and encoding run as three overlapping stages, each on ``threads`` threads, over a window of
``2 * threads`` blocks (:func:`_write_pyramid`), so every core has work while the others wait on zarr.

Decoding: a tile is decoded with all the planes of its input chunk (a *load*: ``R`` tiles of one
tile column in one zarr call, ``R`` from :func:`~.plan.read_run`, straight into
its zero-padded buffer, then gain-multiplied) when the first block that needs it enters the window,
and kept until the last; its buffers then take the next load. Every block resamples just its own
window of the tile, :data:`~.render.LERP_BYTES` of planes at a time. Blocks are ordered Z load by Z load,
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

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np

from linumpy_motor import __version__
from linumpy_motor.backend import array_backend, to_numpy
from linumpy_motor.errors import InputError, check_choice
from linumpy_motor.io import ngff, outputs
from linumpy_motor.io.grid import MosaicGrid, open_mosaic
from linumpy_motor.io.outputs import atomic_output
from linumpy_motor.io.schemas import check_transform
from linumpy_motor.memory import check_memory
from linumpy_motor.parallel import blas_on_one_thread, resolve_threads
from linumpy_motor.register import geometry
from linumpy_motor.register.flatfield import DEFAULT_FLATFIELD, READ_THREADS, flatfield_file, resolve_flatfield
from linumpy_motor.stitch import pyramid
from linumpy_motor.stitch.blend import BLENDING_MODES, DEFAULT_BLENDING, overlap_px, weight_map
from linumpy_motor.stitch.plan import CACHE_BYTES, BlockPlan, Region, StitchPlan, make_layout, plan_stitch, read_run
from linumpy_motor.stitch.render import render_block
from linumpy_motor.stitch.tiles import LoadCache, TileReader

__all__ = ["BLOCK_BYTES", "BLOCK_PX", "MAX_CANVAS_TO_TILES", "MIN_BLOCK_PX", "ProgressCallback", "check_canvas",
           "default_z_chunk", "lookahead_blocks", "peak_bytes", "stitch_slice"]

BLOCK_PX = 512  # default Y and X size of a block (one output shard)
BLOCK_BYTES = 16 * 2**20  # float32 accumulator of one block (each thread holds a few of these)
MIN_BLOCK_PX = 32  # smallest block side: output chunks are half a block
MAX_CANVAS_TO_TILES = 4.0  # a real layout's canvas is smaller than its tiles' total area

ProgressCallback = Callable[[int, int], None]


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
    z_load = min(nz, max(1, int(grid.array.chunks[0])))
    tile = z_load * (h + 2) * (w + 2) * 4
    reads = read_run(z_load, h, w)
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


def _write_pyramid(group, plan: StitchPlan, read: TileReader, weights, overwrite: bool, xp,
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
    cache = LoadCache(read, dict(plan.uses), read.recycle)
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
        read = TileReader(grid, layout, weights if flat is None else weights / flat, xp)
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
