"""Kill `linumpy-motor run` at several points, rerun it, and get exactly the uninterrupted outputs.

A run is started in its own session and its whole process group is stopped (as a scheduler or a
terminal does) as soon as the output folder shows a new path of the chosen point: the first pairs
JSON (with two worker processes), the motor transform, a stitched store half-written under its
temporary name, a finished stitched store (Ctrl-C here), the report being written. The points are
visited in turn on one output folder, each run resuming the one before. After every stop the
outputs already stamped are complete (equal to an uninterrupted run's) and were not redone. The
final rerun must exit 0, redo exactly what was not stamped, leave no temporary names, and produce
identical outputs.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import (
    CLI,
    assert_same_outputs,
    env,
    error_lines,
    read_levels,
    run,
    signals_as_new,
    temporaries,
    write_small_dataset,
)

from linumpy_motor.pipeline import resume, runner
from linumpy_motor.pipeline.entry import EXIT_INTERRUPTED
from linumpy_motor.pipeline.options import RunOptions

pytestmark = pytest.mark.slow

STEPS = {"measure": 3, "fit": 1, "stitch": 3, "compare": 3, "report": 1}
STAMP_STEP = {"pairs": "measure", "flatfield": "flatfield", "motor_transform.json": "fit", "stitched": "stitch",
              "compare": "compare", "report": "report"}  # a slice's flat field is written by its measure job
KILL_POINTS = [  # (step, a new path matching this pattern appears, signal, workers)
    ("measure", "pairs/slice_z*_pairs.json", signal.SIGKILL, 2),
    ("fit", "motor_transform.json", signal.SIGKILL, 1),
    ("stitch", "stitched/.slice_z*_stitch_3d.ome.zarr.tmp-*/0/zarr.json", signal.SIGKILL, 1),  # half-written
    ("stitch", "stitched/slice_z*_stitch_3d.ome.zarr", signal.SIGINT, 1),  # Ctrl-C
    ("report", ".report.tmp-*/*.png", signal.SIGKILL, 2),  # figures drawn by the workers
]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_small_dataset(tmp_path_factory.mktemp("kill") / "data", n_slices=3)


@pytest.fixture(scope="module")
def uninterrupted(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kill-baseline") / "out"
    runner.run(dataset, out, RunOptions(), progress=False)
    return out


def stamps(out: Path) -> dict[str, int]:
    """Stamp file -> its modification time (the outputs the runner counts as finished)."""
    return {p.name: p.stat().st_mtime_ns for p in (out / ".linumpy-motor" / "stamps").glob("*.key")}


def finished(out: Path) -> dict[str, int]:
    """How many outputs of each step are stamped (and how many flat fields)."""
    counts = dict.fromkeys([*STEPS, "flatfield"], 0)
    for name in stamps(out):
        counts[STAMP_STEP[name.split("__")[0].removesuffix(".key")]] += 1
    return counts


def ran(stdout: str) -> dict[str, int]:
    """Per-step job counts from the CLI's summary line ``jobs run ...: measure 3, fit 1, ...``."""
    line = next(line for line in stdout.splitlines() if line.startswith("jobs run"))
    return {step: int(n) for step, n in re.findall(r"(\w+) (\d+)", line.split(":", 1)[1])}


