"""The pipeline under the real Nextflow runtime, as a user runs it.

Runs only where ``nextflow`` is on PATH (Nextflow >= 25.10 with the nf-schema plugin it pins); skips with
the reason otherwise. The tasks run the ``bin/`` scripts with this Python (-profile local). Each real run
is checked against what a user reads in docs/: the published layout, the fitted motor model
against the synthetic truth, what ``-resume`` reuses, the commands each task ran (``.command.sh``, parsed
by the script's own parser), and the one-line refusals of bad params and samplesheets. The library's
rules are run beside Nextflow's on the same inputs (slice ids, samplesheets).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from doc_tables import as_pattern, documented_layout, written

from linumpy_motor.errors import InputError
from linumpy_motor.io.dataset import discover_slices
from linumpy_motor.pipeline import runner
from linumpy_motor.pipeline.options import RunOptions

REPO = Path(__file__).resolve().parents[1]
NEXTFLOW = shutil.which("nextflow")
PARSERS = ["v1", "v2"]  # Nextflow 25.10's default config and script parser, and the strict one

pytestmark = [
    pytest.mark.skipif(NEXTFLOW is None, reason="nextflow is not on PATH (the real-runtime tests need Nextflow "
                                                ">= 25.10; docs/usage.md: Tests of the pipeline)"),
    pytest.mark.slow,
]


def nextflow(args: list[str], cwd: Path, parser: str = "v1", timeout: int = 900) -> subprocess.CompletedProcess:
    """``nextflow ARGS`` in ``cwd`` (its .nextflow/ and work/ go there), the tasks on this Python."""
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(NXF_ANSI_LOG="false", NXF_SYNTAX_PARSER=parser, MPLBACKEND="Agg", NXF_DISABLE_CHECK_LATEST="true")
    env.setdefault("NXF_OPTS", "-Xms64m -Xmx768m")
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([NEXTFLOW, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def run_ok(args: list[str], cwd: Path, parser: str = "v1") -> subprocess.CompletedProcess:
    done = nextflow(args, cwd, parser)
    assert done.returncode == 0, f"nextflow {' '.join(args)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done


def trace(outdir: Path) -> list[dict]:
    """The last run's tasks (pipeline_info/execution_trace.txt, rewritten by every run)."""
    with (outdir / "pipeline_info" / "execution_trace.txt").open() as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def statuses(outdir: Path) -> dict[str, str]:
    """{task name: status} of the last run, e.g. {'MEASURE_PAIRS (slice_z01)': 'CACHED'}."""
    return {row["name"].split(":")[-1]: row["status"] for row in trace(outdir)}


def published_paths(outdir: Path, slice_ids: list[int]) -> list[Path]:
    """Every output the embedded runner's layout names (runner.output_paths), flattened."""
    found: list[Path] = []
    stack: list = [runner.output_paths(outdir, slice_ids, measured=True)]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        else:
            found.append(Path(item))
    return found


def synth(folder: Path, *extra: str) -> Path:
    subprocess.run([str(Path(sys.executable).parent / "linumpy-motor"), "synth", str(folder), "--slices", "2",
                    "--grid", "3", "4", "--tile", "4", "64", "64", *extra], check=True, capture_output=True)
    return folder


def launch(path: Path, *args: str, parser: str = "v1") -> subprocess.CompletedProcess:
    return nextflow(["run", str(REPO), "-profile", "local", *args], path, parser)


# ------------------------------------------------------------------------- the test profile


@pytest.fixture(scope="module")
def test_profile(tmp_path_factory):
    """`nextflow run . -profile test,local`, then the same with -resume."""
    root = tmp_path_factory.mktemp("test_profile")
    first = run_ok(["run", str(REPO), "-profile", "test,local", "--outdir", "results"], root)
    first_statuses = statuses(root / "results")
    again = run_ok(["run", str(REPO), "-profile", "test,local", "--outdir", "results", "-resume"], root)
    return {"root": root, "out": root / "results", "first": first, "first_statuses": first_statuses, "again": again}


