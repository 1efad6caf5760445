"""Run the pipeline's own task scripts, in order, the way Nextflow would.

Each process's `script:` block is read from modules/local/*/main.nf and rendered for the test
profile's params (tests/nf_groovy.py evaluates the `def` lines and interpolates the GString,
then strips the indentation as Nextflow does). Each task runs in its own folder with its inputs
staged as symlinks, under the pipeline's shell (`bash -C -e -u -o pipefail`); its declared
outputs must appear. The flow mirrors main.nf:

    SYNTHESISE -> MEASURE_PAIRS (per slice) -> FIT_AFFINE -> STITCH (per slice)
               -> COMPARE (per slice) -> REPORT
"""

from __future__ import annotations

import glob
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nf_groovy import REPO, NfPath, NfPathList, nf_processes, profile_ext_args, profile_params  # noqa: E402

SHELL = ["bash", "-C", "-e", "-u", "-o", "pipefail"]  # process.shell in nextflow.config
PROFILE = ("test",)


def process(name: str):
    (proc,) = nf_processes(REPO / "modules" / "local" / name / "main.nf")
    return proc


def library_version() -> str:
    text = (REPO / "linumpy_motor" / "__init__.py").read_text()
    return re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE).group(1)


def slice_meta(zarr: Path) -> dict:
    """As main.nf: slice id = the last number in the store name; prefix slice_zNN."""
    n = int(re.findall(r"\d+", zarr.name.replace(".ome.zarr", ""))[-1])
    return {"id": n, "prefix": f"slice_z{n:02d}"}


def task_env() -> dict:
    env = dict(os.environ)
    path = [str(REPO / "bin"), str(Path(sys.executable).parent)]
    env["PATH"] = os.pathsep.join([*path, env.get("PATH", "")])
    env["PYTHONNOUSERSITE"] = "1"  # env scope of nextflow.config
    env.setdefault("MPLBACKEND", "Agg")
    return env


