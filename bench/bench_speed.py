"""Speed of measure + fit, ours against the peers, on the same in-memory planes in one process.

Every tool gets the same central planes as NumPy arrays and the same number of repeats; the best
(shortest) repeat counts. Ours pools N slices in one fit; a peer handles slices one at a time,
so its N-slice time is its one-slice time times N. Our time from zarr stores (open, read the
central plane, measure, fit) is reported beside the in-memory one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import peers

from linumpy_motor import synthetic
from linumpy_motor.backend import gpu_available
from linumpy_motor.io import ngff
from linumpy_motor.mosaic.motor import pool_pairs_and_fit_global_affine
from linumpy_motor.parallel import available_cores, limited_threads
from linumpy_motor.register.measure import MeasureOptions, band_reader, measure_grid_pairs

SPEC = synthetic.SyntheticSpec(tile_shape=(1, 160, 160), seed=11)
GRIDS = ((6, 7, 3), (12, 14, 2), (24, 28, 1))
"""(tile rows, tile columns, repeats) of the one-slice timings."""
POOLED = (10, 50)
MIN_TOTAL_S = 2.0
DISTINCT = 10
"""Distinct slices generated for the pooled timings (and written as zarr); more are cycled copies."""
ZARR_Z = 8
OVERLAP = SPEC.overlap
PEERS: tuple[tuple[str, Callable[[np.ndarray, int, int, float], peers.ToolResult]], ...] = (
    ("m2stitch", peers.m2stitch),
    ("ashlar", peers.ashlar),
)


def best_of(fns: Mapping[str, Callable[[], object]], repeats: int, min_total_s: float = MIN_TOTAL_S,
            max_calls: int = 50) -> dict[str, float]:
    """Shortest wall time (s) of each function, calling them in turn (round-robin).

    Each gets at least ``repeats`` calls, and more until ``min_total_s`` of its own time is spent
    (at most ``max_calls``): the same rule for every tool, like ``timeit``'s autorange. Taking
    turns spreads the bursts of other jobs on a shared machine over all tools alike.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}

    def wants_more(name: str) -> bool:
        done = times[name]
        return len(done) < repeats or (sum(done) < min_total_s and len(done) < max_calls)

    while any(wants_more(name) for name in fns):
        for name, fn in fns.items():
            if wants_more(name):
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
    return {name: min(done) for name, done in times.items()}


def make_planes(nx: int, ny: int, count: int) -> list[np.ndarray]:
    """``count`` distinct synthetic central planes of an ``nx x ny`` grid."""
    spec = replace(SPEC, nx=nx, ny=ny)
    return [synthetic.make_slice(spec, seed=spec.seed * 1000 + k)[0][0] for k in range(count)]


