#!/usr/bin/env python3
"""dask against the hand-written path, side by side, on the work dask would take over: the pyramid.

Both build levels 1.. of one stitched slice from its level 0 (2x2 mean in Y and X, same chunks and
shards, same number of threads), each in a fresh process whose time and peak resident memory
(``VmHWM``) are reported:

- ``hand``: :func:`linumpy_motor.stitch.pyramid.write_levels` (what the stitcher runs; level 1 is, in the
  stitcher itself, made from each block while it is still in memory, so there it costs no read);
- ``dask``: ``da.from_zarr`` → ``da.coarsen(np.mean, ..., trim_excess=False)`` per level (odd edges
  padded the same way) → ``to_zarr`` into the same array layout, on dask's threaded scheduler.

Usage: ``python bench/bench_dask.py [WORKDIR] [--grid 8x8] [--threads N]``; prints a markdown table.
The stitched slice is made once under WORKDIR (default ``bench/_work/dask``) and deleted afterwards.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from linumpy_motor.parallel import available_cores
from linumpy_motor.stitch import pyramid

WORKDIR = Path(__file__).resolve().parent / "_work" / "dask"


def _levels(group: zarr.Group) -> tuple[list[tuple[int, int, int]], tuple, tuple | None]:
    level0 = group["0"]
    shapes = pyramid.level_shapes(level0.shape, 512)
    return shapes, level0.chunks, level0.shards


def hand(path: Path, threads: int) -> None:
    group = zarr.open_group(str(path), mode="r+")
    shapes, chunks, shards = _levels(group)
    with ThreadPoolExecutor(threads) as pool:
        pyramid.write_levels(group, shapes, chunks=chunks, shards=shards, block=shards or chunks, executor=pool)


def with_dask(path: Path, threads: int) -> None:
    import dask
    import dask.array as da

    group = zarr.open_group(str(path), mode="r+")
    shapes, chunks, shards = _levels(group)
    with dask.config.set(scheduler="threads", num_workers=threads):
        for k in range(1, len(shapes)):
            source = da.from_zarr(group[str(k - 1)]).rechunk(shards or chunks)
            pad = [(0, 0), (0, source.shape[1] % 2), (0, source.shape[2] % 2)]
            if any(p[1] for p in pad):
                source = da.pad(source, pad, mode="edge")
            level = da.coarsen(np.mean, source, {1: 2, 2: 2}, trim_excess=False).astype(np.float32)
            target = pyramid.create_level(group, str(k), shapes[k], chunks, shards)
            da.store(level.rechunk(shards or chunks), target, lock=False)


def _child(task: str, path: str, threads: str) -> None:
    start = time.perf_counter()
    {"hand": hand, "dask": with_dask}[task](Path(path), int(threads))
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_stitch import _peak_rss_mb

    print(json.dumps({"seconds": time.perf_counter() - start, "peak_mb": _peak_rss_mb()}))


def _level0_copy(stitched: Path, target: Path) -> None:
    """A copy of the stitched slice with level 0 only (each method starts from the same input)."""
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    shutil.copy(stitched / "zarr.json", target / "zarr.json")
    shutil.copytree(stitched / "0", target / "0")


def run(workdir: str | Path = WORKDIR, grid: tuple[int, int] = (8, 8), threads: int | None = None,
        repeats: int = 2) -> list[dict]:
    """Rows ``method``, ``repeat``, ``threads``, ``seconds``, ``peak_mb``, ``equal`` (levels match ``hand``)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_stitch

    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    threads = threads or available_cores()
    source, _ = bench_stitch._input(workdir, *grid)
    stitched = workdir / "stitched.ome.zarr"
    if not stitched.exists():
        bench_stitch._measure("stitch", source, stitched, threads, keep=True)  # on that many cores
    rows = []
    try:
        for repeat in range(repeats):
            for method in ("hand", "dask"):
                target = workdir / f"{method}.ome.zarr"
                _level0_copy(stitched, target)
                done = subprocess.run([sys.executable, __file__, "--child", method, str(target), str(threads)],
                                      capture_output=True, text=True, check=True)
                result = json.loads(done.stdout.strip().splitlines()[-1])
                rows.append({"method": method, "repeat": repeat + 1, "threads": threads,
                             "seconds": round(result["seconds"], 2), "peak_mb": round(result["peak_mb"])})
            a, b = (zarr.open_group(str(workdir / f"{m}.ome.zarr"), mode="r") for m in ("hand", "dask"))
            equal = all(np.allclose(a[k][:], b[k][:], rtol=1e-6, atol=1e-6) for k in a.array_keys() if k != "0")
            rows[-1]["equal"] = rows[-2]["equal"] = bool(equal)
    finally:
        shutil.rmtree(workdir)
    return rows


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _child(*argv[1:4])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", default=WORKDIR)
    parser.add_argument("--grid", default="8x8")
    parser.add_argument("--threads", type=int)
    args = parser.parse_args(argv)
    rows = run(args.workdir, tuple(int(n) for n in args.grid.split("x")), args.threads)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import bench_stitch

    print(bench_stitch.markdown(rows))


if __name__ == "__main__":
    main(sys.argv[1:])
