"""Cores a task is given: cgroup quota and affinity, and the caps put on BLAS and FFT pools."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.fft
from threadpoolctl import threadpool_info

from linumpy_motor import parallel

BIN = Path(__file__).resolve().parents[1] / "bin"


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_quota(tmp_path):
    _write(tmp_path / "cpu.max", "150000 100000\n")
    assert parallel.cgroup_cpu_quota(tmp_path) == 1.5


def test_cgroup_v2_unlimited_and_v1_quota(tmp_path):
    _write(tmp_path / "v2" / "cpu.max", "max 100000\n")
    assert parallel.cgroup_cpu_quota(tmp_path / "v2") is None
    _write(tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us", "300000\n")
    _write(tmp_path / "v1" / "cpu" / "cpu.cfs_period_us", "100000\n")
    assert parallel.cgroup_cpu_quota(tmp_path / "v1") == 3.0
    _write(tmp_path / "v1" / "cpu" / "cpu.cfs_quota_us", "-1\n")
    assert parallel.cgroup_cpu_quota(tmp_path / "v1") is None
    assert parallel.cgroup_cpu_quota(tmp_path / "nothing") is None


def test_available_cores_is_the_affinity_capped_by_the_quota(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3, 4, 5, 6, 7})
    _write(tmp_path / "cpu.max", "250000 100000\n")
    monkeypatch.setattr(parallel, "CGROUP_ROOT", tmp_path)
    assert parallel.available_cores() == 3  # 2.5 CPUs of quota round up, below the 8 cores of affinity
    _write(tmp_path / "cpu.max", "max 100000\n")
    assert parallel.available_cores() == 8


def test_threads_resolve_and_split_between_workers(monkeypatch):
    monkeypatch.setattr(parallel, "available_cores", lambda: 6)
    assert parallel.resolve_threads(None) == 6 and parallel.resolve_threads(2) == 2
    assert parallel.threads_per_worker(None, 4) == 1 and parallel.threads_per_worker(None, 2) == 3
    assert parallel.threads_per_worker(8, 3) == 2
    with pytest.raises(ValueError, match="threads must be >= 1"):
        parallel.resolve_threads(0)


def test_limited_threads_sets_fft_workers_holds_blas_to_one_then_restores_them():
    before = scipy.fft.get_workers()
    with parallel.limited_threads(3):
        assert scipy.fft.get_workers() == 3
        assert all(pool["num_threads"] == 1 for pool in threadpool_info())
    assert scipy.fft.get_workers() == before


@pytest.mark.parametrize("script, positionals", [("linum_motor_stitch.py", ["in.ome.zarr", "t.json", "out.ome.zarr"]),
                                                  ("linum_motor_measure_pairs.py", ["in.ome.zarr", "pairs.json"])])
def test_scripts_refuse_zero_threads_in_one_line(script, positionals, capsys):
    spec = importlib.util.spec_from_file_location(script.removesuffix(".py"), BIN / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with pytest.raises(SystemExit) as exit_info:
        module.main([*positionals, "--threads", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--threads: must be at least 1, got 0" in err


def _record_pid(output: Path) -> None:
    output.write_text(str(os.getpid()))


def test_the_steps_of_a_run_share_one_set_of_worker_processes(tmp_path):
    """Each step used to start its own pool (a Python start and the imports per worker, every step);
    the run's steps now reuse the workers the first parallel step started."""
    from linumpy_motor.pipeline.jobs import Workers, run_jobs
    from linumpy_motor.pipeline.resume import Stamps

    stamps = Stamps(tmp_path, [])
    pids: dict[str, set[str]] = {}
    with Workers(2, tmp_path) as workers:
        for step in ("measure", "stitch"):
            outputs = [tmp_path / step / f"{k}.txt" for k in range(4)]
            assert run_jobs([(out, "k", _record_pid, {"output": out}) for out in outputs], stamps, workers, step,
                            False) == 4
            pids[step] = {out.read_text() for out in outputs}
    assert str(os.getpid()) not in pids["measure"]  # the jobs ran in workers
    assert 1 <= len(pids["measure"]) <= 2
    assert pids["stitch"] <= pids["measure"], "the second step started new workers"