class Runner:
    """A minimal stand-in for Nextflow's local executor."""

    def __init__(self, root: Path, profile=PROFILE, params=None, accelerator=None, section="script"):
        self.root = root
        self.params = {**profile_params(*profile), **(params or {})}
        self.ext_args = profile_ext_args(*profile)
        self.accelerator = accelerator
        self.section = section
        self.count = 0

    def env(self, proc, meta, inputs: dict) -> dict:
        declared = [name for kind, name in proc.inputs() if kind == "path"]
        assert list(inputs) == declared, f"{proc.name}: inputs {list(inputs)} != declared {declared}"
        env = {
            "params": self.params,
            "task": {"ext": {"args": self.ext_args.get(proc.name)}, "accelerator": self.accelerator,
                     "process": proc.name, "attempt": 1},
            "meta": meta,
        }
        for name, value in inputs.items():
            if isinstance(value, list):
                env[name] = NfPathList(NfPath(Path(v).name) for v in value)
            else:
                env[name] = NfPath(Path(value).name)
        return env

    def run(self, proc, meta, **inputs) -> dict[str, list[Path]]:
        """Stage, render, run; returns {output pattern: matching paths}."""
        self.count += 1
        workdir = self.root / f"{self.count:02d}_{proc.name}_{meta['id']}"
        workdir.mkdir(parents=True)
        staged = set()
        for value in inputs.values():
            for src in value if isinstance(value, list) else [value]:
                (workdir / Path(src).name).symlink_to(Path(src).resolve())
                staged.add(Path(src).name)
        script = proc.render(self.env(proc, meta, inputs), self.section)
        (workdir / ".command.sh").write_text(script)
        result = subprocess.run([*SHELL, ".command.sh"], cwd=workdir, env=task_env(),
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, (
            f"{proc.name} failed ({result.returncode})\n--- script\n{script}\n--- stdout\n{result.stdout}"
            f"\n--- stderr\n{result.stderr}"
        )
        outputs = {}
        for pattern in proc.output_patterns():
            found = sorted(Path(p) for p in glob.glob(str(workdir / pattern)) if Path(p).name not in staged)
            assert found, f"{proc.name}: no output matches {pattern!r} in {workdir}"
            outputs[pattern] = found
        return outputs


def run_pipeline(runner: Runner):
    synth = runner.run(process("synthesise"), {"id": "synthetic"})
    zarrs = synth["synthetic/*.ome.zarr"]
    slices = [(slice_meta(z), z) for z in zarrs]

    pairs = {}
    for meta, zarr in slices:
        out = runner.run(process("measure_pairs"), meta, zarr=zarr)
        (pairs[meta["id"]],) = out["*_pairs.json"]
    all_pairs = sorted(pairs.values(), key=lambda p: p.name)

    fit = runner.run(process("fit_affine"), {"id": "motor"}, pairs=all_pairs)
    (transform,) = fit["motor_transform.json"]

    stitched, compared = {}, {}
    for meta, zarr in slices:
        out = runner.run(process("stitch"), meta, zarr=zarr, transform=transform, flatfield=[])
        (stitched[meta["id"]],) = out["*_stitch_3d.ome.zarr"]
        out = runner.run(process("compare"), meta, pairs=pairs[meta["id"]], transform=transform)
        (compared[meta["id"]],) = out["*_compare.json"]

    report = runner.run(
        process("report"), {"id": "report"}, transform=transform, pairs=all_pairs,
        compare=sorted(compared.values(), key=lambda p: p.name),
        stitched=sorted(stitched.values(), key=lambda p: p.name),
    )
    return {"synth": synth, "slices": slices, "pairs": pairs, "transform": transform,
            "stitched": stitched, "compare": compared, "report": report}


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
        json.loads(out["compare"][meta["id"]].read_text())
    (report_dir,) = out["report"]["report"]
    assert (report_dir / "report.html").is_file()

    # --transform: main.nf skips MEASURE_PAIRS / FIT_AFFINE / COMPARE and REPORT gets [] for both
    again = runner.run(process("report"), {"id": "report"}, transform=out["transform"], pairs=[], compare=[],
                       stitched=sorted(out["stitched"].values(), key=lambda p: p.name))
    assert (again["report"][0] / "report.html").is_file()

    # versions.yml of every task: valid YAML, keyed by process, with the library version
    for versions in sorted(tmp_path.glob("work/*/versions.yml")):
        data = yaml.safe_load(versions.read_text())
        ((name, tools),) = data.items()
        assert versions.parent.name.split("_", 1)[1].startswith(name)
        assert str(tools["linumpy-motor"]) == library_version(), versions.read_text()


# --------------------------------------------------------------- stubs and rendering (fast)


def test_stub_blocks_produce_every_declared_output(tmp_path):
    """`-stub-run`: every stub creates what its process declares, so the channels still flow."""
    run_pipeline(Runner(tmp_path / "work", section="stub"))


def render(name: str, *, params=None, accelerator=None, profile=PROFILE, **inputs) -> str:
    runner = Runner(Path("/nonexistent"), profile=profile, params=params, accelerator=accelerator)
    proc = process(name)
    meta = {"id": 7, "prefix": "slice_z07"}
    defaults = {
        "synthesise": {},
        "measure_pairs": {"zarr": "in/mosaic_grid_3d_z07.ome.zarr"},
        "fit_affine": {"pairs": ["p/slice_z01_pairs.json", "p/slice_z02_pairs.json"]},
        "stitch": {"zarr": "in/mosaic_grid_3d_z07.ome.zarr", "transform": "motor_transform.json", "flatfield": []},
        "compare": {"pairs": "slice_z07_pairs.json", "transform": "motor_transform.json"},
        "report": {"transform": "motor_transform.json", "pairs": ["a_pairs.json"], "compare": ["a_compare.json"],
                   "stitched": ["a_stitch_3d.ome.zarr"]},
    }[name]
    return proc.render(runner.env(proc, meta, {**defaults, **inputs}))


def flat(script: str) -> str:
    """The script on one line: bash line continuations joined, whitespace collapsed."""
    return " ".join(script.replace("\\\n", " ").split())


MODULE_NAMES = ["synthesise", "measure_pairs", "fit_affine", "stitch", "compare", "report"]


@pytest.mark.parametrize("name", MODULE_NAMES)
@pytest.mark.parametrize("profile", [(), ("test",), ("gpu",)])
def test_no_unset_value_reaches_a_command_line(name, profile):
    script = render(name, profile=profile)
    assert not re.search(r"\bnull\b", script), script
    assert "[]" not in script, script


@pytest.mark.parametrize("name", ["measure_pairs", "stitch"])
def test_use_gpu_only_with_an_accelerator(name):
    assert "--use-gpu" not in render(name)
    assert "--use-gpu" in render(name, accelerator=1)


def test_optional_measure_flags():
    plain = render("measure_pairs")
    for flag in ("--z", "--max-shift", "--histogram-match", "--max-empty-fraction"):
        assert flag not in plain
    script = render("measure_pairs", params={"z": 3, "max_shift": 5.0, "histogram_match": True,
                                             "max_empty_fraction": 0.5, "overlap": 0.25})
    for piece in ("--z 3", "--max-shift 5.0", "--histogram-match", "--max-empty-fraction 0.5",
                  "--overlap 0.25", "--slice-id 7", "mosaic_grid_3d_z07.ome.zarr slice_z07_pairs.json"):
        assert piece in flat(script), piece
    # the strict syntax parser passes CLI params as strings: `--histogram_match false` stays off
    assert "--histogram-match" not in render("measure_pairs", params={"histogram_match": "false"})
    assert "--histogram-match" in render("measure_pairs", params={"histogram_match": "true"})


def test_fit_and_stitch_arguments():
    fit = flat(render("fit_affine", params={"n_samples": 500}))
    assert "slice_z01_pairs.json slice_z02_pairs.json --out motor_transform.json" in fit
    assert "--n-samples 500" in fit and "--seed 0" in fit and "--drift-tolerance 1.0" in fit
    stitch = flat(render("stitch"))
    assert "mosaic_grid_3d_z07.ome.zarr motor_transform.json slice_z07_stitch_3d.ome.zarr" in stitch
    assert "--blending feather --flatfield estimate --ngff-version 0.5" in stitch
    given = flat(render("stitch", params={"flatfield": "/data/flat.npy"}, flatfield="/data/flat.npy"))
    assert "--flatfield flat.npy" in given  # the staged file, not the host path


def test_report_without_measurements():
    """--transform: no pairs, no comparisons; the report still runs on the stitched slices."""
    script = flat(render("report", pairs=[], compare=[]))
    assert "--pairs" not in script and "--compare" not in script
    assert "--transform motor_transform.json" in script and "--stitched a_stitch_3d.ome.zarr" in script


def test_ext_args_are_appended():
    script = flat(render("synthesise"))
    assert script.startswith("linum_motor_synth.py synthetic")
    assert "--slices 2 --grid 3 4 --tile 4 64 64" in script
