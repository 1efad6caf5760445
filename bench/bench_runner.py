"""Wall time of the embedded runner end to end: ``linumpy-motor run INPUT OUTDIR [--workers N]``.

For each 4-slice input (the demo's slices, and larger ones): fresh runs with one and with two workers
(alternating, best of ``repeats`` each, fresh output folders), then each run again on its own output
folder, which resumes and must skip every step (with two workers the command also starts the server
its workers would come from). The fingerprinting of the inputs (what a resumed run must read to know
nothing changed) is timed alone, in this process, beside it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from linumpy_motor import synthetic
from linumpy_motor.io.dataset import discover_slices
from linumpy_motor.pipeline.resume import store_fingerprint

N_SLICES = 4
INPUTS = {
    "demo slices": synthetic.SyntheticSpec(nx=6, ny=7, tile_shape=(8, 160, 160), seed=1),
    "larger slices": synthetic.SyntheticSpec(nx=12, ny=14, tile_shape=(16, 192, 192), seed=21),
}
"""The inputs timed (``make demo``'s grid and tiles, and a larger grid of deeper tiles), 4 slices each."""
REPEATS = 2
RESUMES = 3
"""Resumed reruns timed per worker count, the best kept: a single one took 0.7 s to 1.5 s on a quiet machine."""


def command() -> list[str]:
    """The ``linumpy-motor`` entry point of the running interpreter's environment."""
    return [str(Path(sys.executable).with_name("linumpy-motor"))]


def runner_available() -> str | None:
    """None when ``linumpy-motor run`` exists, else why not."""
    if not Path(command()[0]).exists():
        return f"no {command()[0]}"
    done = subprocess.run([*command(), "run", "--help"], capture_output=True, text=True)
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["exit code != 0"])[-1]


def _timed_run(source: Path, outdir: Path, workers: int, overlap: float) -> tuple[float, str | None]:
    start = time.perf_counter()
    done = subprocess.run([*command(), "run", str(source), str(outdir), "--workers", str(workers),
                           "--overlap", str(overlap), "--no-progress"], capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        return seconds, f"exit {done.returncode}: " + " ".join(done.stderr.strip().splitlines()[-1:])
    return seconds, None


def transform_error(outdir: Path, truth: dict) -> float | None:
    """max |A − A_true| (px) of the run's ``motor_transform.json`` (None when it is missing)."""
    path = outdir / "motor_transform.json"
    if not path.exists():
        return None
    A = np.asarray(json.loads(path.read_text())["transform"], dtype=float)
    return float(np.abs(A - np.asarray(truth["transform"])).max())


def fingerprint_seconds(source: Path, repeats: int = 3) -> float:
    """Shortest time to fingerprint every input store (:func:`store_fingerprint`), as a resumed run does."""
    stores = [path for _, path in discover_slices(source)]
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for path in stores:
            store_fingerprint(path)
        times.append(time.perf_counter() - start)
    return min(times)


def _time_input(name: str, spec: synthetic.SyntheticSpec, workdir: Path, n_slices: int, repeats: int,
                log: Callable[[str], None]) -> list[dict]:
    source = workdir / "input"
    truth = synthetic.write_dataset(source, spec, n_slices=n_slices, save_scenes=False)
    size_mb = sum(p.stat().st_size for p in source.rglob("*") if p.is_file()) / 1e6
    best: dict[int, tuple[float, str | None]] = {}
    for attempt in range(repeats):
        for workers in (1, 2):
            outdir = workdir / f"out{workers}"
            if outdir.exists():
                shutil.rmtree(outdir)
            seconds, error = _timed_run(source, outdir, workers, spec.overlap)
            if workers not in best or seconds < best[workers][0]:
                best[workers] = (seconds, error)
            log(f"  [runner] {name}, {workers} worker(s), try {attempt + 1}: {seconds:.1f} s")
    resumed = {workers: min((_timed_run(source, workdir / f"out{workers}", workers, spec.overlap)
                             for _ in range(RESUMES)), key=lambda timed: timed[0]) for workers in (1, 2)}
    fingerprint = fingerprint_seconds(source)
    log(f"  [runner] {name}, resumed: {resumed[1][0]:.2f} s with 1 worker, {resumed[2][0]:.2f} s with 2 "
        f"(fingerprinting {fingerprint:.3f} s)")
    base = {"input": f"{name}: {n_slices} x {spec.nx}x{spec.ny} tiles of {'x'.join(map(str, spec.tile_shape))}, "
                     f"{size_mb:.0f} MB"}
    rows = [{**base, "run": f"fresh, {workers} worker{'s' if workers > 1 else ''}", "workers": workers,
             "seconds": best[workers][0], "fingerprint_s": None,
             "max_abs_dA_px": transform_error(workdir / f"out{workers}", truth), "error": best[workers][1]}
            for workers in (1, 2)]
    rows += [{**base, "run": f"resumed rerun, {workers} worker{'s' if workers > 1 else ''}", "workers": workers,
              "seconds": resumed[workers][0], "fingerprint_s": fingerprint,
              "max_abs_dA_px": transform_error(workdir / f"out{workers}", truth), "error": resumed[workers][1]}
             for workers in (1, 2)]
    return rows


def run(workdir: Path, *, n_slices: int = N_SLICES, inputs: dict | None = None, repeats: int = REPEATS,
        log: Callable[[str], None] = print) -> tuple[list[dict], str | None]:
    """Time fresh runs with one and two workers and a resumed run, on each input.

    Returns
    -------
    rows : list of dict
        ``input``, ``run``, ``workers``, ``seconds`` (best of ``repeats`` for fresh runs), ``fingerprint_s``
        (resumed rows: fingerprinting the inputs alone), ``max_abs_dA_px`` (of its motor_transform.json),
        ``error``.
    note : str or None
        Why nothing was timed (the runner is not available), else None.
    """
    missing = runner_available()
    if missing:
        return [], f"`linumpy-motor run` is not available ({missing}); nothing timed"
    if workdir.exists():
        shutil.rmtree(workdir)
    rows = []
    for k, (name, spec) in enumerate((INPUTS if inputs is None else inputs).items()):
        rows += _time_input(name, spec, workdir / f"input{k}", n_slices, repeats, log)
    return rows, None


def verdicts(rows: list[dict]) -> list[tuple[str, bool, str]]:
    """``(target, met, figures)``: two workers faster than one on every input; a resumed run under a second
    plus the fingerprinting of its inputs."""
    found = []
    by_input: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_input.setdefault(row["input"], {})[row["run"]] = row
    for name, runs in by_input.items():
        one, two = runs["fresh, 1 worker"]["seconds"], runs["fresh, 2 workers"]["seconds"]
        found.append((f"--workers 2 faster than 1 ({name})", two < one,
                      f"{two:.2f} s vs {one:.2f} s ({one / two:.2f}x)"))
        for run in ("resumed rerun, 1 worker", "resumed rerun, 2 workers"):
            resumed = runs[run]
            limit = 1.0 + resumed["fingerprint_s"]
            found.append((f"{run} with nothing to do < 1 s + fingerprinting ({name})", resumed["seconds"] < limit,
                          f"{resumed['seconds']:.2f} s (fingerprinting {resumed['fingerprint_s']:.3f} s)"))
    return found
