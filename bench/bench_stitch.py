#!/usr/bin/env python3
"""Stitch throughput, CPU, peak memory and core scaling on upstream-shaped slices, beside an honest copy.

The slices are shaped like what the acquisition tools write (``mosaic_grid_3d_zNN.ome.zarr``):
NGFF 0.5, float32, **one chunk per whole tile** (all Z planes, 64x256x256) and shards of 2x2
tiles, zstd: 8x8 tiles are 1.07 GB (2**30 bytes) of input, 25x25 tiles 10.5 GB.

The baseline is the fastest honest way to do the same I/O: :func:`copy_store` decodes every shard
of the input and encodes it, with the same chunks, shards and codec, into a new store, one shard
per task on a pool of as many threads as the stitch gets, every chunk written (as the stitch does:
no comparison with the fill value). Copy and stitch each run in a fresh subprocess of the same
kind, alternated ``repeats`` times in the same run; the best wall time of each is kept. For both,
the parent reports wall seconds, CPU seconds (user + system of the child, from
``getrusage(RUSAGE_CHILDREN)``), cores used (CPU / wall), the child's peak resident memory
(``VmHWM``) and the 1-minute load average before the run. Throughputs are both in *input* MB/s (the
same bytes are decoded), so ``stitch / copy`` is ``copy seconds / stitch seconds``.

Usage: ``python bench/bench_stitch.py [WORKDIR] [--sizes 8x8,25x25] [--quick] [--repeats N]
[--scaling 8x8] [--keep]`` (WORKDIR defaults to ``bench/_work/stitch``); prints markdown tables. A
bench runner calls :func:`run` and :func:`scaling`. The input slices are deleted afterwards unless
``--keep``.
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
from linumpy_motor.io.grid import open_mosaic
from linumpy_motor.parallel import available_cores
from linumpy_motor.register.flatfield import estimate_flatfield
from linumpy_motor.stitch.assemble import stitch_slice

SIZES = ((8, 8), (25, 25))  # 1.07 and 10.5 GB of input
QUICK_SIZES = ((4, 4),)  # 0.27 GB: a smoke run
REPEATS = 2  # copy and stitch alternated this many times per size; the best of each is kept
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
    """Copy level 0 of ``source`` into a new store with the same chunks, shards and codec; returns its bytes.

    One task per shard on ``workers`` threads (zstd decoding and encoding release the GIL), each
    shard decoded once and encoded once, every chunk written (``write_empty_chunks``: the comparison
    with the fill value would only slow the copy down, and the stitch skips it too).
    """
    src = zarr.open_group(str(source), mode="r")["0"]
    dst = ngff.create_level(ngff.create_group(target, "0.5"), "0", src.shape, src.dtype, src.chunks,
                            shards=src.shards)
    if [type(c).__name__ for c in src.metadata.codecs] != [type(c).__name__ for c in dst.metadata.codecs]:
        raise RuntimeError(f"copy codecs {dst.metadata.codecs} differ from the input's {src.metadata.codecs}")
    dst = dst.with_config({"write_empty_chunks": True})
    step = src.shards or src.chunks

    def one(region: tuple[slice, slice, slice]) -> None:
        dst[region] = src[region]

    regions = [(slice(z, z + step[0]), slice(y, y + step[1]), slice(x, x + step[2]))
               for z in range(0, src.shape[0], step[0]) for y in range(0, src.shape[1], step[1])
               for x in range(0, src.shape[2], step[2])]
    with ThreadPoolExecutor(workers) as pool:
        for _ in pool.map(one, regions):
            pass
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
    before = resource.getrusage(resource.RUSAGE_SELF)
    start = time.perf_counter()
    if task in ("stitch", "stitch-gpu"):
        summary = stitch_slice(source, target, _transform(), threads=threads, use_gpu=task == "stitch-gpu",
                               flatfield=_flatfield_file(Path(source)))
        out_bytes, decode = 4 * math.prod(summary["shape"]), summary["decode_factor"]
    else:
        out_bytes, decode = copy_store(Path(source), Path(target), threads), 1.0
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF)
    work_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    print(json.dumps({"seconds": seconds, "work_cpu_s": work_cpu, "out_bytes": out_bytes, "baseline_mb": baseline,
                      "peak_mb": _peak_rss_mb(), "decode_factor": decode}))


def _load() -> float:
    """The 1-minute load average (other work on the machine: the figures are only comparable at low load)."""
    return os.getloadavg()[0]


def _measure(task: str, source: Path, target: Path, cores: int, keep: bool = False) -> dict:
    """Run ``_child`` in a fresh process on ``cores`` CPUs; the output is deleted unless ``keep``.

    Adds ``cpu_s`` (user + system seconds of the whole child, all its threads, start-up and imports
    included: from ``getrusage(RUSAGE_CHILDREN)`` here), ``cores_used`` (the child's own CPU seconds
    over the copy or stitch proper, ``work_cpu_s``, per wall second of it) and ``load`` (1-minute load
    average before the run).
    """
    load = _load()
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        result = subprocess.run([sys.executable, __file__, "--child", task, str(source), str(target), str(cores)],
                                capture_output=True, text=True, check=True)
    finally:
        if not keep:
            shutil.rmtree(target, ignore_errors=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    row = json.loads(result.stdout.strip().splitlines()[-1])
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    row.update(cpu_s=cpu, cores_used=row["work_cpu_s"] / row["seconds"], load=load)
    return row


def _flatfield_file(source: Path) -> Path:
    """The slice's flat field as the measure step writes it (estimated once, beside the input): the pipeline's
    stitch reads that file and estimates nothing."""
    path = source.with_name(source.name.removesuffix(".ome.zarr") + "_flatfield.npy")
    if not path.exists():
        field = estimate_flatfield(open_mosaic(source))
        np.save(path, field if field is not None else np.ones(TILE[1:], dtype=np.float32))
    return path


def _input(workdir: Path, nx: int, ny: int) -> tuple[Path, float]:
    """The upstream-shaped slice of ``nx`` by ``ny`` tiles (made once) and its size in MB."""
    source = workdir / f"mosaic_grid_3d_{nx}x{ny}.ome.zarr"
    if not (source / "zarr.json").exists() or "0" not in zarr.open_group(str(source), mode="r"):
        shutil.rmtree(source, ignore_errors=True)
        make_grid(source, nx, ny)
        _flatfield_file(source).unlink(missing_ok=True)
    _flatfield_file(source)
    return source, math.prod(TILE) * nx * ny * 4 / 2**20


def run(workdir: str | Path = WORKDIR, sizes: tuple[tuple[int, int], ...] = SIZES, cores: int | None = None,
        keep: bool = False, repeats: int = REPEATS) -> list[dict]:
    """Benchmark every grid size ``(nx, ny)`` in ``sizes`` on ``cores`` CPUs (default: all given).

    Copy and stitch alternate ``repeats`` times on each input; each column is the best (shortest)
    run of its kind, with that run's CPU seconds, cores and load.

    Row keys: ``grid``, ``input_mb``, ``output_mb`` (level 0), ``cores``, ``copy_s``, ``stitch_s``
    (feather, level 0 and pyramid, with the slice's flat field from a file as in the pipeline),
    ``stitch_vs_copy`` (copy_s / stitch_s), ``copy_mb_s`` and ``stitch_mb_s`` (input MB/s),
    ``cpu_s_copy`` and ``cpu_s_stitch`` (CPU seconds of the work proper in the child, all threads: less
    sensitive than wall time to other jobs), ``cores_copy`` and ``cores_stitch`` (those CPU seconds /
    wall seconds), ``decode_factor`` (input chunks decoded per chunk by the stitch proper, see
    :func:`stitch_slice`), ``stitch_peak_mb`` (peak resident memory), ``stitch_extra_mb`` (that peak
    over the resident memory after imports), ``copy_peak_mb``, ``load_copy`` and ``load_stitch``
    (1-minute load average before the kept runs); with a CUDA device also ``gpu_s`` and ``gpu_vs_copy``
    (the same stitch with ``use_gpu=True``).
    """
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    cores = cores or available_cores()
    rows = []
    for nx, ny in sizes:
        source, in_mb = _input(workdir, nx, ny)
        copies, stitches = [], []
        for _ in range(repeats):
            copies.append(_measure("copy", source, workdir / "copy.zarr", cores))
            stitches.append(_measure("stitch", source, workdir / "stitch.ome.zarr", cores))
        copy = min(copies, key=lambda r: r["seconds"])
        stitch = min(stitches, key=lambda r: r["seconds"])
        rows.append({
            "grid": f"{nx}x{ny}", "input_mb": round(in_mb), "output_mb": round(stitch["out_bytes"] / 2**20),
            "cores": cores, "copy_s": round(copy["seconds"], 2), "stitch_s": round(stitch["seconds"], 2),
            "stitch_vs_copy": round(copy["seconds"] / stitch["seconds"], 2),
            "copy_mb_s": round(in_mb / copy["seconds"]), "stitch_mb_s": round(in_mb / stitch["seconds"]),
            "cpu_s_copy": round(copy["work_cpu_s"], 1), "cpu_s_stitch": round(stitch["work_cpu_s"], 1),
            "cores_copy": round(copy["cores_used"], 2), "cores_stitch": round(stitch["cores_used"], 2),
            "decode_factor": stitch["decode_factor"],
            "stitch_peak_mb": round(stitch["peak_mb"]),
            "stitch_extra_mb": round(stitch["peak_mb"] - stitch["baseline_mb"]),
            "copy_peak_mb": round(copy["peak_mb"]),
            "load_copy": round(copy["load"], 2), "load_stitch": round(stitch["load"], 2),
        })
        if gpu_available():
            gpu = _measure("stitch-gpu", source, workdir / "stitch.ome.zarr", cores)
            rows[-1].update(gpu_s=round(gpu["seconds"], 1), gpu_vs_copy=round(copy["seconds"] / gpu["seconds"], 2))
        if not keep:
            shutil.rmtree(source)
            _flatfield_file(source).unlink(missing_ok=True)
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
            result = _measure("stitch", source, workdir / "stitch.ome.zarr", n)
            seconds, load = result["seconds"], result["load"]
            one = one or seconds
            rows.append({"grid": f"{size[0]}x{size[1]}", "repeat": repeat + 1, "cores": n,
                         "stitch_s": round(seconds, 1), "speedup": round(one / seconds, 2),
                         "cpu_per_wall": round(result["cores_used"], 2), "load": load})
    if not keep:
        shutil.rmtree(source)
        _flatfield_file(source).unlink(missing_ok=True)
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
    parser.add_argument("--sizes", default=",".join(f"{a}x{b}" for a, b in SIZES), help="grids, e.g. 8x8,25x25")
    parser.add_argument("--quick", action="store_true", help=f"only {QUICK_SIZES}, one repeat (a smoke run)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="copy/stitch alternations per size")
    parser.add_argument("--scaling", default="x".join(map(str, SCALING_SIZE)), help="grid of the 1 vs all cores run")
    parser.add_argument("--keep", action="store_true", help="keep the input slices")
    args = parser.parse_args(argv)
    sizes = tuple(tuple(int(n) for n in size.split("x")) for size in args.sizes.split(","))
    if args.quick:
        sizes, args.repeats, args.scaling = QUICK_SIZES, 1, "x".join(map(str, QUICK_SIZES[0]))
    rows = run(args.workdir, sizes, keep=args.keep, repeats=args.repeats)
    print(markdown(rows) + "\n")
    peaks = [row["stitch_peak_mb"] for row in rows]
    print(f"peak memory, largest / smallest slice: {max(peaks) / min(peaks):.2f}\n")
    if args.scaling:
        print(markdown(scaling(args.workdir, tuple(int(n) for n in args.scaling.split("x")), keep=args.keep)))


if __name__ == "__main__":
    main(sys.argv[1:])
