"""Faults and hostile files: malformed metadata, sizes that would exhaust memory, signals, dead
workers, a full disk, odd samplesheets. Each gives one line naming the file (or a clean stop), never a
traceback, and nothing is allocated or written before the check."""

from __future__ import annotations

import errno
import json
import os
import runpy
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import (
    BIN,
    CLI,
    TILE,
    die_like_the_oom_killer,
    env,
    error_lines,
    finish_after_a_rerun_took_the_folder,
    finish_quickly,
    signals_as_new,
    temporaries,
    tree_digest,
    write_small_dataset,
)

from linumpy_motor.errors import InputError, OutOfMemory
from linumpy_motor.io import ngff, outputs
from linumpy_motor.io.dataset import discover_slices
from linumpy_motor.io.grid import open_mosaic
from linumpy_motor.pipeline import cli, logs, runner, steps
from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_TERMINATED
from linumpy_motor.pipeline.jobs import run_jobs
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.pipeline.resume import STATE_DIR, Stamps
from linumpy_motor.qc.report import write_report
from linumpy_motor.qc.thumbnail import read_thumbnail
from linumpy_motor.register.flatfield import load_flatfield


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_small_dataset(tmp_path_factory.mktemp("hostile") / "data", n_slices=3)


@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hostile-run") / "out"
    runner.run(dataset, out, RunOptions(), progress=False)
    return out


# -- malformed metadata ------------------------------------------------------------------------------

def _entry(attrs: dict) -> dict:
    return attrs["ome"]["multiscales"][0]


def _set(key: str, value) -> Callable[[dict], None]:
    def edit(attrs: dict) -> None:
        attrs[key] = value
    return edit


def _as_ngff_04(version: str) -> Callable[[dict], None]:
    def edit(attrs: dict) -> None:
        entry = _entry(attrs)
        attrs.clear()
        attrs["multiscales"] = [{**entry, "version": version}]
    return edit


METADATA = {  # name: (edit of the root attributes, what the error says)
    "multiscales empty": (lambda a: a["ome"].update(multiscales=[]), "malformed 'multiscales' metadata"),
    "multiscales an object": (lambda a: a["ome"].update(multiscales={}), "malformed 'multiscales' metadata"),
    "datasets a string": (lambda a: _entry(a).update(datasets="0"), "malformed 'multiscales' metadata"),
    "scale a scalar": (lambda a: _entry(a)["datasets"][0].update(
        coordinateTransformations=[{"type": "scale", "scale": 1.0}]), "malformed level-0 scale"),
    "scale of strings": (lambda a: _entry(a)["datasets"][0].update(
        coordinateTransformations=[{"type": "scale", "scale": ["a", "b", "c"]}]), "malformed level-0 scale"),
    "transformations a string": (lambda a: _entry(a)["datasets"][0].update(coordinateTransformations="x"),
                                 "malformed coordinateTransformations"),
    "axes an object": (lambda a: _entry(a).update(axes={"z": {}, "y": {}, "x": {}}), "malformed axes"),
    "axes as NGFF 0.3 strings": (lambda a: _entry(a).update(axes=["z", "y", "x"]), "malformed axes"),
    "tile_shape true": (_set("tile_shape", True), "malformed tile_shape"),
    "tile_shape one number": (_set("tile_shape", [128]), "malformed tile_shape"),
    "tile_shape an object": (_set("tile_shape", {}), "malformed tile_shape"),
    "tile_shape of strings": (_set("tile_shape", ["4", "a", "b"]), "malformed tile_shape"),
    "NGFF 0.6": (lambda a: a["ome"].update(version="0.6"), "unsupported NGFF version '0.6'"),
    "NGFF 0.3": (_as_ngff_04("0.3"), "unsupported NGFF version '0.3'"),
}


