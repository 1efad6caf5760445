"""The pipeline on a real SLURM cluster, as a cluster user runs it.

Runs where ``nextflow``, ``sbatch`` and a SLURM controller that answers are present; skips with the reason
otherwise. ``tests/slurm_testbed.sh start`` brings up a single-node SLURM on this machine from Debian's
packages (then ``eval "$(bash tests/slurm_testbed.sh env)"`` before pytest, so the client tools find it).
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from test_nextflow_run import REPO, nextflow

NEXTFLOW = shutil.which("nextflow")


def controller_answers() -> bool:
    if not (NEXTFLOW and shutil.which("sbatch") and shutil.which("sinfo")):
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%P %a"], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and " up" in done.stdout


pytestmark = [
    pytest.mark.skipif(not controller_answers(), reason="needs nextflow, sbatch and a SLURM controller that answers "
                                                        "(tests/slurm_testbed.sh start)"),
    pytest.mark.slow,
]


def trace_rows(outdir: Path) -> list[dict]:
    with (outdir / "pipeline_info" / "execution_trace.txt").open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def slurm_job_ids() -> set[str]:
    done = subprocess.run(["squeue", "-h", "-t", "all", "-o", "%i"], capture_output=True, text=True, check=True)
    return set(done.stdout.split())


@pytest.fixture(scope="module")
def slurm_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("slurm")
    first = nextflow(["run", str(REPO), "-profile", "test,slurm,local", "--outdir", "results"], root)
    rows = trace_rows(root / "results") if first.returncode == 0 else []
    before = slurm_job_ids()
    again = nextflow(["run", str(REPO), "-profile", "test,slurm,local", "--outdir", "results", "-resume"], root)
    submitted_again = slurm_job_ids() - before
    return {"root": root, "first": first, "rows": rows, "again": again, "submitted_again": submitted_again}


def test_every_task_but_the_local_ones_ran_as_a_slurm_job(slurm_run):
    assert slurm_run["first"].returncode == 0, slurm_run["first"].stdout + slurm_run["first"].stderr
    for row in slurm_run["rows"]:
        name = row["name"].split(":")[-1]
        if name.startswith(("LIBRARY_VERSION", "QC_CHECK")):  # executor 'local' (conf/modules.config)
            continue
        (workdir,) = (slurm_run["root"] / "work").glob(f"{row['hash']}*")
        header = [line for line in (workdir / ".command.run").read_text().splitlines() if line.startswith("#SBATCH")]
        assert header, f"{name} was not submitted to SLURM"
        assert "#SBATCH -t 01:00:00" in header or any(line.startswith("#SBATCH -t 00:") for line in header), header
        assert row["status"] == "COMPLETED", name
    assert (slurm_run["root"] / "results" / "motor_transform.json").exists()
    assert len(list((slurm_run["root"] / "results" / "stitched").glob("*.ome.zarr"))) == 2


def test_resume_submits_nothing(slurm_run):
    assert slurm_run["again"].returncode == 0, slurm_run["again"].stdout + slurm_run["again"].stderr
    assert slurm_run["submitted_again"] == set()


def test_the_slurm_profile_alone_fits_the_node(tmp_path):
    """-profile slurm,local with the synthetic test data and no -c file: every request fits the node."""
    start = time.monotonic()
    done = nextflow(["run", str(REPO), "-profile", "slurm,local", "--synthetic", "--synthetic_size", "test",
                     "--outdir", "results"], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert time.monotonic() - start < 900


def test_a_request_no_node_can_meet_stops_the_run_at_once(tmp_path):
    """A site config that raises a request beyond every node: the run stops before submitting it, naming
    the process, instead of leaving a job pending forever."""
    config = tmp_path / "big.config"
    config.write_text("process {\n    resourceLimits = [cpus: 64, memory: 512.GB, time: 72.h]\n"
                      "    withName: 'MEASURE_PAIRS' { cpus = 64 }\n}\n")
    before = slurm_job_ids()
    start = time.monotonic()
    done = nextflow(["run", str(REPO), "-profile", "test,slurm,local", "-c", str(config), "--outdir", "results"],
                    tmp_path)
    assert time.monotonic() - start < 120
    assert done.returncode != 0
    text = done.stdout + done.stderr
    lines = [line for line in text.splitlines() if "MEASURE_PAIRS asks for 64 CPUs" in line]
    assert lines and "no node of the default partition can run it" in lines[0], text
    pending = subprocess.run(["squeue", "-h", "-t", "PD", "-o", "%i"], capture_output=True, text=True).stdout.split()
    assert not set(pending) - before
