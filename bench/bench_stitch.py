#!/usr/bin/env python3
"""Stitch throughput and peak memory per slice size, beside a plain chunked zarr copy of the input.

Usage: ``python bench/bench_stitch.py [WORKDIR]`` (a temporary folder by default); prints a markdown
table. A bench runner calls :func:`run`. Each stitch and each copy runs in a fresh subprocess, whose
peak resident memory (``ru_maxrss``) is reported beside its resident memory after imports (the baseline).
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from linumpy_motor import ngff, synthetic
from linumpy_motor.stitch import stitch_slice

SIZES = ((4, 4), (8, 8), (16, 16))
TILE = (4, 256, 256)
OVERLAP = 0.2
TILES_PER_SHARD = 4


def _transform() -> np.ndarray:
    return synthetic.true_transform(synthetic.SyntheticSpec(tile_shape=TILE, overlap=OVERLAP))


def make_grid(path: Path, nx: int, ny: int, seed: int = 0) -> None:
    """Write an OCT-like mosaic grid (speckle on an elliptic tissue blob, vignetted tiles), shard by shard.

    Content is cheap to generate (no scene rendering); throughput and memory do not depend on it.
    """
    nz, h, w = TILE
    rng = np.random.default_rng(seed)
    group = ngff.create_group(path, "0.5")
    shard = (nz, TILES_PER_SHARD * h, TILES_PER_SHARD * w)
    array = ngff.create_level(group, "0", (nz, nx * h, ny * w), np.float32, TILE, shards=shard)
    vignette = synthetic.vignetting_field((h, w), 0.3)
    for i0 in range(0, nx, TILES_PER_SHARD):
        for j0 in range(0, ny, TILES_PER_SHARD):
            i1, j1 = min(i0 + TILES_PER_SHARD, nx), min(j0 + TILES_PER_SHARD, ny)
            block = np.empty((nz, (i1 - i0) * h, (j1 - j0) * w), dtype=np.float32)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    tissue = ((i + 0.5) / nx - 0.5) ** 2 + ((j + 0.5) / ny - 0.5) ** 2 < 0.2
                    tile = rng.exponential(1.0, (nz, h, w)).astype(np.float32) * (1.0 if tissue else 0.02)
                    block[:, (i - i0) * h:(i - i0 + 1) * h, (j - j0) * w:(j - j0 + 1) * w] = tile * vignette
            array[:, i0 * h:i1 * h, j0 * w:j1 * w] = block
    group.attrs.update(ngff.root_attributes(ngff.multiscales([(0.2, 0.003, 0.003)], ("millimeter",) * 3, "0.5"),
                                            "0.5"))


def copy_store(source: Path, target: Path, workers: int = 2) -> int:
    """Read every shard of level 0 and write it to a new store of the same layout; returns bytes copied."""
    src = zarr.open_group(str(source), mode="r")["0"]
    dst = ngff.create_level(ngff.create_group(target, "0.5"), "0", src.shape, src.dtype, src.chunks, shards=src.shards)
    step = src.shards

    def one(z: int, y: int, x: int) -> None:
        region = (slice(z, z + step[0]), slice(y, y + step[1]), slice(x, x + step[2]))
        dst[region] = src[region]

    with ThreadPoolExecutor(workers) as pool:
        for future in [pool.submit(one, z, y, x) for z in range(0, src.shape[0], step[0])
                       for y in range(0, src.shape[1], step[1]) for x in range(0, src.shape[2], step[2])]:
            future.result()
    return src.nbytes


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _current_rss_mb() -> float:
    """Resident memory now (Linux ``/proc``; the peak so far elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * resource.getpagesize() / 2**20
    except OSError:
        return _peak_rss_mb()


def _child(task: str, source: str, target: str) -> None:
    """Run one stitch or copy in this (fresh) process and print its timing and memory as JSON."""
    baseline = _current_rss_mb()
    start = time.perf_counter()
    if task == "stitch":
        summary = stitch_slice(source, target, _transform(), workers=2)
        nbytes = 4 * math.prod(summary["shape"])
    else:
        nbytes = copy_store(Path(source), Path(target))
    print(json.dumps({"seconds": time.perf_counter() - start, "bytes": nbytes, "baseline_mb": baseline,
                      "peak_mb": _peak_rss_mb()}))


def _measure(task: str, source: Path, target: Path) -> dict:
    result = subprocess.run([sys.executable, __file__, "--child", task, str(source), str(target)],
                            capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def run(workdir: str | Path, sizes: tuple[tuple[int, int], ...] = SIZES) -> list[dict]:
    """Benchmark every grid size ``(nx, ny)`` in ``sizes``; returns one row per size.

    Row keys: ``grid``, ``tile``, ``output_mb`` (level 0, float32), ``stitch_s`` (flat-field
    estimate, level 0 and pyramid), ``stitch_mb_s`` (level-0 output MB/s), ``copy_s``, ``copy_mb_s``
    (input MB/s), ``stitch_peak_mb`` (peak resident memory), ``stitch_extra_mb`` (that peak over
    the resident memory after imports), ``copy_peak_mb``.
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    for nx, ny in sizes:
        source = workdir / f"grid_{nx}x{ny}.ome.zarr"
        if not source.exists():
            make_grid(source, nx, ny)
        stitch = _measure("stitch", source, workdir / f"stitch_{nx}x{ny}.ome.zarr")
        copy = _measure("copy", source, workdir / f"copy_{nx}x{ny}.zarr")
        out_mb, in_mb = stitch["bytes"] / 2**20, copy["bytes"] / 2**20
        rows.append({
            "grid": f"{nx}x{ny}", "tile": "x".join(map(str, TILE)), "output_mb": round(out_mb, 1),
            "stitch_s": round(stitch["seconds"], 2), "stitch_mb_s": round(out_mb / stitch["seconds"], 1),
            "copy_s": round(copy["seconds"], 2), "copy_mb_s": round(in_mb / copy["seconds"], 1),
            "stitch_peak_mb": round(stitch["peak_mb"]),
            "stitch_extra_mb": round(stitch["peak_mb"] - stitch["baseline_mb"]),
            "copy_peak_mb": round(copy["peak_mb"]),
        })
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _child(*argv[1:4])
        return
    if argv:
        rows = run(argv[0])
    else:
        with tempfile.TemporaryDirectory() as tmp:
            rows = run(tmp)
    print(markdown(rows) + "\n")
    for key in ("stitch_peak_mb", "stitch_extra_mb"):
        values = [max(row[key], 1) for row in rows]
        print(f"{key} growth per 4x slice area: {[round(b / a, 2) for a, b in zip(values, values[1:])]}")


if __name__ == "__main__":
    main(sys.argv[1:])
