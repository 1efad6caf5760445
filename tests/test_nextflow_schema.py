"""The Nextflow stage's JSON schemas and CI files against their Python owners, without Nextflow.

The schemas are JSON Schema, read here with ``jsonschema`` as nf-schema reads them: each param the
embedded runner also has takes its type, default, choices and bounds from ``RunOptions``; the scripts
accept and default to what the schema offers. How the real runtime treats the same values and inputs is
tested by running it (tests/test_nextflow_run.py).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import re
import shlex
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from linumpy_motor.pipeline.cli import build_parser
from linumpy_motor.pipeline.options import HELP, RunOptions
from linumpy_motor.qc.summary import FAIL_ON

REPO = Path(__file__).resolve().parents[1]
MODULES = sorted((REPO / "modules" / "local").glob("*/main.nf"))
GPU_MODULES = {"measure_pairs", "stitch"}
RUNNER_ONLY = {"workers", "threads"}  # Nextflow runs a task per slice and gives it task.cpus threads
SHARED = sorted(set(RunOptions.model_fields) - RUNNER_ONLY)
# Params whose text must speak of Nextflow, not of the runner's flags and exit codes
NEXTFLOW_WORDED = {"background_test", "fail_on"}


def schema() -> dict:
    return json.loads((REPO / "nextflow_schema.json").read_text())


def input_schema() -> dict:
    return json.loads((REPO / "assets" / "schema_input.json").read_text())


def schema_properties() -> dict:
    props = dict(schema().get("properties", {}))
    for group in schema()["$defs"].values():
        props.update(group["properties"])
    return props


def validate(params: dict, against: dict | None = None) -> None:
    """As nf-schema does: null (unset) params are not validated."""
    instance = {k: v for k, v in params.items() if v is not None} if isinstance(params, dict) else params
    jsonschema.validate(instance, against or schema(), cls=jsonschema.Draft202012Validator)


def defaults() -> dict:
    return {name: prop["default"] for name, prop in schema_properties().items() if "default" in prop}


def run_subparser() -> argparse.ArgumentParser:
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices["run"]


def run_command_help() -> dict[str, str]:
    return {action.dest: action.help.replace("%%", "%") for action in run_subparser()._actions
            if action.help and action.help != argparse.SUPPRESS}


def owner_property(name: str) -> dict:
    """The JSON schema of a RunOptions field (the value branch of an optional one) and its default."""
    prop = RunOptions.model_json_schema()["properties"][name]
    (value,) = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    return {**value, "default": prop.get("default")}


def limits(prop: dict) -> dict:
    """Numeric bounds, an integer's exclusive bounds as the inclusive ones they mean."""
    found = {key: prop[key] for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum") if key in prop}
    if prop.get("type") == "integer":
        if "exclusiveMinimum" in found:
            found["minimum"] = found.pop("exclusiveMinimum") + 1
        if "exclusiveMaximum" in found:
            found["maximum"] = found.pop("exclusiveMaximum") - 1
    return found


def test_schemas_are_valid_2020_12():
    for path in (REPO / "nextflow_schema.json", REPO / "assets" / "schema_input.json"):
        s = json.loads(path.read_text())
        assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(s)


@pytest.mark.parametrize("name", SHARED)
def test_schema_matches_the_run_options(name):
    """Each param the runner also has: the same type, default, choices and bounds as RunOptions, its one owner."""
    ours, owner = schema_properties()[name], owner_property(name)
    types = ours["type"] if isinstance(ours["type"], list) else [ours["type"]]
    assert owner["type"] in types, (name, types, owner["type"])
    assert ours.get("default") == owner["default"], name
    # choices: `--ngff_version 0.4` arrives as a number, so the schema lists the numbers too
    assert {str(choice) for choice in ours.get("enum", [])} == set(owner.get("enum", [])), name
    if name != "overlap":  # a validator's bound (check_overlap): test_overlap_bounds_match_the_scripts
        assert limits(ours) == limits(owner), name


@pytest.mark.parametrize("name", sorted(set(SHARED) - NEXTFLOW_WORDED))
def test_schema_describes_a_run_option_in_its_help_text(name):
    """One help text per option (pipeline.options.HELP): what only the pipeline adds goes to help_text."""
    assert schema_properties()[name]["description"] == HELP[name]
    assert run_command_help()[name] == HELP[name]


@pytest.mark.parametrize("name", sorted(NEXTFLOW_WORDED))
def test_nextflow_params_speak_of_nextflow(name):
    """The runner's switch and exit code mean nothing to a Nextflow user: the schema names the param's own
    spelling and Nextflow's exit status."""
    text = " ".join(schema_properties()[name].get(key, "") for key in ("description", "help_text"))
    assert "--no-background-test" not in text and "exit with code" not in text, text
    if name == "background_test":
        assert "--background_test false" in text
    if name == "fail_on":
        assert "exit status 1" in text


def test_fail_on_matches_the_run_command():
    ours = schema_properties()["fail_on"]
    assert ours["enum"] == list(FAIL_ON)
    assert ours["default"] == vars(build_parser().parse_args(["run", "in", "out"]))["fail_on"]


@pytest.mark.parametrize(
    "name, value",
    [("overlap", 0.7), ("overlap", 0), ("overlap", 0.51), ("blending", "foo"), ("ngff_version", "0.6"),
     ("ngff_version", 0.6), ("flatfield", "flat.tif"), ("seed", -1), ("z", 1.5), ("publish_dir_mode", "teleport"),
     ("publish_dir_mode", "move"), ("gpu_cluster_options", "--gres=gpu:1 --mem=8G"),
     ("plane", "best"), ("backlash", "yes"), ("placement", "pairs"), ("z_chunk", 0), ("z_chunk", 2.5),
     ("background_test", "no"), ("fail_on", "always"), ("drift_tolerance", 0), ("transform", "m.txt"),
     ("transform", "m.npy.gz"), ("flatfield", "estimated"), ("flatfield", "Estimate"), ("flatfield", "flat.npy.gz"),
     ("gpu_cluster_options", "-p gpu"), ("gpu_cluster_options", True), ("gpu_cluster_options", "true"),
     ("node_cpus", 0), ("node_memory", "lots"), ("node_memory", "128.GB"), ("node_time", "forever"),
     ("synthetic_size", "huge")],
)
def test_schema_rejects_bad_values(name, value):
    with pytest.raises(jsonschema.ValidationError):
        validate({**defaults(), name: value})


@pytest.mark.parametrize("name, value", [("flatfield", "none"), ("flatfield", "/data/flat.npy"), ("z", 3),
                                         ("blending", "diffusion"), ("ngff_version", "0.4"), ("ngff_version", 0.4),
                                         ("gpu_cluster_options", "--gpus=1"), ("gpu_cluster_options", "gres=gpu:1"),
                                         ("gpu_cluster_options", "--gres=gpu:a100:1 --account=lab"),
                                         ("publish_dir_mode", "symlink"), ("overlap", 0.49), ("overlap", 0.5),
                                         ("plane", "mean"), ("backlash", "off"), ("placement", "registered"),
                                         ("z_chunk", 1), ("background_test", False), ("transform", "/data/A.npy"),
                                         ("drift_tolerance", 0.25), ("flatfield", "/data/run 1/flat field.npy"),
                                         ("flatfield", "/data/FLAT.NPY"), ("transform", "/data/run 1/A.NPY"),
                                         ("node_cpus", 2), ("node_memory", "128 GB"), ("node_memory", "22899 MB"),
                                         ("node_time", "24h"), ("node_time", "90 min"), ("synthetic_size", "test")])
def test_schema_accepts_good_values(name, value):
    validate({**defaults(), name: value})


@pytest.mark.parametrize("value", [0.0, 1e-6, 0.1, 0.2, 0.4999, 0.5, 0.6])
def test_overlap_bounds_match_the_scripts(value):
    """The schema refuses exactly what the scripts' --overlap refuses (one rule: io.schemas.check_overlap)."""
    overlap = next(a for a in run_subparser()._actions if a.dest == "overlap")
    try:
        overlap.type(str(value))
        scripts_accept = True
    except Exception:  # argparse.ArgumentTypeError
        scripts_accept = False
    try:
        validate({**defaults(), "overlap": value})
        schema_accepts = True
    except jsonschema.ValidationError:
        schema_accepts = False
    assert schema_accepts == scripts_accept


def sheet_rows(text: str) -> list[dict]:
    """A CSV samplesheet as nf-schema hands it to the validator: values stripped, empty cells left out,
    integers cast."""
    rows = []
    for row in csv.DictReader(io.StringIO(text)):
        item = {}
        for key, value in row.items():
            if key is None or value is None or not value.strip():
                continue
            value = value.strip()
            item[key] = int(value) if re.fullmatch(r"-?\d+", value) else value
        rows.append(item)
    return rows


@pytest.mark.parametrize("text", ["slice_id,path\n7,a_z07.ome.zarr\n8,/data/b.ome.zarr\n",
                                  "slice_id,path\n0, a.ome.zarr \n", "path,slice_id\nx.ome.zarr,3\n"])
def test_samplesheet_schema_accepts(text):
    validate(sheet_rows(text), input_schema())


@pytest.mark.parametrize("text", ["slice_id\n7\n", "id,path\n7,a.ome.zarr\n", "slice_id,path\nseven,a.ome.zarr\n",
                                  "slice_id,path\n-1,a.ome.zarr\n", "slice_id,path\n1.5,a.ome.zarr\n",
                                  "slice_id,path\n7,\n", "slice_id,path\n"])
def test_samplesheet_schema_rejects(text):
    with pytest.raises(jsonschema.ValidationError):
        validate(sheet_rows(text), input_schema())


def test_samplesheet_ids_are_unique_by_schema():
    """nf-schema's uniqueEntries keyword (not JSON Schema's, so jsonschema ignores it) names the id column;
    the real runtime's refusal is tested in tests/test_nextflow_run.py."""
    assert input_schema()["uniqueEntries"] == ["slice_id"]
    assert list(input_schema()["items"]["properties"]) == ["slice_id", "path"]  # the order rows are read in


# ------------------------------------------------------------------------ the scripts' defaults


def script_action(program: str, option: str):
    import importlib.util  # noqa: PLC0415

    path = REPO / "bin" / program
    spec = importlib.util.spec_from_file_location(f"nf_bin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    (action,) = [a for a in module.build_parser()._actions if option in a.option_strings]
    return action


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


@pytest.mark.parametrize("param, programs, option", SCRIPT_OPTIONS)
def test_schema_defaults_and_choices_are_the_scripts(param, programs, option):
    """What the pipeline offers and leaves by default is what the scripts accept and default to."""
    entry = schema_properties()[param]
    for program in programs:
        action = script_action(program, option)
        assert entry["default"] == action.default, (program, option)
        if action.choices is not None:
            assert {v for v in entry["enum"] if isinstance(v, str)} == set(action.choices), (program, option)


def test_background_test_default_is_the_scripts():
    action = script_action("linum_motor_measure_pairs.py", "--no-background-test")
    assert action.dest == "background_test" and action.const is False
    assert schema_properties()["background_test"]["default"] is action.default is True


# ------------------------------------------------------------------------- containers and CI


def image_names() -> list[str]:
    """What containers/build.sh builds: [CPU image, CUDA image]."""
    done = subprocess.run([str(REPO / "containers" / "build.sh"), "--names"], capture_output=True, text=True,
                          check=True)
    return done.stdout.split()


@pytest.mark.parametrize("module", MODULES, ids=[m.parent.name for m in MODULES])
def test_modules_pin_the_images_build_sh_makes(module):
    """No local run uses a container, so the image names are read from the module: the ones the build
    script makes (nothing else would be found by Docker without a pull)."""
    cpu, cuda = image_names()
    pinned = set(re.findall(r"'([^']+:[^']+)'", "".join(re.findall(r"^\s*container .*$", module.read_text(),
                                                                    re.MULTILINE))))
    assert pinned == ({cpu, cuda} if module.parent.name in GPU_MODULES else {cpu})


def test_manifest_and_images_carry_the_library_version():
    import linumpy_motor  # noqa: PLC0415

    config = (REPO / "nextflow.config").read_text()
    (version,) = re.findall(r"^\s*version\s*=\s*'([^']+)'", config, re.MULTILINE)
    assert version == linumpy_motor.__version__
    assert image_names()[0].endswith(f":{linumpy_motor.__version__}")


def test_build_script_builds_and_pushes_both_images(tmp_path):
    cpu, cuda = image_names()
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/bash\necho \"$*\" >> \"$0.log\"\n")
    fake.chmod(0o755)
    subprocess.run([str(REPO / "containers" / "build.sh"), "--push"],
                   env={"DOCKER": str(fake), "PATH": "/usr/bin:/bin"}, check=True, capture_output=True)
    assert (tmp_path / "docker.log").read_text().splitlines() == [
        f"build -f containers/Dockerfile -t {cpu} .", f"push {cpu}",
        f"build -f containers/Dockerfile.cuda -t {cuda} .", f"push {cuda}"]
    bad = subprocess.run([str(REPO / "containers" / "build.sh"), "gpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument 'gpu'" in bad.stderr


@pytest.mark.parametrize("module", MODULES, ids=[m.parent.name for m in MODULES])
def test_every_module_has_meta_yml_and_an_nf_test_with_a_snapshot(module):
    meta = yaml.safe_load((module.parent / "meta.yml").read_text())
    process = re.search(r"^process (\w+)", module.read_text(), re.MULTILINE).group(1)
    assert meta["name"] == process.lower() and meta["description"]
    test = module.parent / "tests" / "main.nf.test"
    assert "snapshot(" in test.read_text()


def workflow_commands(name: str) -> list[list[str]]:
    data = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    runs = [step.get("run", "") for job in data["jobs"].values() for step in job.get("steps", [])]
    lines = [line for run in runs for line in run.splitlines() if line.strip() and not line.strip().startswith("#")]
    return [shlex.split(line) for line in lines]


def test_nextflow_ci_workflow_runs_nf_test_and_the_real_pipeline_tests():
    commands = workflow_commands("nextflow.yml")
    assert any(argv[:2] == ["nf-test", "test"] for argv in commands)
    assert any("tests/test_nextflow_run.py" in argv for argv in commands)


def test_release_workflow_publishes_both_images_on_tags():
    data = yaml.safe_load((REPO / ".github" / "workflows" / "release.yml").read_text())
    on = data.get("on", data.get(True))  # YAML 1.1 reads `on:` as True
    assert on["push"]["tags"]
    assert ["containers/build.sh", "--push"] in workflow_commands("release.yml")


def test_ci_workflow_runs_make_test():
    assert any(argv[:2] == ["make", "test"] for argv in workflow_commands("ci.yml"))
