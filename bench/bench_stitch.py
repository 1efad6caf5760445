#!/usr/bin/env python3
"""Stitch throughput, peak memory and core scaling on upstream-shaped slices, beside a plain copy.

The slices are shaped like what the acquisition tools write (``mosaic_grid_3d_zNN.ome.zarr``):
NGFF 0.5, float32, **one chunk per whole tile** (all Z planes) and shards of 2x2 tiles. Each stitch
and each copy runs in a fresh subprocess, whose peak resident memory (``ru_maxrss``) is reported
beside its resident memory after imports (the baseline). The copy reads every shard of the input and
writes it to a new store of the same layout with the same number of threads: the I/O floor.
Throughputs are both in *input* MB/s (the same bytes are decoded), so ``stitch / copy`` is
``copy seconds / stitch seconds``.

Usage: ``python bench/bench_stitch.py [WORKDIR] [--sizes 6x6,8x8,25x25] [--scaling 8x8] [--keep]``
(WORKDIR defaults to ``bench/_work/stitch``); prints markdown tables. A bench runner calls :func:`run`
and :func:`scaling`. The input slices are deleted afterwards unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import zarr

from linumpy_motor import synthetic
from linumpy_motor.backend import gpu_available
from linumpy_motor.io import ngff
from linumpy_motor.parallel import available_cores
from linumpy_motor.stitch.assemble import stitch_slice

SIZES = ((6, 6), (8, 8), (25, 25))  # 0.6, 1.1 and 10.5 GB of input
SCALING_SIZE = (8, 8)
TILE = (64, 256, 256)
OVERLAP = 0.2
TILES_PER_SHARD = 2
DISTINCT_TILES = 8  # random tiles generated, then reused (content does not change throughput)
WORKDIR = Path(__file__).resolve().parent / "_work" / "stitch"


def _transform() -> np.ndarray:
    return synthetic.true_transform(synthetic.SyntheticSpec(tile_shape=TILE, overlap=OVERLAP))


def make_grid(path: Path, nx: int, ny: int, seed: int = 0) -> None:
    """Write an OCT-like mosaic grid (speckle on an elliptic tissue blob, vignetted tiles), shard by shard.

    Content is cheap to generate (a few random tiles reused, no scene rendering); throughput and memory
    do not depend on it.
    """
    nz, h, w = TILE
    rng = np.random.default_rng(seed)
    group = ngff.create_group(path, "0.5")
    shard = (nz, TILES_PER_SHARD * h, TILES_PER_SHARD * w)
    array = ngff.create_level(group, "0", (nz, nx * h, ny * w), np.float32, TILE, shards=shard)
    vignette = synthetic.vignetting_field((h, w), 0.3)
    pool = [rng.exponential(1.0, (nz, h, w)).astype(np.float32) * vignette for _ in range(DISTINCT_TILES)]
    for i0 in range(0, nx, TILES_PER_SHARD):
        for j0 in range(0, ny, TILES_PER_SHARD):
            i1, j1 = min(i0 + TILES_PER_SHARD, nx), min(j0 + TILES_PER_SHARD, ny)
            block = np.empty((nz, (i1 - i0) * h, (j1 - j0) * w), dtype=np.float32)
            for i in range(i0, i1):
                for j in range(j0, j1):
                    tissue = ((i + 0.5) / nx - 0.5) ** 2 + ((j + 0.5) / ny - 0.5) ** 2 < 0.2
                    tile = pool[(i * ny + j) % DISTINCT_TILES] * np.float32(1.0 if tissue else 0.02)
                    block[:, (i - i0) * h:(i - i0 + 1) * h, (j - j0) * w:(j - j0 + 1) * w] = tile
            array[:, i0 * h:i1 * h, j0 * w:j1 * w] = block
    group.attrs.update(ngff.root_attributes(ngff.multiscales([(0.2, 0.003, 0.003)], ("millimeter",) * 3, "0.5"),
                                            "0.5"))


def copy_store(source: Path, target: Path, workers: int) -> int:
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


def _status_mb(field: str) -> float:
    """A memory line of ``/proc/self/status`` in MB (Linux), else the peak from ``getrusage``.

    ``VmHWM`` (the peak) starts afresh at ``exec``; ``ru_maxrss`` does not (it keeps the forking
    parent's resident memory), so it would credit a child with its parent's data.
    """
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def _current_rss_mb() -> float:
    return _status_mb("VmRSS")


def _child(task: str, source: str, target: str, cores: str) -> None:
    """Run one stitch or copy in this (fresh) process on its first ``cores`` CPUs (affinity: zarr's own
    decoding threads are held to them too) and print its timing and memory as JSON."""
    os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:int(cores)])
    threads = available_cores()
    baseline = _current_rss_mb()
    start, cpu = time.perf_counter(), time.process_time()
    if task in ("stitch", "stitch-gpu"):
        summary = stitch_slice(source, target, _transform(), threads=threads, use_gpu=task == "stitch-gpu")
        out_bytes, decode = 4 * math.prod(summary["shape"]), summary["decode_factor"]
    else:
        out_bytes, decode = copy_store(Path(source), Path(target), threads), 1.0
    print(json.dumps({"seconds": time.perf_counter() - start, "cpu_s": time.process_time() - cpu,
                      "out_bytes": out_bytes, "baseline_mb": baseline,
                      "peak_mb": _peak_rss_mb(), "decode_factor": decode}))


def _measure(task: str, source: Path, target: Path, cores: int, keep: bool = False) -> dict:
    """Run ``_child`` in a fresh process on ``cores`` CPUs; the output is deleted unless ``keep``."""
    try:
        result = subprocess.run([sys.executable, __file__, "--child", task, str(source), str(target), str(cores)],
                                capture_output=True, text=True, check=True)
    finally:
        if not keep:
            shutil.rmtree(target, ignore_errors=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _input(workdir: Path, nx: int, ny: int) -> tuple[Path, float]:
    """The upstream-shaped slice of ``nx`` by ``ny`` tiles (made once) and its size in MB."""
    source = workdir / f"mosaic_grid_3d_{nx}x{ny}.ome.zarr"
    if not (source / "zarr.json").exists() or "0" not in zarr.open_group(str(source), mode="r"):
        shutil.rmtree(source, ignore_errors=True)
        make_grid(source, nx, ny)
    return source, math.prod(TILE) * nx * ny * 4 / 2**20


def run(workdir: str | Path = WORKDIR, sizes: tuple[tuple[int, int], ...] = SIZES, cores: int | None = None,
        keep: bool = False) -> list[dict]:
    """Benchmark every grid size ``(nx, ny)`` in ``sizes`` on ``cores`` CPUs (default: all given).

    Row keys: ``grid``, ``input_mb``, ``output_mb`` (level 0), ``cores``, ``copy_s``, ``stitch_s``
    (flat-field estimate, feather, level 0 and pyramid), ``copy_mb_s`` and ``stitch_mb_s`` (input
    MB/s), ``stitch_vs_copy`` (copy_s / stitch_s), ``cpu_s_copy`` and ``cpu_s_stitch`` (CPU seconds
    of all the process's threads: less sensitive than wall time to other jobs), ``decode_factor``
    (input chunks decoded per chunk by the stitch proper, see :func:`stitch_slice`),
    ``stitch_peak_mb`` (peak resident memory), ``stitch_extra_mb`` (that peak over the resident
    memory after imports), ``copy_peak_mb``; with a CUDA device also ``gpu_s`` and ``gpu_vs_copy``
    (the same stitch with ``use_gpu=True``).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cores = cores or available_cores()
    rows = []
    for nx, ny in sizes:
        source, in_mb = _input(workdir, nx, ny)
        copy = _measure("copy", source, workdir / "copy.zarr", cores)
        stitch = _measure("stitch", source, workdir / "stitch.ome.zarr", cores)
        rows.append({
            "grid": f"{nx}x{ny}", "input_mb": round(in_mb), "output_mb": round(stitch["out_bytes"] / 2**20),
            "cores": cores, "copy_s": round(copy["seconds"], 1), "stitch_s": round(stitch["seconds"], 1),
            "copy_mb_s": round(in_mb / copy["seconds"]), "stitch_mb_s": round(in_mb / stitch["seconds"]),
            "stitch_vs_copy": round(copy["seconds"] / stitch["seconds"], 2),
            "cpu_s_copy": round(copy["cpu_s"], 1), "cpu_s_stitch": round(stitch["cpu_s"], 1),
            "decode_factor": stitch["decode_factor"],
            "stitch_peak_mb": round(stitch["peak_mb"]),
            "stitch_extra_mb": round(stitch["peak_mb"] - stitch["baseline_mb"]),
            "copy_peak_mb": round(copy["peak_mb"]),
        })
        if gpu_available():
            gpu = _measure("stitch-gpu", source, workdir / "stitch.ome.zarr", cores)
            rows[-1].update(gpu_s=round(gpu["seconds"], 1), gpu_vs_copy=round(copy["seconds"] / gpu["seconds"], 2))
        if not keep:
            shutil.rmtree(source)
    return rows


def scaling(workdir: str | Path = WORKDIR, size: tuple[int, int] = SCALING_SIZE, repeats: int = 2,
            keep: bool = False) -> list[dict]:
    """Stitch seconds on 1 core and on every core given (CPU affinity, default threads), alternated
    ``repeats`` times.

    Row keys: ``grid``, ``repeat``, ``cores``, ``stitch_s``, ``speedup`` (1-core seconds of the
    same repeat / these seconds), ``cpu_per_wall`` (CPU seconds of the process per second: the cores
    it actually kept busy), ``load`` (the 1-minute load average before the run: other work on the
    machine skews the ratio).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    source, _ = _input(workdir, *size)
    cores = available_cores()
    rows = []
    for repeat in range(repeats):
        one = None
        for n in sorted({1, cores}):
            load = float(Path("/proc/loadavg").read_text().split()[0])
            result = _measure("stitch", source, workdir / "stitch.ome.zarr", n)
            seconds = result["seconds"]
            one = one or seconds
            rows.append({"grid": f"{size[0]}x{size[1]}", "repeat": repeat + 1, "cores": n,
                         "stitch_s": round(seconds, 1), "speedup": round(one / seconds, 2),
                         "cpu_per_wall": round(result["cpu_s"] / seconds, 2), "load": load})
    if not keep:
        shutil.rmtree(source)
    return rows


def markdown(rows: list[dict]) -> str:
    """The rows as a markdown table."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(row[k]) for k in keys) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _child(*argv[1:5])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workdir", nargs="?", default=WORKDIR)
    parser.add_argument("--sizes", default=",".join(f"{a}x{b}" for a, b in SIZES), help="grids, e.g. 6x6,25x25")
    parser.add_argument("--scaling", default="x".join(map(str, SCALING_SIZE)), help="grid of the 1 vs all cores run")
    parser.add_argument("--keep", action="store_true", help="keep the input slices")
    args = parser.parse_args(argv)
    sizes = tuple(tuple(int(n) for n in size.split("x")) for size in args.sizes.split(","))
    rows = run(args.workdir, sizes, keep=args.keep)
    print(markdown(rows) + "\n")
    peaks = [row["stitch_peak_mb"] for row in rows]
    print(f"peak memory, largest / smallest slice: {max(peaks) / min(peaks):.2f}\n")
    if args.scaling:
        print(markdown(scaling(args.workdir, tuple(int(n) for n in args.scaling.split("x")), keep=args.keep)))


if __name__ == "__main__":
    main(sys.argv[1:])