def test_test_profile_runs_every_task(test_profile):
    names = [name.split(" (")[0] for name in test_profile["first_statuses"]]
    assert sorted(set(names)) == ["COMPARE", "FIT_AFFINE", "LIBRARY_VERSION", "MEASURE_PAIRS", "REPORT", "STITCH",
                                  "SYNTHESISE"]
    assert names.count("MEASURE_PAIRS") == names.count("STITCH") == names.count("COMPARE") == 2
    assert set(test_profile["first_statuses"].values()) == {"COMPLETED"}


def test_test_profile_publishes_the_documented_layout(test_profile):
    out = test_profile["out"]
    for path in published_paths(out, [0, 1]):
        assert path.exists(), path
    for name in ("synthetic/truth.json", "report/report.html", "report/status.json",
                 "pipeline_info/software_versions.yml", "pipeline_info/execution_trace.txt"):
        assert (out / name).exists(), name
    assert sorted(p.name for p in (out / "synthetic").glob("*.ome.zarr")) == ["mosaic_grid_3d_z00.ome.zarr",
                                                                             "mosaic_grid_3d_z01.ome.zarr"]
    documented = [as_pattern(path) for path in documented_layout(0) + documented_layout(1)]
    for path in written(out):  # docs/output.md names every file published
        assert any(pattern.fullmatch(path) for pattern in documented), f"{path} is not in docs/output.md"
    for path in documented_layout(1):
        if path.startswith("pipeline_info/"):
            assert (out / path).exists(), f"docs/output.md: {path} is not published"


def test_test_profile_fits_the_synthetic_truth(test_profile):
    """The published motor model is the synthetic acquisition's (truth.json), within a tenth of a pixel."""
    out = test_profile["out"]
    fitted = np.array(json.loads((out / "motor_transform.json").read_text())["transform"])
    truth = np.array(json.loads((out / "synthetic" / "truth.json").read_text())["transform"])
    assert np.abs(fitted - truth).max() < 0.1, (fitted, truth)


def test_resume_reuses_every_task_but_the_library_version(test_profile):
    again = statuses(test_profile["out"])
    assert again.pop("LIBRARY_VERSION (linumpy-motor)") == "COMPLETED"  # `cache false`: read every run
    assert again and set(again.values()) == {"CACHED"}, again


# ------------------------------------------------------------------- a folder of real stores


PARAMS = {  # non-default values of the params each script reads, and the script option that carries each
    "plane": ("central", "linum_motor_measure_pairs.py", "plane"),
    "max_shift": (9.0, "linum_motor_measure_pairs.py", "max_shift"),
    "histogram_match": (True, "linum_motor_measure_pairs.py", "histogram_match"),
    "max_empty_fraction": (0.9, "linum_motor_measure_pairs.py", "max_empty_fraction"),
    "overlap": (0.2, "linum_motor_measure_pairs.py", "overlap"),
    "n_samples": (30, "linum_motor_fit_affine.py", "n_samples"),
    "seed": (3, "linum_motor_fit_affine.py", "seed"),
    "drift_tolerance": (2.5, "linum_motor_fit_affine.py", "drift_tolerance"),
    "backlash": ("off", "linum_motor_fit_affine.py", "backlash"),
    "blending": ("average", "linum_motor_stitch.py", "blending"),
    "ngff_version": ("0.4", "linum_motor_stitch.py", "ngff_version"),
    "z_chunk": (2, "linum_motor_stitch.py", "z_chunk"),
    "flatfield": ("none", "linum_motor_measure_pairs.py", "flatfield"),  # STITCH gets what MEASURE_PAIRS wrote
}


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory):
    """A folder of two stores with non-default params; then one store replaced by a new one and -resume."""
    root = tmp_path_factory.mktemp("folder")
    data = synth(root / "data", "--seed", "5")
    args = ["--input", str(data), "--outdir", str(root / "results")]
    for name, (value, _, _) in PARAMS.items():
        args += [f"--{name}", str(value).lower() if isinstance(value, bool) else str(value)]
    first = launch(root / "launch", *args)
    first_statuses = statuses(root / "results") if first.returncode == 0 else {}
    # a new store written in place of slice 1 (a user re-acquired it): a new folder, renamed over the old one
    replacement = synth(root / "again", "--seed", "6")
    shutil.rmtree(data / "mosaic_grid_3d_z01.ome.zarr")
    (replacement / "mosaic_grid_3d_z01.ome.zarr").rename(data / "mosaic_grid_3d_z01.ome.zarr")
    again = launch(root / "launch", *args, "-resume")
    return {"root": root, "first": first, "first_statuses": first_statuses, "again": again}


