"""Run the pipeline's own task scripts, in order, the way Nextflow would.

Each process's `script:` block is read from modules/local/*/main.nf and rendered for a profile's
params (tests/nf_groovy.py evaluates the `def` lines, the module's functions and the `ext.args`
closures of conf/modules.config, interpolates the GString with Nextflow's escaping of staged paths,
then strips the indentation as Nextflow does). Each task runs in its own folder with its inputs
staged as symlinks, under the pipeline's shell (`bash -C -e -u -o pipefail`); its declared outputs
must appear, and its `eval(...)` outputs are run after it, as Nextflow appends them. The flow
mirrors main.nf:

    LIBRARY_VERSION -> SYNTHESISE -> MEASURE_PAIRS (per slice) -> FIT_AFFINE -> STITCH (per slice)
                    -> COMPARE (per slice) -> REPORT -> QC_CHECK (with params.fail_on failed|check)
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nf_groovy import (  # noqa: E402
    REPO,
    NfPath,
    NfPathList,
    ext_args_value,
    nf_functions,
    nf_processes,
    profile_ext_args,
    profile_params,
)

from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT, EXIT_NOT_OK  # noqa: E402

SHELL = ["bash", "-C", "-e", "-u", "-o", "pipefail"]  # process.shell in nextflow.config
PROFILE = ("test",)
MAIN = nf_functions(REPO / "main.nf")


def process(name: str):
    (proc,) = nf_processes(REPO / "modules" / "local" / name / "main.nf")
    return proc


def slice_meta(zarr: Path) -> dict:
    """As main.nf: sliceMeta(checkedSliceId(zarr)), with main.nf's own functions."""
    slice_id = MAIN["sliceIdFromName"](zarr.name)
    assert slice_id is not None, zarr
    return MAIN["sliceMeta"](slice_id)


def task_env(extra_path: Path | None = None) -> dict:
    env = dict(os.environ)
    path = [str(REPO / "bin"), str(Path(sys.executable).parent)]
    if extra_path:
        path.insert(0, str(extra_path))
    env["PATH"] = os.pathsep.join([*path, env.get("PATH", "")])
    env["PYTHONNOUSERSITE"] = "1"  # env scope of nextflow.config
    env.setdefault("MPLBACKEND", "Agg")
    return env


def library_version() -> str:
    result = subprocess.run(["linum_motor_version.py"], env=task_env(), capture_output=True, text=True, check=True)
    return result.stdout.strip()