def stop_at(data: Path, out: Path, pattern: str, how: signal.Signals, workers: int = 1) -> subprocess.CompletedProcess:
    """Start a run and signal its process group as soon as a path matching ``pattern`` appears in ``out``."""
    before = set(out.glob(pattern))
    command = [CLI, "run", str(data), str(out), "--workers", str(workers)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env(),
                               start_new_session=True, preexec_fn=signals_as_new)
    deadline = time.monotonic() + 120
    while not set(out.glob(pattern)) - before:
        assert process.poll() is None, f"the run ended before {pattern} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"{pattern} never appeared"
        time.sleep(0.001)
    os.killpg(process.pid, how)
    stdout, stderr = process.communicate(timeout=60)
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def assert_stamped_outputs_complete(out: Path, uninterrupted: Path) -> None:
    """Every stamped output is complete: JSON and flat fields byte-identical, stores array-identical to the
    uninterrupted run's."""
    for name in stamps(out):
        rel = Path(*name.removesuffix(".key").split("__"))
        if rel.suffix == ".json":
            assert (out / rel).read_bytes() == (uninterrupted / rel).read_bytes(), f"{rel} is stamped but differs"
        elif rel.suffix == ".zarr":
            (attrs, levels), (attrs_u, levels_u) = read_levels(out / rel), read_levels(uninterrupted / rel)
            assert attrs == attrs_u and len(levels) == len(levels_u), f"{rel} is stamped but differs"
            assert all(np.array_equal(a, b) for a, b in zip(levels, levels_u)), f"{rel} is stamped but differs"
        elif rel.name.endswith("_flatfield"):  # a slice's flat-field folder
            flat, flat_u = out / rel / "flatfield.npy", uninterrupted / rel / "flatfield.npy"
            assert flat.read_bytes() == flat_u.read_bytes(), f"{rel} is stamped but differs"
        else:
            assert (out / rel / "report.html").is_file(), f"{rel} is stamped but incomplete"


def test_a_run_killed_again_and_again_reruns_to_the_same_outputs(dataset, uninterrupted, tmp_path):
    out = tmp_path / "out"
    hit = []
    for step, pattern, how, workers in KILL_POINTS:
        if finished(out)[step] == STEPS[step]:
            continue  # a late stop of the run before (a loaded machine) already got past this point
        earlier = stamps(out)
        stopped = stop_at(dataset, out, pattern, how, workers)
        point = f"{step} ({pattern}, {how.name})"
        hit.append(point)
        if how == signal.SIGKILL:
            assert stopped.returncode == -signal.SIGKILL, f"{point}: {stopped}"
        else:
            assert stopped.returncode == EXIT_INTERRUPTED, f"{point}: {stopped.stderr}"
            assert error_lines(stopped.stderr) == ["linumpy-motor: interrupted (rerun to resume)"]
            assert not temporaries(out), "Ctrl-C must not leave temporaries"
        now = stamps(out)
        assert {k: now.get(k) for k in earlier} == earlier, f"{point}: finished outputs were redone or lost"
        assert_stamped_outputs_complete(out, uninterrupted)
    assert len(hit) >= 4, f"only {hit} were reached"
    left = {step: STEPS[step] - n for step, n in finished(out).items() if step in STEPS}
    assert sum(left.values()) > 0, "the last stop came after the run had finished"

    rerun = run([CLI, "run", str(dataset), str(out)])
    assert rerun.returncode == 0, rerun.stderr
    assert error_lines(rerun.stderr) == []
    assert ran(rerun.stdout) == left, "the rerun must redo exactly what was not finished"
    assert not temporaries(out)
    assert_same_outputs(uninterrupted, out)


def test_an_output_replaced_but_not_yet_stamped_is_not_passed_off_as_the_old_one(dataset, uninterrupted, tmp_path,
                                                                               monkeypatch):
    """A run with other parameters dies right after renaming a new store into place, before stamping it."""
    out = tmp_path / "out"
    runner.run(dataset, out, RunOptions(), progress=False)
    real_record = resume.Stamps.record

    def dies_after_the_first_store(self, output, key):
        if output.parent.name == "stitched":
            raise KeyboardInterrupt  # as if killed between the rename and the stamp
        real_record(self, output, key)

    monkeypatch.setattr(resume.Stamps, "record", dies_after_the_first_store)
    with pytest.raises(KeyboardInterrupt):
        runner.run(dataset, out, RunOptions(blending="average"), progress=False)
    monkeypatch.setattr(resume.Stamps, "record", real_record)
    result = runner.run(dataset, out, RunOptions(), progress=False)
    assert result["ran"]["stitch"] == 1 and result["ran"]["measure"] == 0
    assert_same_outputs(uninterrupted, out)