def write_stores(planes: list[np.ndarray], folder: Path, nz: int = ZARR_Z) -> list[tuple[int, Path]]:
    """Write each plane as the central plane of an ``nz``-plane sharded NGFF 0.5 mosaic grid."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    h, w = SPEC.tile_shape[1:]
    stores = []
    for k, plane in enumerate(planes):
        volume = np.clip(plane[None] * rng.normal(1.0, 0.05, (nz, *plane.shape)), 0, None).astype(np.float32)
        volume[nz // 2] = plane
        path = folder / f"mosaic_grid_3d_z{k:02d}.ome.zarr"
        ngff.write_image(path, volume, chunks=(nz, h, w), version="0.5", shards=(nz, 4 * h, 4 * w))
        stores.append((k, path))
    return stores


def _warm_up(installed: Mapping[str, str | None]) -> None:
    """Run every tool once on a small grid (imports, FFT plans) before anything is timed."""
    plane = make_planes(3, 3, 1)[0]
    peers.ours([plane], 3, 3, OVERLAP)
    for name, fn in PEERS:
        if installed[name]:
            fn(plane, 3, 3, OVERLAP)


def _row(grid: tuple[int, int], slices: int, repeats: int, ours_s: float, peer_s: dict, note: str) -> dict:
    row = {"grid": f"{grid[0]}x{grid[1]}", "tiles": grid[0] * grid[1], "slices": slices, "repeats": repeats,
           "ours_s": ours_s, "ours_zarr_s": None, "ours_all_cores_s": None, "note": note}
    for name, _ in PEERS:
        seconds = peer_s.get(name)
        row[f"{name}_s"] = seconds
        row[f"{name}_ratio"] = None if seconds is None else seconds / ours_s
    return row


def _on_all_cores(fn: Callable, *args):
    """``fn(*args)`` with FFT and BLAS pools on every core this process is given (the CLI default)."""
    with limited_threads(available_cores()):
        return fn(*args)


def run(workdir: Path, installed: Mapping[str, str | None], *, grids=GRIDS, pooled=POOLED,
        log: Callable[[str], None] = print) -> list[dict]:
    """Timing rows: one slice at every grid size, then N slices pooled at the smallest grid.

    Parameters
    ----------
    workdir : Path
        Scratch folder for the zarr stores.
    installed : mapping
        Peer name (``m2stitch``, ``ashlar``) to its version, None to leave it out.
    grids : sequence of (nx, ny, repeats)
        One-slice grid sizes and the repeats of each.
    pooled : sequence of int
        Slice counts pooled at the first grid size.
    log : callable
        Progress printer.

    Returns
    -------
    list of dict
        ``grid``, ``tiles``, ``slices``, ``repeats``, ``ours_s``, ``ours_zarr_s``, ``ours_all_cores_s``
        (in memory, FFT and BLAS on every core given; one slice only), ``<peer>_s`` and
        ``<peer>_ratio`` (peer time / our in-memory one-thread time), ``note``.
    """
    _warm_up(installed)
    rows = []
    per_slice: dict[str, float] = {}
    for k, (nx, ny, repeats) in enumerate(grids):
        planes = make_planes(nx, ny, min(max(pooled, default=1), DISTINCT) if k == 0 else 1)
        stores = write_stores(planes, workdir / "zarr") if k == 0 else []
        for n in (1, *pooled) if k == 0 else (1,):
            batch = [planes[s % len(planes)] for s in range(n)]
            calls = {"ours": lambda batch=batch: peers.ours(batch, nx, ny, OVERLAP)}
            if n == 1 and available_cores() > 1:
                calls["all_cores"] = lambda batch=batch: _on_all_cores(peers.ours, batch, nx, ny, OVERLAP)
            if n == 1:
                calls.update({name: lambda fn=fn: fn(batch[0], nx, ny, OVERLAP) for name, fn in PEERS
                              if installed[name]})
            if 0 < n <= len(stores):
                calls["zarr"] = lambda n=n: pool_pairs_and_fit_global_affine(stores[:n], OVERLAP)
            best = best_of(calls, repeats)
            if n == 1:
                per_slice = {name: best[name] for name, _ in PEERS if name in best}
            rows.append(_row((nx, ny), n, repeats, best["ours"], {name: s * n for name, s in per_slice.items()},
                             "all measured" if n == 1 else "peers: one-slice time x N"))
            rows[-1]["ours_zarr_s"] = best.get("zarr")
            rows[-1]["ours_all_cores_s"] = best.get("all_cores")
            log(f"  [speed] {nx}x{ny}, {n} slice(s): " + ", ".join(f"{name} {s:.3f} s" for name, s in best.items()))
    return rows


def gpu_rows(grids=GRIDS, log: Callable[[str], None] = print) -> list[dict]:
    """CuPy against NumPy for the measurement step, one slice per grid size (empty without CUDA)."""
    if not gpu_available():
        return []
    rows = []
    for nx, ny, repeats in grids:
        plane = make_planes(nx, ny, 1)[0]
        h, w = SPEC.tile_shape[1:]
        seconds = {}
        for use_gpu in (False, True):
            def measure(use_gpu=use_gpu):
                return measure_grid_pairs(band_reader(plane, h), (h, w), nx, ny, OVERLAP,
                                          MeasureOptions(use_gpu=use_gpu))

            measure()
            seconds[use_gpu] = best_of({"measure": measure}, max(repeats, 2))["measure"]
        rows.append({"grid": f"{nx}x{ny}", "numpy_s": seconds[False], "cupy_s": seconds[True],
                     "speedup": seconds[False] / seconds[True]})
        log(f"  [gpu] {nx}x{ny}: numpy {seconds[False]:.3f} s, cupy {seconds[True]:.3f} s")
    return rows
