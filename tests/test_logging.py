"""What a user sees while a run works and at its end: progress, logging options, summary, exit code."""

from __future__ import annotations

import html
import logging
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import zarr

from linumpy_motor import synthetic
from linumpy_motor.pipeline import cli, logs, runner, steps
from linumpy_motor.pipeline.entry import EXIT_NOT_OK
from linumpy_motor.qc import summary

CLI = str(Path(sys.executable).parent / "linumpy-motor")
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (INFO|WARNING|DEBUG) ", re.MULTILINE)


class Clock:
    """A stand-in for ``time.monotonic`` that the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(logs.time, "monotonic", fake)
    return fake


def _progress_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == logs.PACKAGE_LOGGER]


def test_progress_lines_every_tenth_of_the_work_with_rate_and_eta(caplog, clock):
    progress = logs.Progress("stitch slice_z03", "block", bars=False)
    with caplog.at_level(logging.INFO, logger=logs.PACKAGE_LOGGER):
        progress(0, 200)
        for done in range(1, 201):
            clock.now += 0.5  # 2 blocks/s: 100 s in all, so the 10-s rule adds no line of its own
            progress(done, 200)
    lines = _progress_lines(caplog)
    assert len(lines) == 10  # 10 %, 20 %, ..., 100 %
    assert lines[0] == "stitch slice_z03: 20/200 blocks (10 %), 2 blocks/s, ETA 0:01:30"
    assert lines[-1] == "stitch slice_z03: 200/200 blocks (100 %), 2 blocks/s, took 0:01:40"


def test_slow_progress_is_logged_every_ten_seconds(caplog, clock):
    progress = logs.Progress("measure slice_z00", "tile row", bars=False)
    with caplog.at_level(logging.INFO, logger=logs.PACKAGE_LOGGER):
        progress(0, 1000)
        for done in range(1, 31):  # 1 row every 4 s: 3 % of the work in 120 s
            clock.now += 4.0
            progress(done, 1000)
    lines = _progress_lines(caplog)
    assert len(lines) == 10  # one line per 10 s (every third row), not one per row
    assert lines[0].startswith("measure slice_z00: 3/1000 tile rows (0 %), 0.25 tile rows/s, ETA 1:06:28")


def test_a_quick_job_logs_only_its_end(caplog, clock):
    progress = logs.Progress("measure slice_z00", "tile row", bars=False)
    with caplog.at_level(logging.INFO, logger=logs.PACKAGE_LOGGER):
        progress(0, 6)
        for done in range(1, 7):
            clock.now += 0.1
            progress(done, 6)
    assert _progress_lines(caplog) == ["measure slice_z00: 6/6 tile rows (100 %), 10 tile rows/s, took 0:00:01"]


def test_progress_bar_on_a_terminal_writes_no_log_lines(caplog, capsys, clock):
    progress = logs.Progress("stitch x", "block", bars=True)
    with caplog.at_level(logging.INFO, logger=logs.PACKAGE_LOGGER):
        for done in range(0, 51):
            clock.now += 1.0
            progress(done, 50)
    assert _progress_lines(caplog) == []
    assert "stitch x" in capsys.readouterr().err  # tqdm drew (and cleared) its bar on stderr


@pytest.mark.parametrize(("terminal", "level", "no_progress", "bars"), [
    (True, "info", False, True),
    (False, "info", False, False),  # SLURM, nohup, Nextflow: lines
    (True, "warning", False, False),  # progress is INFO: no bar when INFO is hidden
    (True, "info", True, False),  # --no-progress
])
def test_bars_only_on_a_terminal_showing_info(monkeypatch, terminal, level, no_progress, bars):
    monkeypatch.setattr(logs.sys.stderr, "isatty", lambda: terminal)
    with logs.configured(level, bars=False if no_progress else None) as config:
        assert config.bars is bars
        handler = next(h for h in logging.getLogger().handlers if getattr(h, "_linumpy_motor", False))
        assert isinstance(handler, logs._TqdmHandler) is bars  # log lines are written above a bar, not through it


def test_a_command_run_in_process_leaves_the_callers_logging_as_it_was(tmp_path):
    root = logging.getLogger()
    before = (list(root.handlers), root.level, logging.getLogger(logs.PACKAGE_LOGGER).level, logs.current())
    assert cli.main(["synth", str(tmp_path / "d"), "--slices", "1", "--grid", "2", "2", "--tile", "1", "32", "32",
                     "--debug"]) == 0
    assert (list(root.handlers), root.level, logging.getLogger(logs.PACKAGE_LOGGER).level, logs.current()) == before


def test_progress_goes_to_a_worker_process_before_its_first_call():
    progress = logs.Progress("stitch x", "block")
    copy = pickle.loads(pickle.dumps(progress))
    assert (copy.label, copy.unit, copy.bars) == ("stitch x", "block", None)


def test_logging_options_are_accepted_before_and_after_the_sub_command():
    parser = cli.build_parser()
    after = parser.parse_args(["synth", "out", "--debug", "--log-level", "warning"])
    before = parser.parse_args(["--debug", "-v", "synth", "out"])
    neither = parser.parse_args(["synth", "out"])
    assert (after.debug, after.log_level) == (True, "warning")
    assert (before.debug, before.log_level) == (True, "debug")  # not reset by the sub-command's defaults
    assert (neither.debug, neither.log_level) == (False, "info")


def test_help_states_each_default_once():
    text = " ".join(cli.build_parser()._subparsers._group_actions[0].choices["run"].format_help().split())
    assert "(default: None)" not in text
    assert text.count("(default:") == len(re.findall(r"\(default: ", text))
    assert "(default: chosen by --plane)" in text and "(default: chosen by --plane) (default" not in text
    assert "'feather' (weights fall linearly" in text  # --blending explains its choices
    assert "--z-chunk" in text
    assert "--seed SEED seed of that subset (default: 0)" in text  # a default of 0 is a default
    assert "same as --log-level debug (default" not in text


STATUS = {
    "0": {"status": "ok", "reasons": []},
    "1": {"status": "check", "reasons": ["high residuals: inlier RMS 2.50 px > 2 px"]},
    "2": {"status": "failed", "reasons": ["few valid pairs: 3 of the grid's 17", "the slice's own fit failed: x"]},
}


def test_summary_names_every_slice_that_is_not_ok_with_its_reasons():
    lines = list(summary.status_lines(STATUS))
    assert lines[0] == "QC: 1 ok, 1 check, 1 failed"
    assert lines[1] == "  slice 1: CHECK: high residuals: inlier RMS 2.50 px > 2 px"
    assert lines[2] == "  slice 2: FAILED: few valid pairs: 3 of the grid's 17; the slice's own fit failed: x"
    assert len(lines) == 3


def test_the_summary_counts_in_good_english():
    result = {"outdir": "out", "transform": "out/none.json", "stitched": ["out/stitched/slice_z00_stitch_3d.ome.zarr"],
              "ran": {"fit": 0, "stitch": 1}}
    assert "  stitched      out/stitched/ (1 slice)" in list(runner.describe(result))
    assert logs.plural(2, "slice") == "2 slices" and logs.plural(1, "job") == "1 job"


@pytest.mark.parametrize(("fail_on", "status", "code"), [
    ("never", STATUS, 0),
    ("failed", STATUS, EXIT_NOT_OK),
    ("failed", {k: v for k, v in STATUS.items() if k != "2"}, 0),
    ("check", {k: v for k, v in STATUS.items() if k != "2"}, EXIT_NOT_OK),
    ("check", {"0": STATUS["0"]}, 0),
])
def test_fail_on_turns_slice_statuses_into_an_exit_code(fail_on, status, code):
    assert summary.exit_code(status, fail_on, EXIT_NOT_OK) == code


def _implied(x: float, y: float) -> dict:
    return {"implied_overlap": {"horizontal": {"overlap": x}, "vertical": {"overlap": y}}}


@pytest.mark.parametrize(("diagnostics", "expected"), [
    ({"nominal_overlap_fraction": 0.2, "robust_scale_px": 0.4,
      "per_slice": {"0": {"measurement": _implied(0.21, 0.19)}, "1": {"measurement": _implied(0.22, 0.2)}}}, []),
    ({"nominal_overlap_fraction": 0.4, "robust_scale_px": 6.8,  # the cause is said alone
      "per_slice": {"0": {"measurement": _implied(0.2, 0.2) | {"median_ncc": 0.05}}}},
     ["the tiles imply an overlap of 0.20 along x and 0.20 along y, the given --overlap is 0.4"]),
    ({"robust_scale_px": 6.8}, ["fits the pairs poorly (robust residual scale 6.80 px"]),
    ({"per_slice": {"0": {"measurement": {"median_ncc": 0.08}}, "1": {"measurement": {"median_ncc": 0.1}}}},
     ["median NCC 0.09"]),
])
def test_signs_of_a_wrong_overlap(diagnostics, expected):
    problems = summary.model_problems(diagnostics)
    assert len(problems) == len(expected)
    for problem, text in zip(problems, expected):
        assert text in problem and "check --overlap" in problem


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("logging") / "data"
    spec = synthetic.SyntheticSpec(nx=4, ny=5, tile_shape=(4, 96, 96), seed=4)
    synthetic.write_dataset(root, spec, n_slices=2, save_scenes=False)
    return root


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_batch_run_logs_each_step_with_timestamps_and_keeps_a_log_file(dataset, tmp_path):
    out = tmp_path / "out"
    result = _run("run", dataset, out, "--z-chunk", "2")  # stderr is a pipe, as under SLURM, nohup or Nextflow
    assert result.returncode == 0, result.stderr
    assert zarr.open_group(str(out / "stitched" / "slice_z00_stitch_3d.ome.zarr"))["0"].chunks[0] == 2
    err = result.stderr
    assert "\r" not in err  # no bar fragments
    lines = err.splitlines()
    assert lines and all(STAMP.match(line) for line in lines), err
    for step in ("measure", "fit", "stitch", "compare", "report"):
        assert re.search(rf"INFO {step}: \d+ jobs? to run", err) and re.search(rf"INFO {step}: finished in ", err)
    assert re.search(r"measure slice_z00_pairs.json: 4/4 tile rows \(100 %\), .* took ", err)
    assert re.search(r"stitch slice_z01_stitch_3d.ome.zarr: (\d+)/\1 blocks \(100 %\)", err)
    assert "QC: 2 ok, 0 check, 0 failed" in result.stdout
    log = (out / logs.LOG_FILE).read_text().splitlines()
    assert log[:len(lines)] == lines  # the same lines, kept in OUTDIR, then the outcome
    assert [line.split(" INFO ", 1)[1] for line in log[len(lines):]] == [*result.stdout.splitlines(), "exit status 0"]

    quiet = _run("run", dataset, out, "--z-chunk", "2", "--log-level", "warning")  # after the sub-command; resumes
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert "jobs run (0 = resumed from a previous run): measure 0" in quiet.stdout
    assert "INFO measure: 0 jobs to run, 2 done before" in (out / logs.LOG_FILE).read_text()  # the file keeps INFO


@pytest.mark.slow
def test_a_wrong_overlap_is_a_terminal_warning_and_fail_on_check_exits_non_zero(dataset, tmp_path):
    from linumpy_motor.backend import gpu_available

    result = _run("run", dataset, tmp_path / "out", "--overlap", "0.4", "--fail-on", "check", "--log-level", "warning",
                  "--use-gpu", "--workers", "2")
    assert result.returncode == EXIT_NOT_OK, result.stderr
    usage = (Path(__file__).resolve().parents[1] / "docs" / "usage.md").read_text()
    example, narrow = usage[usage.index("With `--overlap 0.4` on 0.2 data:"):].split("```")[1:4:2]
    block = example.strip().splitlines()
    warning = block[-1]  # the documented example, printed as it is (on other 0.2 data)
    assert warning.startswith("WARNING: the tiles imply an overlap of 0.20 along x and 0.20 along y, the given "
                              "--overlap is 0.4: check --overlap")
    assert warning in result.stdout.splitlines()
    assert warning.replace("WARNING: ", "WARNING ") in result.stderr  # on the terminal, in the log and the report
    assert warning.replace("WARNING: ", "WARNING ") in (tmp_path / "out" / logs.LOG_FILE).read_text()
    assert html.escape(warning) in (tmp_path / "out" / "report" / "report.html").read_text()
    reason = block[1].split("; ")[0]  # the slice's reason, then what this data's comparison says
    assert any(line.startswith(reason) for line in result.stdout.splitlines())
    pairs = [tmp_path / f"narrow_{path.name}.json" for path in sorted(dataset.glob("*.ome.zarr"))]
    for store, output in zip(sorted(dataset.glob("*.ome.zarr")), pairs):  # the run's measure and fit steps
        steps.measure_pairs(store, output, overlap=0.1)
    steps.fit_affine(pairs, tmp_path / "narrow.json")
    assert list(summary.model_warnings(tmp_path / "narrow.json")) == narrow.strip().splitlines()  # as documented
    if not gpu_available():  # said once per run, not once per task in each worker
        assert result.stderr.count("CuPy or a CUDA device is not available") == 1


def test_debug_lines_say_the_plane_the_flat_field_and_each_pair(synthetic_dataset_small, caplog):
    from linumpy_motor.io.grid import open_mosaic
    from linumpy_motor.register.measure import measure_mosaic

    path = synthetic_dataset_small.path(0)
    with caplog.at_level(logging.DEBUG, logger=logs.PACKAGE_LOGGER):
        measured, skipped, _ = measure_mosaic(open_mosaic(path), 0.2)
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert any(line.startswith(f"{path.name}: plane scores (overlap NCC") for line in debug)
    assert any("flat field estimated from " in line for line in debug)
    assert sum(f"{path.name}: pair [" in line for line in debug) == len(measured) + len(skipped) == 7
    assert any(line.startswith(f"{path.name}: measured on plane z=") and "flat field estimate" in line
               for line in info)


def test_debug_leaves_out_the_font_search_but_keeps_other_libraries():
    with logs.configured("info", debug=True):
        assert logging.getLogger("zarr").isEnabledFor(logging.DEBUG)
        assert not logging.getLogger("matplotlib.font_manager").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("matplotlib").level == logging.NOTSET  # the caller's logging, as it was


@pytest.mark.parametrize("level, lines", [(logging.DEBUG, 7), (logging.INFO, 0)])
def test_each_pairs_decision_is_logged_with_debug_only(synthetic_dataset_small, caplog, level, lines):
    from linumpy_motor.io.grid import open_mosaic
    from linumpy_motor.register.measure import measure_mosaic

    caplog.set_level(level, logger="linumpy_motor.register.measure")
    _, path = synthetic_dataset_small.volumes[0]
    measure_mosaic(open_mosaic(path), synthetic_dataset_small.spec.overlap)
    pairs = [r.getMessage() for r in caplog.records if re.search(r": pair \[\d, \d\] (right|down): ", r.getMessage())]
    assert len(pairs) == lines  # 3x2 tiles: 3 pairs to the right, 4 down
    assert any("measured on plane" in r.getMessage() for r in caplog.records)