def test_a_figure_that_fails_in_a_worker_is_raised_and_the_workers_start_again_for_the_next(tmp_path):
    from linumpy_motor.pipeline.jobs import Workers
    from linumpy_motor.qc.figures import FigureJob

    good = FigureJob(tmp_path / "h.png", "plot_residual_histogram",
                     {"residuals": np.array([0.2, 0.3, 2.0]), "outliers": np.array([False, False, True])})
    with Workers(2, tmp_path) as workers:
        with pytest.raises(AttributeError, match="no_such_plot"):
            workers.draw([FigureJob(tmp_path / "a.png", "no_such_plot"), good])
        workers.draw([good])
    assert (tmp_path / "h.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "a.png").exists()


def test_a_resumed_run_with_nothing_to_do_imports_no_plotting_or_statistics(tmp_path, synthetic_dataset_small):
    """A finished run resumes in well under a second: neither matplotlib (the report) nor scipy.stats is
    imported when no job runs (they were about a second of start-up)."""
    import subprocess
    import sys

    outdir = tmp_path / "out"
    script = ("import sys; from linumpy_motor.pipeline.launch import main; "
              "code = main(['run', sys.argv[1], sys.argv[2], '--no-progress']); "
              "print([m for m in ('matplotlib', 'scipy.stats') if m in sys.modules]); "
              "sys.exit(code)")
    command = [sys.executable, "-c", script, str(synthetic_dataset_small.root), str(outdir)]
    first = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "'matplotlib'" in first.stdout.splitlines()[-1]  # the first run draws the report
    resumed = subprocess.run(command, capture_output=True, text=True, check=True)
    assert "measure 0, fit 0, stitch 0, compare 0, report 0" in resumed.stdout
    assert resumed.stdout.splitlines()[-1] == "[]"


def test_a_command_with_workers_leaves_nothing_holding_its_output_once_it_has_exited(tmp_path, synthetic_dataset_small):
    """The fork server of ``--workers 2`` starts importing at once; on a resumed run with nothing to do the command
    ended while it still imported, and it held the command's stdout and stderr open for up to a second more:
    whoever reads them (a pipe, Nextflow, a CI log) waited. It is ended with the command."""
    import select
    import subprocess
    import sys
    import time

    command = [sys.executable, "-c", "import sys; from linumpy_motor.pipeline.launch import main; sys.exit(main())",
               "run", str(synthetic_dataset_small.root), str(tmp_path / "out"), "--workers", "2", "--no-progress"]
    subprocess.run(command, capture_output=True, check=True)  # the run; then a resumed one, with nothing to do
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert process.wait(timeout=120) == 0
    output, deadline = b"", time.monotonic() + 0.1  # the pipe's end must come at once: nothing else holds it
    while (chunk := os.read(process.stdout.fileno(), 65536) if select.select(
            [process.stdout], [], [], max(0.0, deadline - time.monotonic()))[0] else None):
        output += chunk
    process.stdout.close()
    assert chunk == b"", "the command has exited, and something still holds its output open"
    assert b"measure 0, fit 0, stitch 0" in output


@pytest.mark.parametrize("argv, expected", [
    (["run", "in", "out", "--workers", "3"], 3),
    (["run", "--workers=2", "in", "out"], 2),
    (["run", "in", "out"], 1),
    (["synth", "out", "--workers", "2"], 1),  # not a run
    (["run", "in", "out", "--workers", "two"], 1),  # the parser says what is wrong, later
    (["run", "in", "out", "--workers"], 1),
])
def test_the_workers_a_run_asks_for_are_read_before_the_program_is_imported(argv, expected):
    from linumpy_motor.pipeline.worker_server import workers_asked

    assert workers_asked(argv) == expected