def task_commands(root: Path, out: Path) -> dict[str, list[str]]:
    """Each task's command (its .command.sh without the exports), by task name."""
    commands = {}
    for row in trace(out):
        (workdir,) = (root / "launch" / "work").glob(f"{row['hash']}*")
        # the module's script: its lines after the shebang and the exports, up to the comment that starts what
        # Nextflow appends (the eval outputs' commands)
        lines: list[str] = []
        for line in (workdir / ".command.sh").read_text().replace("\\\n", " ").splitlines():
            if line.startswith("#") and lines:
                break
            if line.strip() and not line.startswith(("#", "export ")):
                lines.append(line)
        commands[row["name"].split(":")[-1]] = shlex.split(" ".join(lines))
    return commands


def script_parser(program: str):
    spec = importlib.util.spec_from_file_location(f"nf_run_{Path(program).stem}", REPO / "bin" / program)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def test_each_param_reaches_its_script_as_given(folder_run):
    """The commands Nextflow rendered, parsed by each script's own parser: every param arrives as its value."""
    assert folder_run["first"].returncode == 0, folder_run["first"].stdout + folder_run["first"].stderr
    commands = task_commands(folder_run["root"], folder_run["root"] / "results")
    seen = set()
    for name, words in commands.items():
        program = words[0]
        if program in ("linum_motor_version.py",):
            continue
        args = script_parser(program).parse_args(words[1:])
        for param, (value, script, dest) in PARAMS.items():
            if script == program:
                assert getattr(args, dest) == (value if param != "ngff_version" else str(value)), (name, param)
                seen.add(param)
        if program in ("linum_motor_measure_pairs.py", "linum_motor_stitch.py"):
            assert args.threads == 2 and args.use_gpu is False, name
        if program == "linum_motor_stitch.py":  # the slice's flat field as its measurement wrote it (ones: none)
            assert args.flatfield == "flatfield.npy", name
    assert seen == set(PARAMS)


def test_tasks_size_their_thread_pools_to_their_cpus(folder_run):
    root = folder_run["root"]
    for row in trace(root / "results"):
        (workdir,) = (root / "launch" / "work").glob(f"{row['hash']}*")
        script = (workdir / ".command.sh").read_text()
        if row["name"].startswith(("MEASURE_PAIRS", "STITCH")):
            assert "OMP_NUM_THREADS=2 " in script and 'CUPY_CACHE_DIR="$PWD/.cupy"' in script, row["name"]


def test_a_replaced_store_reruns_its_slice_only(folder_run):
    """-resume after one store was replaced: that slice is measured again, the other one is not; the fit,
    and what depends on the motor model, follow the new measurements."""
    again = folder_run["again"]
    assert again.returncode == 0, again.stdout + again.stderr
    now = statuses(folder_run["root"] / "results")
    assert now["MEASURE_PAIRS (slice_z00)"] == "CACHED"
    assert now["MEASURE_PAIRS (slice_z01)"] == "COMPLETED"
    assert folder_run["first_statuses"]["MEASURE_PAIRS (slice_z00)"] == "COMPLETED"


# ------------------------------------------------------------------------------ samplesheets


