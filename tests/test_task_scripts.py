"""The task scripts the Nextflow modules call (bin/), run as a task runs them: by bare name from the
task's PATH, under the pipeline's shell. How Nextflow renders and runs them is tested with the real
runtime (tests/test_nextflow_run.py)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT, EXIT_NOT_OK

REPO = Path(__file__).resolve().parents[1]
SHELL = ["bash", "-C", "-e", "-u", "-o", "pipefail"]  # process.shell in nextflow.config


def task_env() -> dict:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(REPO / "bin"), str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONNOUSERSITE"] = "1"  # env scope of nextflow.config
    env.setdefault("MPLBACKEND", "Agg")
    return env


STATUS = {"1": {"status": "ok", "reasons": []}, "2": {"status": "check", "reasons": ["drifts 1.8 px"]},
          "3": {"status": "failed", "reasons": ["too few usable pairs"]}}


@pytest.mark.parametrize("fail_on, statuses, code", [
    ("never", ("ok", "check", "failed"), 0),
    ("failed", ("ok", "check"), 0),
    ("failed", ("ok", "check", "failed"), EXIT_NOT_OK),
    ("check", ("ok",), 0),
    ("check", ("ok", "check"), EXIT_NOT_OK),
])
def test_qc_check_fails_its_task_only_when_fail_on_counts_a_slice(tmp_path, fail_on, statuses, code):
    """QC_CHECK's command (modules/local/qc_check) on a report: exit code EXIT_NOT_OK (the task, so the run,
    fails) exactly when a slice's status is one --fail_on counts; the slices that are not ok are listed."""
    report = tmp_path / "report"
    report.mkdir()
    status = {sid: entry for sid, entry in STATUS.items() if entry["status"] in statuses}
    (report / "status.json").write_text(json.dumps(status))
    script = f"linum_motor_qc.py report --fail-on {fail_on} | tee qc_status.txt"
    done = subprocess.run([*SHELL, "-c", script], cwd=tmp_path, env=task_env(), capture_output=True, text=True)
    assert done.returncode == code, done.stderr
    listed = (tmp_path / "qc_status.txt").read_text().splitlines()
    counts = {word: statuses.count(word) for word in ("ok", "check", "failed")}
    assert listed[0] == f"QC: {counts['ok']} ok, {counts['check']} check, {counts['failed']} failed"
    assert [line.split(":")[0].strip() for line in listed[1:]] == [f"slice {sid}" for sid in status if sid != "1"]


@pytest.mark.parametrize("content, problem", [(None, "No such file"), ("{", "not valid JSON"),
                                              ('{"1": {"status": "great"}}', "status")])
def test_qc_script_refuses_a_bad_status_file(tmp_path, content, problem):
    if content is not None:
        (tmp_path / "status.json").write_text(content)
    done = subprocess.run(["linum_motor_qc.py", str(tmp_path), "--fail-on", "check"], env=task_env(),
                          capture_output=True, text=True)
    assert done.returncode == EXIT_BAD_INPUT
    (line,) = done.stderr.strip().splitlines()
    assert str(tmp_path / "status.json") in line and problem in line, line


@pytest.mark.slow
def test_measure_pairs_runs_on_a_store_with_a_hostile_name(tmp_path):
    """The real script on a real store named like a command: it measures the store and runs nothing."""
    data = tmp_path / "data"
    subprocess.run(["linum_motor_synth.py", str(data), "--slices", "1", "--grid", "2", "2", "--tile", "2", "48", "48"],
                   env=task_env(), check=True, capture_output=True)
    (store,) = sorted(data.glob("*.ome.zarr"))
    hostile = data / f"$(touch PWNED) it's {store.name}"
    store.rename(hostile)
    subprocess.run(["linum_motor_measure_pairs.py", str(hostile), "slice_z00_pairs.json", "--slice-id", "0"],
                   cwd=tmp_path, env=task_env(), check=True, capture_output=True)
    assert json.loads((tmp_path / "slice_z00_pairs.json").read_text())["pairs"], "pairs measured"
    assert not list(tmp_path.rglob("PWNED"))


def test_library_version_changes_with_the_library_source(tmp_path):
    """linum_motor_version.py: '<version>+<hash>'; the hash follows the installed package's files."""
    copy = tmp_path / "site"
    shutil.copytree(REPO / "linumpy_motor", copy / "linumpy_motor", ignore=shutil.ignore_patterns("__pycache__"))
    env = {**task_env(), "PYTHONPATH": str(copy)}

    def version() -> str:
        done = subprocess.run(["linum_motor_version.py"], env=env, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    first = version()
    import linumpy_motor  # noqa: PLC0415

    assert first.startswith(f"{linumpy_motor.__version__}+") and len(first.split("+")[1]) == 12
    assert version() == first  # stable
    (copy / "linumpy_motor" / "__pycache__").mkdir(exist_ok=True)
    (copy / "linumpy_motor" / "__pycache__" / "x.pyc").write_bytes(b"compiled")
    assert version() == first  # byte-code caches do not count
    with (copy / "linumpy_motor" / "fit.py").open("a") as handle:
        handle.write("\n# changed\n")
    assert version() != first


def test_library_version_says_when_the_package_is_missing(tmp_path):
    """-profile local without the package installed: the first task stops with one clear line."""
    env = {**task_env(), "PYTHONPATH": str(tmp_path)}
    env["PATH"] = os.pathsep.join([str(REPO / "bin"), "/usr/bin", "/bin"])
    done = subprocess.run(["/usr/bin/python3", str(REPO / "bin" / "linum_motor_version.py")], env=env,
                          capture_output=True, text=True, cwd=tmp_path)
    if done.returncode == 0:
        pytest.skip("the system Python has linumpy_motor installed")
    assert done.returncode == 1
    (line,) = done.stderr.strip().splitlines()
    assert "linumpy_motor package is not importable" in line and "pip install" in line