def hostile_store(dataset: Path, folder: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the first slice with its root attributes edited."""
    store = folder / "mosaic_grid_3d_z00.ome.zarr"
    shutil.copytree(dataset / "mosaic_grid_3d_z00.ome.zarr", store)
    metadata = json.loads((store / "zarr.json").read_text())
    edit(metadata["attributes"])
    (store / "zarr.json").write_text(json.dumps(metadata))
    return store


@pytest.mark.parametrize("name", list(METADATA))
def test_malformed_metadata_is_an_input_error_naming_the_store(dataset, tmp_path, name):
    edit, problem = METADATA[name]
    store = hostile_store(dataset, tmp_path, edit)
    with pytest.raises(InputError) as info:
        open_mosaic(store)
    assert info.value.path == store and problem in info.value.problem


@pytest.mark.parametrize("name", ["multiscales empty", "scale a scalar", "axes as NGFF 0.3 strings"])
def test_malformed_metadata_gives_one_line_from_the_command(dataset, tmp_path, capsys, name):
    store = hostile_store(dataset, tmp_path, METADATA[name][0])
    main = runpy.run_path(str(BIN / "linum_motor_measure_pairs.py"), run_name="tested")["main"]
    assert main([str(store), str(tmp_path / "p.json")]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"linum_motor_measure_pairs.py: error: {store}: "), err
    assert not (tmp_path / "p.json").exists()


def test_a_stitched_slice_with_malformed_metadata_is_an_input_error_for_the_report(dataset, tmp_path):
    store = hostile_store(dataset, tmp_path, METADATA["multiscales empty"][0])
    with pytest.raises(InputError, match="malformed 'multiscales'"):
        read_thumbnail(store)


# -- sizes checked before allocating -----------------------------------------------------------------

def test_a_transform_spreading_tiles_over_a_huge_canvas_is_refused_before_any_work(dataset, finished, tmp_path):
    given = tmp_path / "given.json"
    content = json.loads((finished / "motor_transform.json").read_text())
    given.write_text(json.dumps({**content, "transform": [[2e5, 0], [0, 2e5]]}))
    with pytest.raises(InputError, match="canvas") as info:
        runner.run(dataset, tmp_path / "out", RunOptions(transform=given), progress=False)
    assert info.value.path == given
    assert not (tmp_path / "out").exists()
    main = runpy.run_path(str(BIN / "linum_motor_stitch.py"), run_name="tested")["main"]
    out = tmp_path / "s.ome.zarr"
    assert main([str(dataset / "mosaic_grid_3d_z00.ome.zarr"), str(given), str(out)]) == EXIT_BAD_INPUT
    assert not out.exists() and not temporaries(tmp_path)


def test_a_flat_field_declaring_a_huge_array_is_refused_from_its_header(tmp_path):
    path = tmp_path / "flat.npy"
    with path.open("wb") as handle:  # a header only: the data would be 40 GB
        np.lib.format.write_array_header_1_0(handle, {"descr": "<f4", "fortran_order": False,
                                                      "shape": (100_000, 100_000)})
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"shape \(100000, 100000\) does not match") as info:
            load_flatfield(path, TILE)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert info.value.path == path and peak < 2**20


def test_a_stitched_slice_claiming_a_huge_grid_is_reported_not_drawn(finished, tmp_path):
    store = tmp_path / "slice_z00_stitch_3d.ome.zarr"
    shutil.copytree(finished / "stitched" / store.name, store)
    metadata = json.loads((store / "zarr.json").read_text())
    metadata["attributes"]["linumpy_motor"]["grid"] = [30_000, 30_000]
    (store / "zarr.json").write_text(json.dumps(metadata))
    tracemalloc.start()
    try:
        write_report(tmp_path / "report", finished / "motor_transform.json",
                     [finished / "pairs" / "slice_z00_pairs.json"], stitched=[store])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    status = json.loads((tmp_path / "report" / "status.json").read_text())["0"]
    assert "stitched slice has unreadable layout metadata" in status["reasons"]
    assert peak < 500 * 2**20, f"{peak / 2**20:.0f} MiB"


# -- samplesheets ------------------------------------------------------------------------------------

def test_a_samplesheet_with_a_byte_order_mark_and_spaces_after_commas_is_read(dataset, tmp_path):
    sheet = tmp_path / "sheet.csv"
    sheet.write_bytes("\ufeffslice_id, path\n3, {}\n".format(dataset / "mosaic_grid_3d_z01.ome.zarr").encode())
    assert discover_slices(sheet) == [(3, dataset / "mosaic_grid_3d_z01.ome.zarr")]


@pytest.mark.parametrize("rows, problem", [
    ("-1,{d}/mosaic_grid_3d_z00.ome.zarr", "line 2: slice_id -1 is negative"),
    ("0,{d}/mosaic_grid_3d_z00.ome.zarr\n1,{d}/./mosaic_grid_3d_z00.ome.zarr", "line 3: "),
    ("0,", "line 2: the path is empty"),
])
def test_bad_samplesheet_rows_are_refused(dataset, tmp_path, rows, problem):
    sheet = tmp_path / "sheet.csv"
    sheet.write_text("slice_id,path\n" + rows.format(d=dataset) + "\n")
    with pytest.raises(InputError, match=problem) as info:
        discover_slices(sheet)
    assert info.value.path == sheet
    if "line 3" in problem:
        assert "is already listed as slice 0" in info.value.problem


# -- a full disk -------------------------------------------------------------------------------------

def test_a_full_disk_names_the_file_and_the_step(dataset, tmp_path, monkeypatch, capsys):
    def no_space(path, version):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(path) / "0" / "c" / "0"))

    monkeypatch.setattr(ngff, "create_group", no_space)
    out = tmp_path / "out"
    assert cli.main(["run", str(dataset), str(out), "--no-progress"]) == EXIT_BAD_INPUT
    stitched = out / "stitched" / "slice_z00_stitch_3d.ome.zarr"
    expected = f"linumpy-motor: error: {stitched}: stitch step: No space left on device"
    assert error_lines(capsys.readouterr().err) == [expected]
    assert (out / "motor_transform.json").is_file() and not temporaries(out)


def test_a_full_disk_while_writing_a_json_names_it_and_its_step(dataset, tmp_path, monkeypatch):
    def no_space(*args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(outputs.json, "dumps", no_space)
    pairs = tmp_path / "slice_z00_pairs.json"
    with pytest.raises(OSError) as info:
        steps.measure_pairs(dataset / "mosaic_grid_3d_z00.ome.zarr", pairs, overlap=0.2)
    assert (info.value.filename, info.value.strerror) == (str(pairs), "measure step: No space left on device")
    assert list(tmp_path.iterdir()) == []


# -- dead workers, SIGTERM and Ctrl-C ----------------------------------------------------------------

def test_a_worker_killed_by_the_oom_killer_names_its_slice_and_suggests_memory(tmp_path):
    stamps = Stamps(tmp_path, [])
    jobs = [(tmp_path / "a.json", "k", finish_quickly, {"source": tmp_path / "slice_a.ome.zarr"}),
            (tmp_path / "b.json", "k", die_like_the_oom_killer, {"source": tmp_path / "slice_b.ome.zarr"})]
    with pytest.raises(OutOfMemory) as info:  # exit 75: the pipeline retries it with more memory
        run_jobs(jobs, stamps, 2, "test", False)
    assert info.value.path == tmp_path / "slice_b.ome.zarr"
    assert "SIGKILL" in info.value.problem and "memory" in info.value.problem


def test_a_worker_of_a_run_that_lost_its_folder_renames_nothing_into_place(tmp_path):
    stamps = Stamps(tmp_path, [])
    (tmp_path / STATE_DIR / "lock").write_text("this run's token")
    late = tmp_path / "late.json"
    jobs = [(tmp_path / "a.json", "k", finish_quickly, {"source": tmp_path / "slice_a.ome.zarr"}),
            (late, "k", finish_after_a_rerun_took_the_folder, {"output": late, "outdir": tmp_path})]
    with pytest.raises(InputError, match="another linumpy-motor run took over this folder"):
        run_jobs(jobs, stamps, 2, "test", False)
    assert not late.exists() and not temporaries(tmp_path)


WORKER_DIES = """
import sys
from pathlib import Path
from reliability_helpers import finish_quickly, leave_a_lock_and_die
from linumpy_motor.pipeline.jobs import run_jobs
from linumpy_motor.pipeline.resume import Stamps
out = Path(sys.argv[1])
try:
    run_jobs([(out / "a.json", "k", finish_quickly, {}), (out / "b.json", "k", leave_a_lock_and_die, {})],
             Stamps(out, []), 2, "test", False)
except ValueError as exc:
    print(f"prog: error: {exc}", file=sys.stderr)
"""


def test_the_error_line_stays_last_when_a_dead_worker_leaked_a_lock(tmp_path):
    """multiprocessing's resource tracker reports a killed worker's semaphores when it ends: before the line."""
    result = subprocess.run([sys.executable, "-c", WORKER_DIES, str(tmp_path)], capture_output=True, text=True,
                            env={**env(), "PYTHONPATH": str(Path(__file__).parent)}, timeout=120)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("prog: error: ") and "worker process" in lines[-1], result.stderr


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid``: the workers, the server that forks them, multiprocessing's resource tracker."""
    found = set()
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            found |= {int(p) for p in (task / "children").read_text().split()}
    except FileNotFoundError:  # it ended meanwhile
        return found
    for child in list(found):
        found |= _children(child)
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _start_and_wait(dataset: Path, out: Path, pattern: str) -> subprocess.Popen:
    process = subprocess.Popen([CLI, "run", str(dataset), str(out), "--workers", "2"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env(), start_new_session=True,
                               preexec_fn=signals_as_new)
    deadline = time.monotonic() + 120
    while not list(out.glob(pattern)):
        assert process.poll() is None, f"the run ended before {pattern} appeared: {process.communicate()}"
        assert time.monotonic() < deadline, f"{pattern} never appeared"
        time.sleep(0.002)
    return process


STITCHING = "stitched/.slice_z*_stitch_3d.ome.zarr.tmp-*/0/zarr.json"


@pytest.mark.slow
def test_sigterm_to_the_main_process_stops_the_workers_and_writes_nothing_after(dataset, tmp_path):
    out = tmp_path / "out"
    process = _start_and_wait(dataset, out, STITCHING)
    workers = _children(process.pid)
    process.send_signal(signal.SIGTERM)  # the main process only, as `kill PID` or a scheduler may
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_TERMINATED, stderr
    assert error_lines(stderr) == ["linumpy-motor: terminated (rerun to resume)"]
    last = (out / logs.LOG_FILE).read_text().splitlines()[-1]  # the log says what stopped the run
    assert last.endswith(f" ERROR run stopped: terminated (rerun to resume); exit status {EXIT_TERMINATED}"), last
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in workers), "workers outlived the main process"
    after = tree_digest(out)
    time.sleep(1.0)
    assert tree_digest(out) == after, "something was written after the main process exited"
    assert not temporaries(out)
    rerun = subprocess.run([CLI, "run", str(dataset), str(out)], capture_output=True, text=True, env=env())
    assert rerun.returncode == 0 and error_lines(rerun.stderr) == [], rerun.stderr


@pytest.mark.slow
def test_kill_9_of_the_main_process_leaves_no_live_worker_within_a_second(dataset, tmp_path):
    out = tmp_path / "out"
    process = _start_and_wait(dataset, out, STITCHING)
    helpers = _children(process.pid)  # the 2 workers, the server that forks them, the resource tracker
    assert len(helpers) >= 4
    process.kill()
    process.wait(timeout=10)
    deadline = time.monotonic() + 1.0
    while any(_alive(pid) for pid in helpers) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(_alive(pid) for pid in helpers), "workers outlived the main process killed with SIGKILL"
    process.communicate(timeout=10)  # the caller's pipes are closed: nothing holds them open
    after = tree_digest(out)
    time.sleep(1.0)
    assert tree_digest(out) == after, "something was renamed into place after the main process was killed"
    rerun = subprocess.run([CLI, "run", str(dataset), str(out)], capture_output=True, text=True, env=env())
    assert rerun.returncode == 0 and error_lines(rerun.stderr) == [], rerun.stderr


@pytest.mark.slow
def test_ctrl_c_with_workers_prints_one_line(dataset, tmp_path):
    out = tmp_path / "out"
    process = _start_and_wait(dataset, out, STITCHING)
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole process group
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == EXIT_INTERRUPTED
    assert error_lines(stderr) == ["linumpy-motor: interrupted (rerun to resume)"]
    assert not temporaries(out)