@pytest.fixture(scope="module")
def samplesheet_run(tmp_path_factory):
    """A samplesheet with paths relative to its folder, one store named like a shell command, launched from
    another folder, stitched with each tile's registered residual."""
    root = tmp_path_factory.mktemp("sheet")
    data = synth(root / "sheets" / "data")
    hostile = data / "$(touch PWNED) it's z07.ome.zarr"
    (data / "mosaic_grid_3d_z01.ome.zarr").rename(hostile)
    sheet = root / "sheets" / "slices.csv"
    sheet.write_text(f"slice_id,path\n3,data/mosaic_grid_3d_z00.ome.zarr\n7,\"data/{hostile.name}\"\n")
    done = launch(root / "launch", "--input", str(sheet), "--outdir", str(root / "results"),
                  "--placement", "registered")
    return {"root": root, "sheet": sheet, "done": done}


def test_samplesheet_paths_are_taken_from_its_folder(samplesheet_run):
    done, root = samplesheet_run["done"], samplesheet_run["root"]
    assert done.returncode == 0, done.stdout + done.stderr
    assert [slice_id for slice_id, _ in discover_slices(samplesheet_run["sheet"])] == [3, 7]
    stitched = sorted(p.name for p in (root / "results" / "stitched").iterdir())
    assert stitched == ["slice_z03_stitch_3d.ome.zarr", "slice_z07_stitch_3d.ome.zarr"]
    assert not list(root.rglob("PWNED")), "a store's name ran as a command"


# ------------------------------------------------------------------------- a given transform


def test_a_given_transform_stitches_without_measuring(tmp_path):
    data = synth(tmp_path / "data")
    transform = tmp_path / "model" / "A.npy"
    transform.parent.mkdir()
    np.save(transform, np.array(json.loads((data / "truth.json").read_text())["transform"]))
    done = launch(tmp_path / "launch", "--input", str(data), "--outdir", str(tmp_path / "results"),
                  "--transform", str(transform))
    assert done.returncode == 0, done.stdout + done.stderr
    names = {name.split(" (")[0] for name in statuses(tmp_path / "results")}
    assert names == {"LIBRARY_VERSION", "STITCH"}
    published = tmp_path / "results" / "motor_transform.npy"
    assert np.array_equal(np.load(published), np.load(transform))
    assert len(list((tmp_path / "results" / "stitched").glob("*.ome.zarr"))) == 2


# ---------------------------------------------------------------------------------- refusals


def refusal(done: subprocess.CompletedProcess) -> str:
    """The error a refused run prints (Nextflow's 'ERROR ~' line and the lines after it)."""
    assert done.returncode != 0, done.stdout
    text = done.stdout + done.stderr
    return text[text.index("ERROR ~"):] if "ERROR ~" in text else text


def test_a_misspelt_param_is_refused_by_name(tmp_path):
    text = refusal(launch(tmp_path, "--input", str(synth(tmp_path / "data")), "--overlapp", "0.3"))
    assert "overlapp" in text


def test_an_overlap_out_of_range_is_refused_by_name(tmp_path):
    text = refusal(launch(tmp_path, "--input", str(synth(tmp_path / "data")), "--overlap", "2"))
    assert "--overlap" in text and "2" in text


@pytest.mark.parametrize("rows, words", [
    ("3,data/mosaic_grid_3d_z00.ome.zarr\n3,data/mosaic_grid_3d_z01.ome.zarr\n", ["slice_id"]),
    ("-1,data/mosaic_grid_3d_z00.ome.zarr\n", ["slice_id"]),
    ("2,data/missing.ome.zarr\n", ["missing.ome.zarr"]),
    ("2,data/mosaic_grid_3d_z00.ome.zarr\n5,data/../data/mosaic_grid_3d_z00.ome.zarr\n", ["already listed"]),
])
def test_a_bad_samplesheet_is_refused_by_both(tmp_path, rows, words):
    """The embedded runner (the library's rules) and Nextflow refuse the same samplesheet before any work,
    each naming the problem."""
    synth(tmp_path / "data")
    sheet = tmp_path / "slices.csv"
    sheet.write_text("slice_id,path\n" + rows)
    with pytest.raises(InputError) as caught:
        runner.run(sheet, tmp_path / "runner_out", RunOptions())
    assert str(sheet) in str(caught.value) or "missing.ome.zarr" in str(caught.value)
    text = refusal(launch(tmp_path / "launch", "--input", str(sheet)))
    for word in words:
        assert word in text, text
    assert not (tmp_path / "launch" / "work").exists() or not any((tmp_path / "launch" / "work").iterdir())


