"""The embedded runner end to end: accuracy against the truth, resume, partial reruns, refusals."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock
from reliability_helpers import write_small_dataset

from linumpy_motor import synthetic
from linumpy_motor.errors import InputError
from linumpy_motor.pipeline import logs, runner
from linumpy_motor.pipeline.options import RunOptions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("runner") / "input"
    spec = synthetic.SyntheticSpec(nx=5, ny=6, tile_shape=(4, 128, 128), seed=3)
    synthetic.write_dataset(folder, spec, n_slices=3)
    return folder


def _files(outdir: Path) -> dict[str, int]:
    return {str(p.relative_to(outdir)): p.stat().st_mtime_ns for p in outdir.rglob("*")
            if p.is_file() and p.name not in ("lock", logs.LOG_FILE)}  # the log records every run


@pytest.fixture(scope="module")
def first_run(dataset, tmp_path_factory):
    outdir = tmp_path_factory.mktemp("runner-out") / "out"
    start = time.perf_counter()
    result = runner.run(dataset, outdir, RunOptions(), progress=False)
    return outdir, result, time.perf_counter() - start


def test_run_recovers_the_motor_model_and_stitches_every_slice(dataset, first_run):
    outdir, result, _ = first_run
    truth = json.loads((dataset / "truth.json").read_text())
    fitted = json.loads((outdir / "motor_transform.json").read_text())
    error = np.abs(np.array(fitted["transform"]) - np.array(truth["transform"])).max()
    assert error <= 0.05, f"pooled A off by {error:.3f} px"
    for slice_id in (0, 1, 2):
        assert (outdir / "pairs" / f"slice_z{slice_id:02d}_pairs.json").is_file()
        assert (outdir / "stitched" / f"slice_z{slice_id:02d}_stitch_3d.ome.zarr" / "zarr.json").is_file()
        assert (outdir / "compare" / f"slice_z{slice_id:02d}_compare.json").is_file()
    assert (outdir / "report" / "report.html").is_file()
    assert result["ran"] == {"measure": 3, "fit": 1, "stitch": 3, "compare": 3, "report": 1}


def test_rerun_skips_everything_and_rewrites_nothing(dataset, first_run):
    outdir, _, first_seconds = first_run
    before = _files(outdir)
    start = time.perf_counter()
    result = runner.run(dataset, outdir, RunOptions(), progress=False)
    seconds = time.perf_counter() - start
    assert set(result["ran"].values()) == {0}
    assert _files(outdir) == before
    assert seconds < 0.25 * first_seconds, f"resume took {seconds:.2f} s vs {first_seconds:.2f} s"


HEAVY_MODULES = ("scipy.fft", "scipy.ndimage", "scipy.sparse", "scipy.special", "scipy.linalg", "skimage.filters",
                 "skimage.exposure")


def test_a_resumed_run_with_nothing_to_do_imports_none_of_scipys_modules(dataset, first_run):
    """They are most of a resumed run's start-up: the library imports them where it first uses them."""
    outdir, _, _ = first_run
    script = ("import sys\nfrom linumpy_motor.pipeline import launch\n"
              f"code = launch.main(['run', {str(dataset)!r}, {str(outdir)!r}, '--no-progress'])\n"
              f"print(sorted(set(sys.modules) & set({HEAVY_MODULES!r})))\nsys.exit(code)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "jobs run (0 = resumed from a previous run): measure 0, fit 0, stitch 0, compare 0, report 0" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "[]"


def test_changing_blending_reruns_only_stitch_and_report(dataset, first_run):
    outdir, _, _ = first_run
    pairs_before = _files(outdir / "pairs")
    result = runner.run(dataset, outdir, RunOptions(blending="average"), progress=False)
    assert result["ran"] == {"measure": 0, "fit": 0, "stitch": 3, "compare": 0, "report": 1}
    assert _files(outdir / "pairs") == pairs_before
    result = runner.run(dataset, outdir, RunOptions(blending="average", seed=5, n_samples=40), progress=False)
    assert result["ran"]["measure"] == 0 and result["ran"]["fit"] == 1


def test_known_transform_skips_measuring(dataset, first_run, tmp_path):
    outdir, _, _ = first_run
    result = runner.run(dataset, tmp_path / "given", RunOptions(transform=outdir / "motor_transform.json"),
                        progress=False)
    assert result["ran"] == {"transform": 1, "stitch": 3}
    lines = list(runner.describe(result))  # nothing fitted, and no report
    assert "jobs run (0 = resumed from a previous run): transform 1, stitch 3" in lines
    assert "  QC report     none: with a given --transform no pairs are measured, so nothing is checked" in lines
    assert not list((tmp_path / "given").glob("pairs/*.json"))
    assert len(list((tmp_path / "given" / "stitched").iterdir())) == 3
    given = json.loads((tmp_path / "given" / "motor_transform.json").read_text())
    assert given["transform"] == json.loads((outdir / "motor_transform.json").read_text())["transform"]


def test_a_second_run_on_the_same_outdir_is_refused(dataset, first_run):
    outdir, _, _ = first_run
    with FileLock(outdir / ".linumpy-motor" / "lock", timeout=0):
        with pytest.raises(InputError, match="another linumpy-motor run"):
            runner.run(dataset, outdir, RunOptions(), progress=False)


def test_output_inside_the_input_is_refused_before_anything_is_written(dataset):
    inside = dataset / "mosaic_grid_3d_z00.ome.zarr" / "results"
    with pytest.raises(InputError, match="inside the input"):
        runner.run(dataset, inside, RunOptions(), progress=False)
    assert not inside.exists()


def test_cli_prints_where_the_results_are(dataset, first_run):
    outdir, _, _ = first_run
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    args = ["--blending", "average", "--n-samples", "40", "--seed", "5", "--no-progress"]  # as the last run
    done = subprocess.run(["linumpy-motor", "run", str(dataset), str(outdir), *args],
                          capture_output=True, text=True, env=env, check=True)
    assert f"results in {outdir}" in done.stdout
    assert "report.html" in done.stdout
    assert "measure 0" in done.stdout and "stitch 0" in done.stdout
    log = (outdir / logs.LOG_FILE).read_text().splitlines()  # the log keeps the outcome as well
    assert log[-1].endswith(" INFO exit status 0")
    outcome = [line.split(" INFO ", 1)[1] for line in log[-len(done.stdout.splitlines()) - 1:-1]]
    assert outcome == done.stdout.splitlines() and "QC: 3 ok, 0 check, 0 failed" in outcome


def test_the_current_folder_is_an_output_folder_when_it_holds_no_input(dataset, first_run, tmp_path):
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    here = tmp_path / "here"
    here.mkdir()
    given = ["--transform", str(first_run[0] / "motor_transform.json")]  # stitching alone: quick
    done = subprocess.run(["linumpy-motor", "run", str(dataset), ".", *given], cwd=here, capture_output=True,
                          text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert len(list((here / "stitched").iterdir())) == 3 and (here / logs.LOG_FILE).is_file()
    refused = subprocess.run(["linumpy-motor", "run", dataset.name, ".", *given], cwd=dataset.parent,
                             capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "output would hold the input" in refused.stderr
    assert not (dataset.parent / "stitched").exists()


def test_registered_placement_restitches_at_the_model_plus_registered_residuals(dataset, first_run):
    import zarr

    from linumpy_motor.pipeline import steps

    outdir, _, _ = first_run
    result = runner.run(dataset, outdir, RunOptions(placement="registered"), progress=False)
    assert result["ran"]["measure"] == 0 and result["ran"]["stitch"] == 3
    store = outdir / "stitched" / "slice_z00_stitch_3d.ome.zarr"
    placed = np.array(zarr.open_group(str(store), mode="r").attrs["linumpy_motor"]["positions"])
    model = steps.tile_positions(outdir / "motor_transform.json", (5, 6))
    residual = placed - model
    residual -= residual.mean(axis=0)
    assert 0.05 < np.abs(residual).max() < 3  # the tiles' jitter (0.3 px), not the model
    result = runner.run(dataset, outdir, RunOptions(placement="registered"), progress=False)
    assert set(result["ran"].values()) == {0}


def test_registered_placement_needs_measured_pairs(dataset, first_run, tmp_path):
    outdir, _, _ = first_run
    with pytest.raises(InputError, match="registered"):
        runner.run(dataset, tmp_path / "given", RunOptions(placement="registered",
                                                           transform=outdir / "motor_transform.json"),
                   progress=False)
    assert not (tmp_path / "given").exists()


def test_a_library_run_keeps_its_log_file_and_leaves_the_callers_logging_alone(first_run, tmp_path):
    import logging

    outdir, _, _ = first_run
    log = (outdir / logs.LOG_FILE).read_text()
    for step in ("measure", "fit", "stitch", "compare", "report"):
        assert f"INFO {step}: finished in " in log
    root, package = logging.getLogger(), logging.getLogger(logs.PACKAGE_LOGGER)
    before = (list(root.handlers), package.level)
    with logs.log_file(tmp_path):
        logging.getLogger("linumpy_motor.pipeline.runner").info("written")
    assert (list(root.handlers), package.level) == before
    assert (tmp_path / logs.LOG_FILE).read_text().rstrip().endswith("INFO written")


def test_turning_the_gpu_on_redoes_measure_and_stitch(tmp_path, monkeypatch):
    """The resume stamps of measure and stitch hold --use-gpu: a GPU run's outputs are not passed off as a CPU run's."""
    data = write_small_dataset(tmp_path / "data", n_slices=2)
    out = tmp_path / "out"
    runner.run(data, out, RunOptions(), progress=False)
    monkeypatch.setattr(runner, "gpu_available", lambda: True)  # as on a GPU node; the steps fall back to the CPU
    result = runner.run(data, out, RunOptions(use_gpu=True), progress=False)
    assert result["ran"]["measure"] == 2 and result["ran"]["stitch"] == 2