class Runner:
    """A minimal stand-in for Nextflow's local executor."""

    def __init__(self, root: Path, profile=PROFILE, params=None, section="script", cpus=2, bin_dir=None):
        self.root = root
        self.params = {**profile_params(*profile), **(params or {})}
        self.ext_args = profile_ext_args(*profile)
        self.section = section
        self.cpus = cpus
        self.bin_dir = bin_dir  # stand-ins for bin/ scripts, found first on PATH
        self.count = 0

    def env(self, proc, meta, inputs: dict) -> dict:
        declared = [name for kind, name in proc.inputs() if name != "meta"]
        assert list(inputs) == declared, f"{proc.name}: inputs {list(inputs)} != declared {declared}"
        kinds = dict((name, kind) for kind, name in proc.inputs())
        env = {"params": self.params, "meta": meta}
        for name, value in inputs.items():
            if kinds[name] == "val":
                env[name] = value
            elif isinstance(value, list):
                env[name] = NfPathList(NfPath(Path(v).name) for v in value)
            else:
                env[name] = NfPath(Path(value).name)
        ext_args = ext_args_value(self.ext_args.get(proc.name), env)
        accelerator = 1 if env.get("use_gpu") else None  # the modules' `accelerator { use_gpu ? 1 : null }`
        env["task"] = {"ext": {"args": ext_args}, "accelerator": accelerator, "process": proc.name,
                       "attempt": 1, "cpus": self.cpus}
        return env

    def run(self, proc, meta, **inputs) -> dict[str, list[Path]]:
        """Stage, render, run; returns {output pattern: matching paths, 'eval': [eval outputs]}."""
        self.count += 1
        workdir = self.root / f"{self.count:02d}_{proc.name}_{meta['id']}"
        workdir.mkdir(parents=True)
        staged = set()
        kinds = dict((name, kind) for kind, name in proc.inputs())
        for name, value in inputs.items():
            if kinds[name] != "path":
                continue
            for src in value if isinstance(value, list) else [value]:
                (workdir / Path(src).name).symlink_to(Path(src).resolve())
                staged.add(Path(src).name)
        script = proc.render(self.env(proc, meta, inputs), self.section)
        (workdir / ".command.sh").write_text(script)
        result = subprocess.run([*SHELL, ".command.sh"], cwd=workdir, env=task_env(self.bin_dir),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (
            f"{proc.name} failed ({result.returncode})\n--- script\n{script}\n--- stdout\n{result.stdout}"
            f"\n--- stderr\n{result.stderr}"
        )
        outputs = {"stdout": result.stdout, "eval": []}
        for pattern in proc.output_patterns():
            found = sorted(Path(p) for p in glob.glob(str(workdir / pattern)) if Path(p).name not in staged)
            assert found, f"{proc.name}: no output matches {pattern!r} in {workdir}"
            outputs[pattern] = found
        for command in proc.eval_outputs():
            done = subprocess.run([*SHELL, "-c", command], cwd=workdir, env=task_env(self.bin_dir),
                                  capture_output=True, text=True, timeout=60)
            assert done.returncode == 0, f"{proc.name}: eval({command!r}) failed: {done.stderr}"
            outputs["eval"].append(done.stdout.strip())
        return outputs


def run_pipeline(runner: Runner, use_gpu: bool = False, flatfield=()):
    """The flow of main.nf. `flatfield`: the staged .npy when params.flatfield names one, as main.nf
    gives it to MEASURE_PAIRS and STITCH; with params.placement 'registered' STITCH gets each slice's
    pairs JSON (main.nf joins them by meta), else []."""
    flatfield = list(flatfield) or []
    registered = runner.params["placement"] == "registered"
    library = runner.run(process("library"), {"id": "linumpy-motor"})["stdout"].strip()
    synth = runner.run(process("synthesise"), {"id": "synthetic"}, library=library)
    zarrs = synth["synthetic/*.ome.zarr"]
    slices = [(slice_meta(z), z) for z in zarrs]

    pairs = {}
    for meta, zarr in slices:
        out = runner.run(process("measure_pairs"), meta, zarr=zarr, flatfield=flatfield, use_gpu=use_gpu,
                         library=library)
        (pairs[meta["id"]],) = out["*_pairs.json"]
    all_pairs = sorted(pairs.values(), key=lambda p: p.name)

    fit = runner.run(process("fit_affine"), {"id": "motor"}, pairs=all_pairs, library=library)
    (transform,) = fit["motor_transform.json"]

    stitched, compared = {}, {}
    for meta, zarr in slices:
        out = runner.run(process("stitch"), meta, zarr=zarr, pairs=pairs[meta["id"]] if registered else [],
                         transform=transform, flatfield=flatfield, use_gpu=use_gpu, library=library)
        (stitched[meta["id"]],) = out["*_stitch_3d.ome.zarr"]
        out = runner.run(process("compare"), meta, pairs=pairs[meta["id"]], transform=transform, library=library)
        (compared[meta["id"]],) = out["*_compare.json"]

    report = runner.run(
        process("report"), {"id": "report"}, transform=transform, pairs=all_pairs,
        compare=sorted(compared.values(), key=lambda p: p.name),
        stitched=sorted(stitched.values(), key=lambda p: p.name), library=library,
    )
    qc = None
    if MAIN["qcCheckNeeded"](runner.params["fail_on"]):
        qc = runner.run(process("qc_check"), {"id": "report"}, report=report["report"][0], library=library)
    return {"qc": qc, "library": library, "synth": synth, "slices": slices, "pairs": pairs, "transform": transform,
            "stitched": stitched, "compare": compared, "report": report, "fit": fit}


# ------------------------------------------------------------------------------ end to end


@pytest.mark.slow
def test_pipeline_scripts_end_to_end(tmp_path):
    runner = Runner(tmp_path / "work")
    out = run_pipeline(runner)

    (truth_path,) = out["synth"]["synthetic/truth.json"]
    truth = np.asarray(json.loads(truth_path.read_text())["transform"], dtype=float)
    model = json.loads(out["transform"].read_text())
    assert set(model) >= {"transform", "diagnostics"}
    fitted = np.asarray(model["transform"], dtype=float)
    assert fitted.shape == (2, 2)
    assert np.max(np.abs(fitted - truth)) <= 0.15, f"fitted {fitted.tolist()} vs truth {truth.tolist()}"

    n_slices = len(out["slices"])
    assert n_slices == 2  # conf/test.config: --slices 2
    for meta, _ in out["slices"]:
        stitched = out["stitched"][meta["id"]]
        assert stitched.is_dir() and stitched.name == f"{meta['prefix']}_stitch_3d.ome.zarr"
        assert out["pairs"][meta["id"]].name == f"{meta['prefix']}_pairs.json"
        assert out["compare"][meta["id"]].name == f"{meta['prefix']}_compare.json"
        assert json.loads(out["pairs"][meta["id"]].read_text())["slice_id"] == meta["id"]
        json.loads(out["compare"][meta["id"]].read_text())
    (report_dir,) = out["report"]["report"]
    assert (report_dir / "report.html").is_file()

    # --transform: main.nf skips MEASURE_PAIRS / FIT_AFFINE / COMPARE and REPORT gets [] for both
    again = runner.run(process("report"), {"id": "report"}, transform=out["transform"], pairs=[], compare=[],
                       stitched=sorted(out["stitched"].values(), key=lambda p: p.name), library=out["library"])
    assert (again["report"][0] / "report.html").is_file()

    # the versions topic: every task reports the library it ran with, the one LIBRARY_VERSION read
    assert out["library"] == library_version()
    assert out["fit"]["eval"] == [out["library"]] and out["report"]["eval"] == [out["library"]]


def rms_from_truth(positions: np.ndarray, truth: np.ndarray) -> float:
    """RMS distance of tile positions from the true ones, both taken about their mean (the canvas origin is free)."""
    positions, truth = np.asarray(positions, float), np.asarray(truth, float)
    return float(np.sqrt(np.mean(((positions - positions.mean(0)) - (truth - truth.mean(0))) ** 2)))


@pytest.mark.slow
def test_pipeline_scripts_with_registered_placement_and_a_flatfield_file(tmp_path):
    """The newer options through every task: a .npy flat field measured and stitched with, the central
    plane, no backlash term, Z chunks of 2, QC_CHECK, and registered placement, which puts the tiles at
    their true (jittered) positions, as the motor model alone cannot."""
    from linumpy_motor.pipeline.steps import tile_positions  # noqa: PLC0415

    flat = tmp_path / "flat.npy"
    np.save(flat, np.ones((64, 64), dtype=np.float32))  # conf/test.config: 64 px tiles
    params = {"placement": "registered", "flatfield": str(flat), "plane": "central", "background_test": False,
              "backlash": "off", "z_chunk": 2, "fail_on": "check"}
    out = run_pipeline(Runner(tmp_path / "work", params=params), flatfield=[flat])

    (truth_path,) = out["synth"]["synthetic/truth.json"]
    truth = json.loads(truth_path.read_text())
    model = json.loads(out["transform"].read_text())
    for meta, _ in out["slices"]:
        stats = json.loads(out["pairs"][meta["id"]].read_text())["stats"]
        assert stats["flatfield"] == "given" and stats["plane_mode"] == "central" and stats["z"] == 2
        per_slice = model["diagnostics"]["per_slice"][str(meta["id"])]["fit"]["position_stage"]
        assert per_slice["backlash"]["mode"] == "off"
        store = out["stitched"][meta["id"]]
        attrs = json.loads((store / "zarr.json").read_text())["attributes"]["linumpy_motor"]
        assert json.loads((store / "0" / "zarr.json").read_text())["chunk_grid"]["configuration"]["chunk_shape"][0] == 2
        true_positions = truth["slices"][str(meta["id"])]["positions"]
        placed = rms_from_truth(attrs["positions"], true_positions)
        model_only = rms_from_truth(tile_positions(out["transform"], tuple(truth["grid"])), true_positions)
        assert placed < 0.1 and placed < model_only / 2, (placed, model_only)
    assert out["qc"]["stdout"].splitlines()[0] == "QC: 2 ok, 0 check, 0 failed"  # QC_CHECK ran, nothing fails


# --------------------------------------------------------------- stubs and rendering (fast)


def test_stub_blocks_produce_every_declared_output(tmp_path):
    """`-stub-run`: every stub creates what its process declares, so the channels still flow."""
    run_pipeline(Runner(tmp_path / "work", section="stub", params={"fail_on": "check"}))  # QC_CHECK too


DEFAULT_INPUTS = {
    "library": {},
    "synthesise": {"library": "0.1.0+abc"},
    "measure_pairs": {"zarr": "in/mosaic_grid_3d_z07.ome.zarr", "flatfield": [], "use_gpu": False,
                      "library": "0.1.0+abc"},
    "fit_affine": {"pairs": ["p/slice_z01_pairs.json", "p/slice_z02_pairs.json"], "library": "0.1.0+abc"},
    "stitch": {"zarr": "in/mosaic_grid_3d_z07.ome.zarr", "pairs": [], "transform": "motor_transform.json",
               "flatfield": [], "use_gpu": False, "library": "0.1.0+abc"},
    "compare": {"pairs": "slice_z07_pairs.json", "transform": "motor_transform.json", "library": "0.1.0+abc"},
    "report": {"transform": "motor_transform.json", "pairs": ["a_pairs.json"], "compare": ["a_compare.json"],
               "stitched": ["a_stitch_3d.ome.zarr"], "library": "0.1.0+abc"},
    "qc_check": {"report": "report", "library": "0.1.0+abc"},
}


def render(name: str, *, params=None, profile=PROFILE, cpus=2, **inputs) -> str:
    runner = Runner(Path("/nonexistent"), profile=profile, params=params, cpus=cpus)
    proc = process(name)
    meta = {"id": 7, "prefix": "slice_z07"}
    return proc.render(runner.env(proc, meta, {**DEFAULT_INPUTS[name], **inputs}))


def command_words(script: str, program: str, cwd: Path | None = None) -> list[str]:
    """The words bash passes to `program` when it runs a rendered script (quotes and escapes resolved
    by bash itself): `program` is replaced by a shell function that prints its arguments as JSON."""
    probe = f"{program}() {{ python3 -c 'import json, sys; print(json.dumps(sys.argv[1:]))' \"$@\"; }}\n"
    with tempfile.TemporaryDirectory() as scratch:  # what a script writes besides its program (tee) goes there
        result = subprocess.run(["bash", "-c", probe + script], cwd=cwd or scratch, capture_output=True, text=True,
                                check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


MODULE_NAMES = ["synthesise", "measure_pairs", "fit_affine", "stitch", "compare", "report", "qc_check"]
PROGRAMS = {"synthesise": "linum_motor_synth.py", "measure_pairs": "linum_motor_measure_pairs.py",
            "fit_affine": "linum_motor_fit_affine.py", "stitch": "linum_motor_stitch.py",
            "compare": "linum_motor_compare.py", "report": "linum_motor_report.py", "qc_check": "linum_motor_qc.py"}


@pytest.mark.parametrize("name", MODULE_NAMES)
@pytest.mark.parametrize("profile", [(), ("test",), ("gpu",)])
def test_no_unset_value_reaches_a_command_line(name, profile):
    words = command_words(render(name, profile=profile), PROGRAMS[name])
    assert "null" not in words and "[]" not in words and "" not in words, words


@pytest.mark.parametrize("name", ["measure_pairs", "stitch"])
def test_use_gpu_input_drives_the_flag(name):
    assert "--use-gpu" not in command_words(render(name, use_gpu=False), PROGRAMS[name])
    assert "--use-gpu" in command_words(render(name, use_gpu=True), PROGRAMS[name])


def test_optional_measure_flags():
    plain = command_words(render("measure_pairs"), "linum_motor_measure_pairs.py")
    for flag in ("--z", "--max-shift", "--histogram-match", "--max-empty-fraction"):
        assert flag not in plain
    words = command_words(render("measure_pairs", params={"z": 3, "max_shift": 5.0, "histogram_match": True,
                                                          "max_empty_fraction": 0.5, "overlap": 0.25}),
                          "linum_motor_measure_pairs.py")
    assert words[:2] == ["mosaic_grid_3d_z07.ome.zarr", "slice_z07_pairs.json"]
    for pair in (["--z", "3"], ["--max-shift", "5.0"], ["--max-empty-fraction", "0.5"], ["--overlap", "0.25"],
                 ["--slice-id", "7"]):
        k = words.index(pair[0])
        assert words[k : k + 2] == pair, words
    assert "--histogram-match" in words
    # the strict syntax parser passes CLI params as strings: `--histogram_match false` stays off
    assert "--histogram-match" not in command_words(render("measure_pairs", params={"histogram_match": "false"}),
                                                    "linum_motor_measure_pairs.py")


def test_fit_and_stitch_arguments():
    fit = command_words(render("fit_affine", params={"n_samples": 500}), "linum_motor_fit_affine.py")
    assert fit[:4] == ["slice_z01_pairs.json", "slice_z02_pairs.json", "--out", "motor_transform.json"]
    assert {"--n-samples", "500", "--seed", "0", "--drift-tolerance", "1.0"} <= set(fit)
    stitch = command_words(render("stitch"), "linum_motor_stitch.py")
    assert stitch[:3] == ["mosaic_grid_3d_z07.ome.zarr", "motor_transform.json", "slice_z07_stitch_3d.ome.zarr"]
    assert stitch[stitch.index("--flatfield") + 1] == "estimate" and stitch.count("--flatfield") == 1
    given = command_words(render("stitch", params={"flatfield": "/data/flat.npy"}, flatfield="/data/flat.npy"),
                          "linum_motor_stitch.py")
    assert given[given.index("--flatfield") + 1] == "flat.npy"  # the staged file, not the host path
    assert given.count("--flatfield") == 1


def option_values(words: list[str], option: str) -> list[str]:
    """The value after each occurrence of `option` in a command line."""
    return [words[k + 1] for k, word in enumerate(words) if word == option]


def test_measure_plane_flatfield_and_background_test():
    plain = command_words(render("measure_pairs"), "linum_motor_measure_pairs.py")
    assert option_values(plain, "--plane") == ["auto"] and option_values(plain, "--flatfield") == ["estimate"]
    assert "--no-background-test" not in plain
    words = command_words(render("measure_pairs", params={"plane": "mean", "background_test": False,
                                                          "flatfield": "none"}), "linum_motor_measure_pairs.py")
    assert option_values(words, "--plane") == ["mean"] and option_values(words, "--flatfield") == ["none"]
    assert "--no-background-test" in words
    # a CLI param arrives as a string under the strict syntax: 'false' turns the test off, 'true' keeps it
    for text, off in (("false", True), ("true", False)):
        words = command_words(render("measure_pairs", params={"background_test": text}),
                              "linum_motor_measure_pairs.py")
        assert ("--no-background-test" in words) == off, text


def test_a_flatfield_file_is_staged_for_measure_and_stitch():
    """main.nf hands the one .npy to both processes: each names the staged file, once."""
    for name in ("measure_pairs", "stitch"):
        words = command_words(render(name, params={"flatfield": "/data/flat.npy"}, flatfield="/data/flat.npy"),
                              PROGRAMS[name])
        assert option_values(words, "--flatfield") == ["flat.npy"], (name, words)


def test_backlash_reaches_the_fit():
    assert option_values(command_words(render("fit_affine"), "linum_motor_fit_affine.py"), "--backlash") == ["auto"]
    words = command_words(render("fit_affine", params={"backlash": "off"}), "linum_motor_fit_affine.py")
    assert option_values(words, "--backlash") == ["off"]


def test_stitch_placement_pairs_and_z_chunk():
    plain = command_words(render("stitch"), "linum_motor_stitch.py")
    assert option_values(plain, "--placement") == ["model"]
    assert "--pairs" not in plain and "--z-chunk" not in plain
    words = command_words(render("stitch", params={"placement": "registered", "z_chunk": 4},
                                 pairs="pairs/slice_z07_pairs.json"), "linum_motor_stitch.py")
    assert option_values(words, "--placement") == ["registered"]
    assert option_values(words, "--pairs") == ["slice_z07_pairs.json"]  # the staged file
    assert option_values(words, "--z-chunk") == ["4"]


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
    """QC_CHECK's rendered script, run for real on a report: exit code EXIT_NOT_OK (the task, so the run, fails)
    exactly when a slice's status is one --fail_on counts; the slices that are not ok are listed."""
    report = tmp_path / "report"
    report.mkdir()
    status = {sid: entry for sid, entry in STATUS.items() if entry["status"] in statuses}
    (report / "status.json").write_text(json.dumps(status))
    script = render("qc_check", params={"fail_on": fail_on})
    assert option_values(command_words(script, "linum_motor_qc.py"), "--fail-on") == [fail_on]
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


def test_report_without_measurements():
    """--transform: no pairs, no comparisons; the report still runs on the stitched slices."""
    words = command_words(render("report", pairs=[], compare=[]), "linum_motor_report.py")
    assert "--pairs" not in words and "--compare" not in words
    assert words[words.index("--transform") + 1] == "motor_transform.json"
    assert words[words.index("--stitched") + 1] == "a_stitch_3d.ome.zarr"


def test_test_profile_ext_args_reach_synthesise():
    words = command_words(render("synthesise"), "linum_motor_synth.py")
    assert words[0] == "synthetic"
    grid = words.index("--grid")
    assert words[words.index("--slices") + 1] == "2" and words[grid + 1 : grid + 3] == ["3", "4"]
    assert words[words.index("--seed") + 1] == "0"


@pytest.mark.parametrize("hostile", ["$(touch PWNED) z02.ome.zarr", "${HOME} it's `id` z03.ome.zarr",
                                     "a;b|c&d z04.ome.zarr"])
def test_hostile_store_names_stay_one_argument(tmp_path, hostile):
    """A store's name is data: bash gets it as one word, unchanged, and runs nothing in it."""
    (tmp_path / "run").mkdir()
    argv = command_words(render("measure_pairs", zarr=f"in/{hostile}"), "linum_motor_measure_pairs.py",
                         cwd=tmp_path / "run")
    assert argv[0] == hostile
    assert not (tmp_path / "run" / "PWNED").exists()


@pytest.mark.slow
def test_measure_pairs_runs_on_a_store_with_a_hostile_name(tmp_path):
    """The real script on a real store named like a command: it measures the store and runs nothing."""
    data = tmp_path / "data"
    subprocess.run(["linum_motor_synth.py", str(data), "--slices", "1", "--grid", "2", "2", "--tile", "2", "48", "48"],
                   env=task_env(), check=True, capture_output=True)
    (store,) = sorted(data.glob("*.ome.zarr"))
    hostile = data / f"$(touch PWNED) it's {store.name}"
    store.rename(hostile)
    runner = Runner(tmp_path / "work")
    meta = slice_meta(hostile)
    out = runner.run(process("measure_pairs"), meta, zarr=hostile, flatfield=[], use_gpu=False, library="x")
    (pairs,) = out["*_pairs.json"]
    assert json.loads(pairs.read_text())["pairs"], "pairs measured"
    assert not list(tmp_path.rglob("PWNED"))


def test_tasks_size_their_thread_pools_to_task_cpus(tmp_path):
    """Every task exports its CPU count to the thread pools and puts CuPy's cache in its own folder."""
    fake = tmp_path / "bin"
    fake.mkdir()
    for program in PROGRAMS.values():
        (fake / program).write_text("#!/bin/bash\nenv > \"$PWD/.task_env\"\n")
        (fake / program).chmod(0o755)
    for name in MODULE_NAMES:
        workdir = tmp_path / name
        workdir.mkdir()
        (workdir / ".command.sh").write_text(render(name, cpus=3))
        subprocess.run([*SHELL, ".command.sh"], cwd=workdir, env=task_env(fake), check=True, capture_output=True)
        env = dict(line.split("=", 1) for line in (workdir / ".task_env").read_text().splitlines() if "=" in line)
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS",
                    "ZARR_THREADING__MAX_WORKERS"):
            assert env[var] == "3", (name, var)
        assert Path(env["CUPY_CACHE_DIR"]) == workdir.resolve() / ".cupy"


# ------------------------------------------------------------------ resume: what is hashed


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_library_version_is_a_task_input(name):
    """Nextflow hashes input values: the library fingerprint in them reruns tasks after a library change."""
    assert ("val", "library") in process(name).inputs()


@pytest.mark.parametrize("name", ["measure_pairs", "stitch"])
def test_use_gpu_is_a_task_input(name):
    assert ("val", "use_gpu") in process(name).inputs()


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


# --------------------------------------------------------------------------- bin/ contract


def bin_parser(program: str):
    """The argparse parser of a bin/ script (its build_parser())."""
    import importlib.util  # noqa: PLC0415

    path = REPO / "bin" / program
    spec = importlib.util.spec_from_file_location(f"nf_bin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


PARAM_SETS = [
    {},
    {"z": 3, "max_shift": 5.0, "histogram_match": True, "max_empty_fraction": 0.5, "n_samples": 100,
     "flatfield": "none", "blending": "diffusion", "ngff_version": "0.4"},
    {"plane": "central", "background_test": False, "backlash": "on", "placement": "registered", "z_chunk": 2,
     "flatfield": "/data/flat.npy"},
]


SCRIPT_OPTIONS = [  # pipeline param, the bin/ scripts reading it, their option
    ("plane", ["linum_motor_measure_pairs.py"], "--plane"),
    ("flatfield", ["linum_motor_measure_pairs.py", "linum_motor_stitch.py"], "--flatfield"),
    ("backlash", ["linum_motor_fit_affine.py"], "--backlash"),
    ("placement", ["linum_motor_stitch.py"], "--placement"),
    ("blending", ["linum_motor_stitch.py"], "--blending"),
    ("ngff_version", ["linum_motor_stitch.py"], "--ngff-version"),
    ("seed", ["linum_motor_fit_affine.py"], "--seed"),
    ("drift_tolerance", ["linum_motor_fit_affine.py"], "--drift-tolerance"),
    ("fail_on", ["linum_motor_qc.py"], "--fail-on"),
]


RENDERED_OPTIONS = SCRIPT_OPTIONS + [  # the other params a rendered command carries, read the same way
    ("overlap", ["linum_motor_measure_pairs.py", "linum_motor_synth.py"], "--overlap"),
    ("z", ["linum_motor_measure_pairs.py"], "--z"),
    ("background_test", ["linum_motor_measure_pairs.py"], "--no-background-test"),
    ("max_shift", ["linum_motor_measure_pairs.py"], "--max-shift"),
    ("histogram_match", ["linum_motor_measure_pairs.py"], "--histogram-match"),
    ("max_empty_fraction", ["linum_motor_measure_pairs.py"], "--max-empty-fraction"),
    ("n_samples", ["linum_motor_fit_affine.py"], "--n-samples"),
    ("z_chunk", ["linum_motor_stitch.py"], "--z-chunk"),
    ("seed", ["linum_motor_synth.py"], "--seed"),  # conf/test.config's SYNTHESISE ext.args
    ("ngff_version", ["linum_motor_synth.py"], "--ngff-version"),
]
INPUT_DESTS = {  # module input -> the script's argument it is given as (the staged name)
    "measure_pairs": {"zarr": "slice"}, "fit_affine": {"pairs": "pairs"},
    "stitch": {"zarr": "slice_zarr", "transform": "transform_json", "pairs": "pairs"},
    "compare": {"pairs": "pairs", "transform": "transform"},
    "report": {"transform": "transform", "pairs": "pairs", "compare": "compare", "stitched": "stitched"},
    "qc_check": {"report": "report"}, "synthesise": {},
}


def parsed_value(action, value):
    """What the script's parser makes of a param's value: its default when the param is unset (the
    option is left out), the value itself for a switch, the staged name for a ``.npy`` main.nf stages."""
    if value is None:
        return action.default
    if action.nargs == 0:
        return value
    if isinstance(value, str) and value.endswith(".npy"):
        return Path(value).name
    return action.type(str(value)) if action.type else str(value)


@pytest.mark.parametrize("name", MODULE_NAMES)
@pytest.mark.parametrize("params", PARAM_SETS)
@pytest.mark.parametrize("use_gpu", [False, True])
def test_rendered_commands_give_the_scripts_the_params_values(name, params, use_gpu):
    """Each rendered command parses with the script's own parser (an unknown or malformed option
    exits), and every param, input, GPU switch and thread count arrives as the value it was given."""
    program = PROGRAMS[name]
    inputs: dict = {"use_gpu": use_gpu} if name in ("measure_pairs", "stitch") else {}
    if name in ("measure_pairs", "stitch") and params.get("flatfield", "estimate").endswith(".npy"):
        inputs["flatfield"] = params["flatfield"]  # main.nf stages the file
    if name == "stitch" and params.get("placement") == "registered":
        inputs["pairs"] = "pairs/slice_z07_pairs.json"  # main.nf joins the slice's pairs
    cpus = 3
    parser = bin_parser(program)
    parsed = vars(parser.parse_args(command_words(render(name, params=params, cpus=cpus, **inputs), program)))
    resolved = {**profile_params(*PROFILE), **params}
    expected = {script_action(program, option).dest: parsed_value(script_action(program, option), resolved[param])
                for param, programs, option in RENDERED_OPTIONS if program in programs}
    given = {**DEFAULT_INPUTS[name], **inputs}
    for input_name, dest in INPUT_DESTS[name].items():
        value = given[input_name]
        staged = [Path(v).name for v in value] if isinstance(value, list) else Path(value).name
        expected[dest] = staged if staged != [] else parser.get_default(dest)  # no file: the option is left out
    if "use_gpu" in parsed:
        expected.update(use_gpu=use_gpu, threads=cpus)
    assert expected, f"{program}: nothing of the params or inputs reaches it"
    assert {dest: parsed[dest] for dest in expected} == expected


def script_action(program: str, option: str):
    (action,) = [a for a in bin_parser(program)._actions if option in a.option_strings]
    return action


def schema_param(name: str) -> dict:
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    (found,) = [group["properties"][name] for group in schema["$defs"].values() if name in group["properties"]]
    return found


@pytest.mark.parametrize("param, programs, option", SCRIPT_OPTIONS)
def test_schema_defaults_and_choices_are_the_scripts(param, programs, option):
    """What the pipeline offers and leaves by default is what the scripts accept and default to."""
    entry = schema_param(param)
    for program in programs:
        action = script_action(program, option)
        assert entry["default"] == action.default, (program, option)
        if action.choices is not None:
            assert {v for v in entry["enum"] if isinstance(v, str)} == set(action.choices), (program, option)


def test_background_test_default_is_the_scripts():
    """params.background_test (on) is what the script's --no-background-test turns off."""
    action = script_action("linum_motor_measure_pairs.py", "--no-background-test")
    assert action.dest == "background_test" and action.const is False
    assert schema_param("background_test")["default"] is action.default is True


@pytest.mark.parametrize("name", MODULE_NAMES)
def test_bin_scripts_are_called_by_bare_name(name):
    """Nextflow hashes a bin/ script only when its bare name is a word of the task script."""
    script = render(name)
    programs = [line.split()[0] for line in script.replace("\\\n", " ").splitlines()
                if line.split() and line.split()[0].endswith(".py")]
    assert programs == [PROGRAMS[name]]
    path = REPO / "bin" / PROGRAMS[name]
    assert os.access(path, os.X_OK) and path.read_text().startswith("#!")


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