SLICE_IDS = json.loads((REPO / "tests" / "data" / "slice_ids.json").read_text())["names"]


def test_slice_ids_from_store_names_are_the_library_s(tmp_path):
    """A folder of stores named as in tests/data/slice_ids.json (one name per id): Nextflow names its outputs
    after the ids the library gives the same folder."""
    names, ids = [], set()
    for name, slice_id in SLICE_IDS.items():
        if slice_id is not None and name.endswith(".ome.zarr") and slice_id not in ids:
            names.append(name)
            ids.add(slice_id)
    for name in names:
        (tmp_path / "data" / name).mkdir(parents=True)
    library = sorted(slice_id for slice_id, _ in discover_slices(tmp_path / "data"))
    done = launch(tmp_path / "launch", "-stub-run", "--input", str(tmp_path / "data"), "--outdir",
                  str(tmp_path / "results"))
    assert done.returncode == 0, done.stdout + done.stderr
    stitched = sorted(int(p.name.split("_")[1][1:]) for p in (tmp_path / "results" / "stitched").iterdir())
    assert stitched == library == sorted(ids)


def test_a_store_name_without_a_number_is_refused_by_both(tmp_path):
    (tmp_path / "data" / "mosaic.ome.zarr").mkdir(parents=True)
    with pytest.raises(InputError) as caught:
        discover_slices(tmp_path / "data")
    assert "no slice number in the name" in str(caught.value)
    text = refusal(launch(tmp_path / "launch", "--input", str(tmp_path / "data")))
    assert "mosaic.ome.zarr: no slice number in the name" in text, text


def test_help_prints_the_params(tmp_path):
    done = launch(tmp_path, "--help")
    assert done.returncode == 0, done.stdout + done.stderr
    for param in ("--input", "--outdir", "--overlap", "--blending", "--fail_on", "--node_cpus"):
        assert param in done.stdout, param
    assert "Give --input" not in done.stdout + done.stderr


@pytest.mark.parametrize("parser", PARSERS)
def test_stub_run_publishes_the_layout_under_both_parsers(tmp_path, parser):
    """-stub-run of the test profile: every process and every documented output, synthetic/truth.json too (the
    test profile once replaced SYNTHESISE's publishDir under the default parser)."""
    done = nextflow(["run", str(REPO), "-profile", "test,local", "-stub-run", "--outdir", "results"], tmp_path, parser)
    assert done.returncode == 0, done.stdout + done.stderr
    for path in published_paths(tmp_path / "results", [0, 1]):
        assert path.exists(), path
    for name in ("synthetic/truth.json", "synthetic/mosaic_grid_3d_z00.ome.zarr", "report/report.html",
                 "pipeline_info/software_versions.yml"):
        assert (tmp_path / "results" / name).exists(), name


@pytest.mark.parametrize("profile", ["test,slurm", "slurm,test"])
def test_the_test_profile_s_limits_win_in_any_order(tmp_path, profile):
    done = nextflow(["config", str(REPO), "-profile", profile, "-flat"], tmp_path)
    assert done.returncode == 0, done.stderr
    assert "process.resourceLimits = [cpus:" in done.stdout
    limits = [line for line in done.stdout.splitlines() if line.startswith("process.resourceLimits")]
    assert limits and "4 GB" in limits[-1] or "4.GB" in limits[-1], limits
