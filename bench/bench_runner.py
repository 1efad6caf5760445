"""Wall time of the embedded runner end to end: ``linumpy-motor run INPUT OUTDIR [--workers N]``.

Three runs on one small synthetic dataset: one worker, two workers (fresh output folders), then
the two-worker run again on its own output folder, which resumes and should skip every step.
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

SPEC = synthetic.SyntheticSpec(nx=4, ny=5, tile_shape=(4, 96, 96), seed=21)
N_SLICES = 10


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
                           "--overlap", str(overlap)], capture_output=True, text=True)
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


def run(workdir: Path, *, n_slices: int = N_SLICES,
        log: Callable[[str], None] = print) -> tuple[list[dict], str | None]:
    """Time the three runs.

    Returns
    -------
    rows : list of dict
        ``run``, ``workers``, ``seconds``, ``max_abs_dA_px`` (of its motor_transform.json), ``error``.
    note : str or None
        Why nothing was timed (the runner is not available), else None.
    """
    missing = runner_available()
    if missing:
        return [], f"`linumpy-motor run` is not available ({missing}); nothing timed"
    if workdir.exists():
        shutil.rmtree(workdir)
    source = workdir / "input"
    truth = synthetic.write_dataset(source, SPEC, n_slices=n_slices, save_scenes=False)
    rows = []
    for label, workers, outdir in (("fresh, 1 worker", 1, workdir / "out1"), ("fresh, 2 workers", 2, workdir / "out2"),
                                   ("resumed rerun, 2 workers", 2, workdir / "out2")):
        seconds, error = _timed_run(source, outdir, workers, SPEC.overlap)
        rows.append({"run": label, "workers": workers, "seconds": seconds,
                     "max_abs_dA_px": transform_error(outdir, truth), "error": error})
        log(f"  [runner] {label}: {seconds:.1f} s" + (f" ({error})" if error else ""))
    return rows, None
