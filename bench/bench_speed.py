"""Speed of measure + fit on real-image mosaics, ours against the peers, same inputs, one process (issue 22).

The mosaics come from ``realmosaic`` (photographs through OCT-like optics, a stage with θ, skew
and scale error; no code shared with the library), one size per row: a few slices of a small
grid and one slice of two large ones. Every tool gets the same in-memory planes (each slice's
best plane, as NumPy arrays); the tools take turns (:func:`best_of`) after a warm-up call of each,
and the shortest call counts. A peer solves one slice at a time (its per-slice matrices are
averaged); ours measures every slice and fits one pooled model.

*Ours* is what a user runs in memory: :func:`~linumpy_motor.register.measure.measure_volume` on
the plane at its defaults (flat field estimated from the slice's tiles, then the pairs, on threads as
many as the cores given: ``MeasureOptions.threads``), then :func:`~linumpy_motor.register.fit.fit_pooled`.
The peers run on one core (their code has no threads; BLAS is held to one thread for every tool), so
the CPU-time ratio is reported beside the wall-time one. Beside it, *ours from zarr*: the slices (every
plane: the plane choice runs where a slice has several) written as sharded NGFF 0.5 stores and
measured and fitted by :func:`~linumpy_motor.mosaic.motor.pool_pairs_and_fit_global_affine`.
The speed target compares the in-memory time, which is what the peers get, with the faster
ASHLAR setting.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import peers
import realmosaic as rm

from linumpy_motor.backend import gpu_available
from linumpy_motor.mosaic.motor import pool_pairs_and_fit_global_affine
from linumpy_motor.register.fit import fit_pooled
from linumpy_motor.register.measure import MeasureOptions, band_reader, measure_grid_pairs, measure_volume

OVERLAP = 0.2
PHOTO = "retina"
MIN_TOTAL_S = 2.0


@dataclass(frozen=True)
class Size:
    """One timed mosaic size: grid, tile size, slices, planes per slice, and at least ``calls`` calls per tool."""

    nx: int
    ny: int
    tile: int
    slices: int
    nz: int
    calls: int
    seed: int

    @property
    def label(self) -> str:
        """``6x7@160``: tile rows x columns @ tile size (px)."""
        return f"{self.nx}x{self.ny}@{self.tile}"


SIZES = (Size(6, 7, 160, 3, 5, 3, 2201), Size(24, 28, 192, 1, 1, 2, 2202), Size(40, 40, 160, 1, 1, 2, 2203))
"""The issue's three grid sizes. 6x7: the 3-slice, 5-plane retina mosaic of the real-image benchmark;
24x28 of 192 px and 40x40 of 160 px tiles: one slice of one plane each (ASHLAR's call stays under a
minute on a 2-core machine; the generator's time grows with the planes)."""
QUICK_SIZES = (Size(6, 7, 160, 3, 5, 1, 2201), Size(12, 14, 160, 1, 1, 1, 2204))
M2STITCH_MAX_TILES = 100
"""m2stitch is timed on grids up to this many tiles (it takes minutes on the large ones)."""
PEERS: tuple[tuple[str, str, Callable[[np.ndarray, int, int, float], peers.ToolResult]], ...] = (
    ("ashlar_s0", "ashlar", lambda p, nx, ny, ov: peers.ashlar(p, nx, ny, ov, filter_sigma=0.0)),
    ("ashlar_s1", "ashlar", lambda p, nx, ny, ov: peers.ashlar(p, nx, ny, ov, filter_sigma=1.0)),
    ("m2stitch", "m2stitch", lambda p, nx, ny, ov: peers.m2stitch(p, nx, ny, ov, ncc_threshold=0.1)),
)
"""(row key, package, call): ASHLAR at filter_sigma 0 (its default) and 1 (its most accurate on these
mosaics), m2stitch at NCC threshold 0.1 (its default 0.5 fails on speckle)."""
ASHLAR_KEYS = ("ashlar_s0", "ashlar_s1")


def best_of(fns: Mapping[str, Callable[[], object]], repeats: int, min_total_s: float = MIN_TOTAL_S,
            max_calls: int = 50, cpu: dict[str, float] | None = None) -> dict[str, float]:
    """Shortest wall time (s) of each function, calling them in turn (round-robin).

    Each gets at least ``repeats`` calls, and more until ``min_total_s`` of its own time is spent
    (at most ``max_calls``): the same rule for every tool, like ``timeit``'s autorange. Taking
    turns spreads the bursts of other jobs on a shared machine over all tools alike. ``cpu``, when
    given, receives each function's shortest CPU time (this process, all its threads): what other
    jobs on the machine disturb least.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu_times: dict[str, list[float]] = {name: [] for name in fns}

    def wants_more(name: str) -> bool:
        done = times[name]
        return len(done) < repeats or (sum(done) < min_total_s and len(done) < max_calls)

    while any(wants_more(name) for name in fns):
        for name, fn in fns.items():
            if wants_more(name):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                times[name].append(time.perf_counter() - start)
                cpu_times[name].append(time.process_time() - start_cpu)
    if cpu is not None:
        cpu.update({name: min(done) for name, done in cpu_times.items()})
    return {name: min(done) for name, done in times.items()}


def make_mosaic(size: Size, workdir: Path) -> rm.RealDraw:
    """The draw of ``size`` (retina photograph), generated once and kept under ``workdir`` as ``.npz``."""
    spec = rm.RealSpec(photo=PHOTO, nx=size.nx, ny=size.ny, tile_hw=(size.tile, size.tile), nz=size.nz,
                       overlap=OVERLAP)
    path = workdir / f"real_{size.label}_{size.slices}x{size.nz}_{size.seed}.npz"
    if path.exists():
        saved = np.load(path)
        stage = rm.Stage(A_true=saved["A_true"], backlash=np.zeros(2), theta_deg=0.0, skew_deg=0.0, scale=np.ones(2))
        slices = [rm.RealSlice(volume=saved[f"volume{k}"], positions=saved[f"positions{k}"],
                               bumped=np.zeros(size.nx * size.ny, dtype=bool), tissue=np.ones(size.nx * size.ny),
                               best_plane=int(saved["best_plane"])) for k in range(size.slices)]
        return rm.RealDraw(spec=spec, stage=stage, slices=slices, floor=saved["floor"])
    draw = rm.make_draw(spec, seed=size.seed, n_slices=size.slices)
    workdir.mkdir(parents=True, exist_ok=True)
    np.savez(path, A_true=draw.stage.A_true, floor=draw.floor, best_plane=draw.slices[0].best_plane,
             **{f"volume{k}": s.volume for k, s in enumerate(draw.slices)},
             **{f"positions{k}": s.positions for k, s in enumerate(draw.slices)})
    return draw


def ours_in_memory(volumes: Sequence[np.ndarray], nx: int, ny: int, overlap: float) -> np.ndarray:
    """Our pooled A from in-memory mosaic grids ``(Z, nx*h, ny*w)``: ``measure_volume`` at its defaults
    (plane choice when Z > 1, flat field estimated, pairs), then ``fit_pooled``."""
    h, w = volumes[0].shape[1] // nx, volumes[0].shape[2] // ny
    pairs = {}
    for sid, volume in enumerate(volumes):
        pairs[sid], _, _ = measure_volume(lambda zs, rows, cols, v=volume: v[zs, rows, cols],
                                          (volume.shape[0], h, w), nx, ny, overlap)
    model, _ = fit_pooled(pairs, {sid: (nx, ny) for sid in pairs}, (volumes[0].shape[0], h, w), overlap)
    return model.matrix


def write_stores(volumes: Sequence[np.ndarray], tile: int, folder: Path) -> list[tuple[int, Path]]:
    """Each volume as an upstream-style sharded NGFF 0.5 mosaic grid (``realmosaic.write_ome_zarr``)."""
    folder.mkdir(parents=True, exist_ok=True)
    return [(k, rm.write_ome_zarr(folder / f"mosaic_grid_3d_z{k:02d}.ome.zarr", volume, (tile, tile)))
            for k, volume in enumerate(volumes)]


def _peer_matrix(fn: Callable[[np.ndarray, int, int, float], peers.ToolResult], planes: Sequence[np.ndarray],
                 nx: int, ny: int) -> np.ndarray | None:
    """A peer's per-slice matrices averaged (None when it solved no slice)."""
    found = [r.transform for r in (fn(p, nx, ny, OVERLAP) for p in planes) if r.transform is not None]
    return np.mean(found, axis=0) if found else None


def _warm_up(installed: Mapping[str, str | None], workdir: Path) -> None:
    """Every tool once on a small mosaic (imports, caches, FFT plans) before anything is timed."""
    draw = make_mosaic(Size(3, 3, 160, 1, 1, 1, 2200), workdir)
    planes = [s.volume[s.best_plane] for s in draw.slices]
    ours_in_memory([p[None] for p in planes], 3, 3, OVERLAP)
    for _, package, fn in PEERS:
        if installed.get(package):
            fn(planes[0], 3, 3, OVERLAP)


def run(workdir: Path, installed: Mapping[str, str | None], *, sizes: Sequence[Size] = SIZES,
        log: Callable[[str], None] = print) -> list[dict]:
    """One row per mosaic size: times, time ratios and accuracy of ours and the peers.

    Parameters
    ----------
    workdir : Path
        Scratch folder: the generated mosaics (kept between runs) and our zarr stores.
    installed : mapping
        Peer name (``m2stitch``, ``ashlar``) to its version, None to leave it out.
    sizes : sequence of Size
        The mosaic sizes.
    log : callable
        Progress printer.

    Returns
    -------
    list of dict
        ``grid`` (``6x7@160``), ``tiles``, ``slices``, ``planes``, ``calls``; seconds ``ours_s`` (in
        memory), ``ours_zarr_s`` and ``<peer>_s`` for ``ashlar_s0``, ``ashlar_s1``, ``m2stitch`` (None
        when not timed); ``<peer>_ratio`` (peer time / ours); ``best_ashlar_ratio`` (the faster ASHLAR
        setting's time / ours); ``<tool>_cpu_s`` and ``best_ashlar_cpu_ratio``, the same in CPU time;
        ``<tool>_cores``, CPU over wall time of its shortest calls (the cores it kept busy);
        ``<tool>_err_px`` (max |A − A_true|) for ``floor``, ``ours``, ``ours_zarr`` and the peers.
    """
    _warm_up(installed, workdir)
    rows = []
    for size in sizes:
        start = time.perf_counter()
        draw = make_mosaic(size, workdir)
        log(f"  [speed] {size.label}: mosaic of {size.slices} slice(s) x {size.nz} plane(s) ready "
            f"in {time.perf_counter() - start:.0f} s")
        planes = [s.volume[s.best_plane] for s in draw.slices]
        stores = write_stores([s.volume for s in draw.slices], size.tile, workdir / "zarr" / size.label)
        found: dict[str, np.ndarray | None] = {}

        def keep(name: str, fn: Callable[[], np.ndarray | None]) -> Callable[[], None]:
            return lambda: found.__setitem__(name, fn())

        calls = {"ours": keep("ours", lambda: ours_in_memory([p[None] for p in planes], size.nx, size.ny, OVERLAP)),
                 "ours_zarr": keep("ours_zarr", lambda: pool_pairs_and_fit_global_affine(stores, OVERLAP)[0])}
        for key, package, fn in PEERS:
            if installed.get(package) and (package != "m2stitch" or size.nx * size.ny <= M2STITCH_MAX_TILES):
                calls[key] = keep(key, lambda fn=fn: _peer_matrix(fn, planes, size.nx, size.ny))
        cpu: dict[str, float] = {}
        best = best_of(calls, size.calls, cpu=cpu)
        row: dict = {"grid": size.label, "tiles": size.nx * size.ny, "slices": size.slices, "planes": size.nz,
                     "calls": size.calls, "ours_s": best["ours"], "ours_zarr_s": best["ours_zarr"],
                     "floor_err_px": float(np.abs(draw.floor - draw.stage.A_true).max())}
        row.update({f"{key}_cpu_s": seconds for key, seconds in cpu.items()})
        for key in ("ours", "ours_zarr", *(k for k, _, _ in PEERS)):
            matrix = found.get(key)
            row[f"{key}_err_px"] = None if matrix is None else \
                float(np.abs(np.asarray(matrix) - draw.stage.A_true).max())
        for key, _, _ in PEERS:
            row[f"{key}_s"] = best.get(key)
            row[f"{key}_ratio"] = None if key not in best else best[key] / best["ours"]
        ashlar = [best[k] for k in ASHLAR_KEYS if k in best]
        row["best_ashlar_ratio"] = min(ashlar) / best["ours"] if ashlar else None
        ashlar_cpu = [cpu[k] for k in ASHLAR_KEYS if k in cpu]
        row["best_ashlar_cpu_ratio"] = min(ashlar_cpu) / cpu["ours"] if ashlar_cpu else None
        row.update({f"{key}_cores": cpu[key] / best[key] for key in best if key in cpu and best[key] > 0})
        rows.append(row)
        log(f"  [speed] {size.label}: " + ", ".join(f"{name} {s:.2f} s" for name, s in best.items())
            + (f"; faster ASHLAR / ours {row['best_ashlar_ratio']:.1f}x" if ashlar else ""))
    return rows


def gpu_rows(sizes: Sequence[Size] = SIZES, workdir: Path = Path("."),
             log: Callable[[str], None] = print) -> list[dict]:
    """CuPy against NumPy for the measurement step, one slice per size (empty without CUDA)."""
    if not gpu_available():
        return []
    rows = []
    for size in sizes:
        draw = make_mosaic(size, workdir)
        plane = draw.slices[0].volume[draw.slices[0].best_plane]
        seconds = {}
        for use_gpu in (False, True):
            def measure(use_gpu=use_gpu):
                return measure_grid_pairs(band_reader(plane, size.tile), (size.tile, size.tile), size.nx, size.ny,
                                          OVERLAP, MeasureOptions(use_gpu=use_gpu))

            measure()
            seconds[use_gpu] = best_of({"measure": measure}, max(size.calls, 2))["measure"]
        rows.append({"grid": size.label, "numpy_s": seconds[False], "cupy_s": seconds[True],
                     "speedup": seconds[False] / seconds[True]})
        log(f"  [gpu] {size.label}: numpy {seconds[False]:.3f} s, cupy {seconds[True]:.3f} s")
    return rows
