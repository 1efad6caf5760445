"""Static checks of the Nextflow pipeline (main.nf, modules/local, configs, schemas, containers, CI).

Nextflow cannot run here. The .nf files are parsed with reftrace (processes, directives, includes),
the configs with tests/nf_groovy.py (`config_tree`), and their Groovy expressions are evaluated
for given params and task values (tests/nf_expr.py); the schemas are applied with jsonschema as
nf-schema applies them. The task scripts themselves are run in tests/test_pipeline_commands.py.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import yaml

from linumpy_motor.errors import InputError
from linumpy_motor.io.dataset import discover_slices, is_samplesheet, slice_id_from_name
from linumpy_motor.io.schemas import STATUSES, load_transform
from linumpy_motor.pipeline import runner
from linumpy_motor.pipeline.cli import add_synth_arguments, build_parser
from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT, EXIT_NOT_OK, EXIT_TERMINATED
from linumpy_motor.pipeline.options import HELP, RunOptions
from linumpy_motor.qc.summary import FAIL_ON, exit_code
from linumpy_motor.register.flatfield import FLATFIELD_MODES

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nf_expr import names_read, parse  # noqa: E402
from nf_groovy import (  # noqa: E402
    REPO,
    NfPath,
    NfPathList,
    closure_body,
    config_params,
    config_tree,
    evaluate,
    ext_args_value,
    nf_functions,
    nf_processes,
    nf_test_spec,
    profile_ext_args,
    profile_params,
    profiles,
)

reftrace = pytest.importorskip("reftrace")

MODULES = sorted((REPO / "modules" / "local").glob("*/main.nf"))
NF_FILES = [REPO / "main.nf", *MODULES, REPO / "modules" / "local" / "shell.nf"]
CONFIGS = [REPO / "nextflow.config", *sorted((REPO / "conf").glob("*.config"))]
EXPECTED_MODULES = {
    "library": "LIBRARY_VERSION",
    "synthesise": "SYNTHESISE",
    "measure_pairs": "MEASURE_PAIRS",
    "fit_affine": "FIT_AFFINE",
    "stitch": "STITCH",
    "compare": "COMPARE",
    "report": "REPORT",
    "qc_check": "QC_CHECK",
}
GPU_MODULES = {"MEASURE_PAIRS", "STITCH"}
SLICE_IDS = json.loads((REPO / "tests" / "data" / "slice_ids.json").read_text())["names"]


@cache
def process_of(module: Path):
    procs = nf_processes(module)
    assert len(procs) == 1, f"{module}: one process per module file"
    return procs[0]


@cache
def rt_process(module: Path):
    mod = reftrace.Module.from_file(str(module))
    assert isinstance(mod, reftrace.Module), mod
    (proc,) = mod.processes
    return proc


@cache
def main_functions() -> dict:
    """main.nf's functions, callable (tests/nf_expr.py)."""
    return nf_functions(REPO / "main.nf")


@cache
def tree(path: Path) -> dict:
    return config_tree(path.read_text())


def ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


def image_names() -> list[str]:
    """What containers/build.sh builds: [CPU image, CUDA image]."""
    done = subprocess.run([str(REPO / "containers" / "build.sh"), "--names"], capture_output=True, text=True,
                          check=True)
    return done.stdout.split()


# ---------------------------------------------------------------------------------- parsing


def test_expected_modules_exist():
    assert {p.parent.name for p in MODULES} == set(EXPECTED_MODULES)


@pytest.mark.parametrize("path", NF_FILES, ids=ids(NF_FILES))
def test_nf_file_parses(path):
    result = reftrace.Module.from_file(str(path))
    assert isinstance(result, reftrace.Module), f"{path}: {result}"
    assert result.dsl_version == 2


@pytest.mark.parametrize("path", CONFIGS, ids=ids(CONFIGS))
def test_config_parses(path):
    result = reftrace.ConfigFile.from_file(str(path))
    assert result.error is None, f"{path}: {result.error}"
    tree(path)  # and every statement is one nf_groovy understands


def test_main_includes_resolve():
    result = reftrace.parse_modules(str(REPO))
    assert not result.errors, result.errors
    unresolved = {inc for u in result.unresolved_includes for inc in u.to_dict()["includes"]}
    assert unresolved <= {"plugin/nf-schema/main.nf"}, unresolved  # a Nextflow plugin, not a file
    (main,) = [m for m in result.results if Path(m.path).name == "main.nf" and Path(m.path).parent == REPO]
    included = {item.name for inc in main.includes for item in inc.items}
    assert included == {*EXPECTED_MODULES.values(), "validateParameters", "samplesheetToList"}


# ------------------------------------------------------------------------- process conventions


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_module_conventions(module):
    proc = rt_process(module)
    ours = process_of(module)
    assert proc.name == EXPECTED_MODULES[module.parent.name] == ours.name
    assert proc.tags, "tag directive"
    assert proc.labels, "label directive"
    assert len(proc.containers) == 1, "container directive"
    assert not proc.store_dirs, "storeDir skips tasks without a hash check: never for results"
    assert not proc.publish_dirs, "publishDir belongs in conf/modules.config"
    for section in ("output", "script", "stub"):
        assert section in ours.sections, f"{section}: block"
    if ours.name != "LIBRARY_VERSION":
        assert ("val", "library") in ours.inputs()
        kinds = [k for k, _ in ours.inputs()]
        if ours.name != "SYNTHESISE":
            assert kinds[:2] == ["val", "path"], "first input: tuple val(meta), path(...)"


@pytest.mark.parametrize("module", [m for m in MODULES if m.parent.name != "library"], ids=ids(MODULES[1:]))
def test_versions_go_to_the_topic(module):
    ours = process_of(module)
    (versions,) = [o for o in ours.outputs() if o["topic"] == "versions"]
    assert versions["emit"] == "versions"
    kinds = [kind for kind, _ in versions["items"]]
    assert kinds == ["val", "val", "eval"]
    env = {"task": {"process": ours.name}}
    values = [evaluate(arg, env) for _, arg in versions["items"]]
    assert values == [ours.name, "linumpy-motor", "linum_motor_version.py"]


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_container_pinned_to_built_images(module):
    (container,) = rt_process(module).containers
    cpu, cuda = image_names()
    if process_of(module).name in GPU_MODULES:
        assert container.condition.strip() == "use_gpu"
        assert (container.true_name, container.false_name) == (cuda, cpu)
    else:
        assert container.name == cpu


def test_manifest_version_matches_library():
    import linumpy_motor  # noqa: PLC0415

    manifest = tree(REPO / "nextflow.config")["manifest"]
    assert evaluate(manifest["version"], {}) == linumpy_motor.__version__
    minimum = re.fullmatch(r"!?>=\s*(\d+)\.(\d+)\.\d+", evaluate(manifest["nextflowVersion"], {}))
    # topic channels and nf-schema 2.7 (which casts CLI strings under the strict syntax) need 25.10
    assert minimum and (int(minimum.group(1)), int(minimum.group(2))) >= (25, 10)


def test_nf_schema_plugin_is_pinned():
    (plugin,) = tree(REPO / "nextflow.config")["plugins"]["@id"]
    name, version = plugin.split("@")
    assert name == "nf-schema" and tuple(int(v) for v in version.split(".")) >= (2, 7, 0)
    assert evaluate(tree(REPO / "nextflow.config")["validation"]["failUnrecognisedParams"], {}) is True


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_gpu_label_and_accelerator(module):
    proc = rt_process(module)
    ours = process_of(module)
    labels = {label.value for label in proc.labels}
    directives = ours.directive_map()
    if ours.name in GPU_MODULES:
        assert "process_gpu" in labels
        assert ("val", "use_gpu") in ours.inputs()
        (accelerator,) = directives["accelerator"]
        expr = closure_body(accelerator)
        assert evaluate(expr, {"use_gpu": True}) == 1 and evaluate(expr, {"use_gpu": False}) is None
    else:
        assert "process_gpu" not in labels and "accelerator" not in directives
        assert ("val", "use_gpu") not in ours.inputs()


def test_labels_are_defined_in_base_config():
    process = tree(REPO / "conf" / "base.config")["process"]
    defined = {k.split(":", 1)[1] for k in process if k.startswith("withLabel:")}
    assert {"process_single", "process_low", "process_medium", "process_high"} <= defined
    used = {label.value for m in MODULES for label in rt_process(m).labels}
    assert used - {"process_gpu"} <= defined  # process_gpu: settings only in conf/gpu.config


def test_error_strategy_retries_what_the_scheduler_killed():
    strategy = closure_body(tree(REPO / "conf" / "base.config")["process"]["errorStrategy"])
    for status, expected in [(137, "retry"), (140, "retry"), (104, "retry"), (175, "retry"), (1, "finish"),
                             (2, "finish"), (129, "finish")]:
        assert evaluate(strategy, {"task": {"exitStatus": status}}) == expected, status


@pytest.mark.parametrize("status, expected", [(EXIT_NOT_OK, "finish"), (EXIT_BAD_INPUT, "finish"),
                                              (EXIT_TERMINATED, "retry")])
def test_error_strategy_for_the_scripts_exit_codes(status, expected):
    """A task the scripts refused (bad input) or whose QC check failed fails the same way again: never
    retried; one terminated by the scheduler (SIGTERM at its time limit) is."""
    strategy = closure_body(tree(REPO / "conf" / "base.config")["process"]["errorStrategy"])
    assert evaluate(strategy, {"task": {"exitStatus": status}}) == expected


def test_qc_check_nf_test_expects_the_script_s_not_ok_exit_code():
    """The QC_CHECK nf-test's assertions on the task's exit status hold for linum_motor_qc.py's not-ok code
    (pipeline.entry.EXIT_NOT_OK), and for no other."""
    spec = nf_test_spec(module_of("QC_CHECK").parent / "tests" / "main.nf.test")
    cases = [case for case in spec.tests if any("process.exitStatus" in names_read(a) for a in case.assertions)]
    assert cases, "a QC_CHECK nf-test checks the exit status"
    for case in cases:
        def holds(status: int, case=case) -> bool:
            task = {"process": {"failed": status != 0, "success": status == 0, "exitStatus": status}}
            return all(evaluate(assertion, task) for assertion in case.assertions)

        assert holds(EXIT_NOT_OK), case.name
        assert not any(holds(status) for status in (0, 1, EXIT_BAD_INPUT, EXIT_TERMINATED)), case.name


@pytest.mark.parametrize("config", ["base.config", "slurm.config", "test.config"])
def test_resource_limits_cap_every_request(config):
    """Without limits the local executor refuses a task asking for more than the machine has,
    and SLURM gets twice the largest request on retry."""
    limits = parse(tree(REPO / "conf" / config)["process"]["resourceLimits"])
    assert limits[0] == "map" and {"cpus", "memory", "time"} <= {key for key, _ in limits[1]}, limits


def test_task_shell_is_strict():
    shell = evaluate(tree(REPO / "nextflow.config")["process"]["shell"], {})
    assert shell == ["bash", "-C", "-e", "-u", "-o", "pipefail"]


def test_no_store_dir_anywhere():
    for module in MODULES:
        assert not rt_process(module).store_dirs

    def keys(node):
        for key, value in node.items():
            yield key
            if isinstance(value, dict):
                yield from keys(value)

    for path in CONFIGS:
        assert "storeDir" not in set(keys(tree(path))), path


# ------------------------------------------------------------------------- slice ids (one rule)


@pytest.mark.parametrize("name, expected", SLICE_IDS.items())
def test_slice_id_rule_in_the_library(name, expected):
    if expected is None:
        with pytest.raises(InputError):
            slice_id_from_name(name)
    else:
        assert slice_id_from_name(name) == expected


@pytest.mark.parametrize("name, expected", SLICE_IDS.items())
def test_slice_id_rule_in_main_nf(name, expected):
    assert nf_functions(REPO / "main.nf")["sliceIdFromName"](name) == expected


@pytest.mark.parametrize("name, expected", SLICE_IDS.items())
def test_a_name_without_slice_id_refused_in_the_library_s_words(name, expected):
    store = NfPath(f"/data/run 1/{name}")
    if expected is None:
        with pytest.raises(InputError) as caught:
            slice_id_from_name(store)
        assert main_functions()["sliceIdProblem"](store) == str(caught.value)
    else:
        assert main_functions()["sliceIdProblem"](store) is None


def test_a_folder_without_slices_refused_in_the_library_s_words(tmp_path):
    (tmp_path / "notes.txt").write_text("not a slice")
    with pytest.raises(InputError) as caught:
        discover_slices(tmp_path)
    problem = main_functions()["noSlicesProblem"]
    assert problem(str(tmp_path), []) == str(caught.value)
    assert problem(str(tmp_path), [NfPath(str(tmp_path / "a_z01.ome.zarr"))]) is None


def test_duplicate_ids_found():
    problem = nf_functions(REPO / "main.nf")["repeatedIdsProblem"]
    names = ["a_z07_v2.ome.zarr", "mosaic_grid_z07_3d.ome.zarr", "slice_z08.ome.zarr"]
    ids_ = [nf_functions(REPO / "main.nf")["sliceIdFromName"](n) for n in names]
    assert problem([[i, n] for i, n in zip(ids_, names)]) == \
        "slice id 7 is in the names of both a_z07_v2.ome.zarr and mosaic_grid_z07_3d.ome.zarr"
    assert problem([[3, "c"], [1, "a"], [2, "b"]]) is None


def test_repeated_ids_refused_in_the_library_s_words():
    folder = REPO / "tests" / "data" / "duplicate_ids"
    with pytest.raises(InputError) as caught:
        discover_slices(folder)
    names = [[main_functions()["sliceIdFromName"](p.name), p.name] for p in sorted(folder.glob("*.ome.zarr"))]
    assert main_functions()["repeatedIdsProblem"](names) == caught.value.problem
    assert main_functions()["repeatedIdsProblem"]([[1, "a"], [2, "b"], [3, "c"]]) is None


def test_a_samplesheet_id_given_twice_is_refused_in_the_library_s_words(tmp_path):
    for name in ("a.ome.zarr", "b.ome.zarr"):
        (tmp_path / name).mkdir()
    text = "slice_id,path\n4,a.ome.zarr\n4,b.ome.zarr\n"
    sheet = tmp_path / "slices.csv"
    sheet.write_text(text)
    with pytest.raises(InputError) as caught:
        discover_slices(sheet)
    rows = [[row["slice_id"], row["path"]] for row in sheet_rows(text)]
    entries = [[index + 2, slice_id, str(tmp_path / path), os.path.realpath(tmp_path / path)]
               for index, (slice_id, path) in enumerate(rows)]
    problem = main_functions()["repeatedSheetIdProblem"]
    assert problem(entries) == caught.value.problem and problem(entries[:1]) is None


def test_a_store_listed_twice_is_found_by_its_real_path(tmp_path):
    """A samplesheet listing one store twice, once through a link: main.nf compares the stores' real
    paths, as linumpy_motor.io.dataset does, and words the refusal the same way."""
    (tmp_path / "a_z01.ome.zarr").mkdir()
    (tmp_path / "b_z02.ome.zarr").mkdir()
    (tmp_path / "link.ome.zarr").symlink_to(tmp_path / "a_z01.ome.zarr")
    text = "slice_id,path\n1,a_z01.ome.zarr\n2,b_z02.ome.zarr\n3,link.ome.zarr\n"
    sheet = tmp_path / "slices.csv"
    sheet.write_text(text)
    with pytest.raises(InputError) as caught:
        discover_slices(sheet)
    # as slicesFromInput makes them from samplesheetToList's rows: [line, slice id, store, its real path]
    rows = [[row["slice_id"], row["path"]] for row in sheet_rows(text)]
    entries = [[index + 2, slice_id, str(tmp_path / path), os.path.realpath(tmp_path / path)]
               for index, (slice_id, path) in enumerate(rows)]
    problem = main_functions()["repeatedStoreProblem"]
    assert problem(entries) == caught.value.problem
    assert problem(entries[:2]) is None
    assert problem([[*entry[:3], entry[2]] for entry in entries]) is None  # what comparing the paths as given missed


def test_placement_with_a_transform_refused_in_the_runner_s_words(synthetic_dataset_small, tmp_path):
    transform = REPO / "tests" / "data" / "motor_transform.json"
    with pytest.raises(InputError) as caught:
        runner.run(synthetic_dataset_small.root, tmp_path / "out", RunOptions(placement="registered",
                                                                              transform=transform))
    assert not (tmp_path / "out").exists()
    problem = main_functions()["placementProblem"]
    assert problem(str(transform), "registered") == str(caught.value)
    assert problem(str(transform), "model") is None and problem(None, "registered") is None


# ------------------------------------------------------------------------------ params/schema


def schema():
    return json.loads((REPO / "nextflow_schema.json").read_text())


def schema_properties() -> dict:
    s = schema()
    props = dict(s.get("properties", {}))
    for group in s.get("$defs", {}).values():
        props.update(group.get("properties", {}))
    return props


def validate(params: dict, against=None):
    """As nf-schema does: null (unset) params are not validated."""
    instance = {k: v for k, v in params.items() if v is not None} if isinstance(params, dict) else params
    jsonschema.validate(instance, against or schema(), cls=jsonschema.Draft202012Validator)


# Params only the Nextflow stage has (where its input comes from, how it publishes, the cluster). Every other
# param is an option of the embedded runner and takes its default from there (RunOptions; fail_on from the
# `linumpy-motor run` command line).
NEXTFLOW_ONLY_DEFAULTS = {
    "input": None,
    "outdir": "results",
    "synthetic": False,
    "publish_dir_mode": "copy",
    "queue": None,
    "gpu_queue": None,
    "gpu_cluster_options": "--gres=gpu:1",
}
RUNNER_ONLY = {"workers", "threads"}  # Nextflow runs a task per slice and gives it task.cpus threads
SHARED = sorted(set(RunOptions.model_fields) - RUNNER_ONLY)


def run_command_defaults() -> dict:
    """The defaults of `linumpy-motor run`'s options, as its parser gives them."""
    return vars(build_parser().parse_args(["run", "in", "out"]))


def expected_defaults() -> dict:
    shared = {name: getattr(RunOptions(), name) for name in SHARED}
    return {**NEXTFLOW_ONLY_DEFAULTS, **shared, "fail_on": run_command_defaults()["fail_on"]}


def test_schema_is_valid_2020_12():
    for path in (REPO / "nextflow_schema.json", REPO / "assets" / "schema_input.json"):
        s = json.loads(path.read_text())
        assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(s)


def test_default_params():
    assert config_params() == expected_defaults()


def owner_property(name: str) -> dict:
    """The JSON schema of a RunOptions field (the value branch of an optional one) and its default."""
    prop = RunOptions.model_json_schema()["properties"][name]
    (value,) = [p for p in prop.get("anyOf", [prop]) if p.get("type") != "null"]
    return {**value, "default": prop.get("default")}


def limits(prop: dict) -> dict:
    """The numeric bounds of a JSON schema, an integer's exclusive bounds as the inclusive ones they mean
    (`gt=0` on an int and `minimum: 1` allow the same values)."""
    found = {key: prop[key] for key in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum") if key in prop}
    if prop.get("type") == "integer":
        if "exclusiveMinimum" in found:
            found["minimum"] = found.pop("exclusiveMinimum") + 1
        if "exclusiveMaximum" in found:
            found["maximum"] = found.pop("exclusiveMaximum") - 1
    return found


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


def run_subparser() -> argparse.ArgumentParser:
    """The parser of `linumpy-motor run`."""
    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return commands.choices["run"]


def run_command_help() -> dict[str, str]:
    """The help text of each argument of `linumpy-motor run`, by its dest, as its --help shows it."""
    return {action.dest: action.help.replace("%%", "%") for action in run_subparser()._actions
            if action.help and action.help != argparse.SUPPRESS}


@pytest.mark.parametrize("name", SHARED)
def test_schema_describes_a_run_option_in_its_help_text(name):
    """One help text per option (pipeline.options.HELP): what only the pipeline adds goes to help_text."""
    description = schema_properties()[name]["description"]
    assert description == HELP[name], f"nextflow_schema.json: {name}.description must be {HELP[name]!r}"
    assert run_command_help()[name] == HELP[name]


@pytest.mark.parametrize("name", sorted(set(run_command_help()) & set(NEXTFLOW_ONLY_DEFAULTS) | {"fail_on"}))
def test_schema_describes_a_run_argument_in_its_help_text(name):
    """A param that is an argument of `linumpy-motor run` but no RunOptions field (the input, the output
    folder, --fail-on): described in that argument's help text."""
    expected = run_command_help()[name]
    assert schema_properties()[name]["description"] == expected, \
        f"nextflow_schema.json: {name}.description must be {expected!r}"


def test_fail_on_matches_the_run_command():
    ours = schema_properties()["fail_on"]
    assert ours["enum"] == list(FAIL_ON)
    assert ours["default"] == run_command_defaults()["fail_on"]


@pytest.mark.parametrize("fail_on", FAIL_ON)
def test_qc_check_runs_when_fail_on_can_fail_the_run(fail_on):
    """main.nf runs QC_CHECK for a --fail_on choice exactly when some slice status would make
    linum_motor_qc.py exit non-zero with it (qc.summary.exit_code); the default never does."""
    can_fail = any(exit_code({"1": {"status": status}}, fail_on, EXIT_NOT_OK) for status in STATUSES)
    assert main_functions()["qcCheckNeeded"](fail_on) == can_fail
    if fail_on == run_command_defaults()["fail_on"]:
        assert not can_fail


def test_flatfield_modes_are_the_library_s():
    """main.nf and the schema know the library's flat-field modes (FLATFIELD_MODES); any other value is a
    .npy file."""
    assert main_functions()["flatfieldModes"]() == list(FLATFIELD_MODES)
    (modes,) = [branch["enum"] for branch in schema_properties()["flatfield"]["anyOf"] if "enum" in branch]
    assert modes == list(FLATFIELD_MODES)


@pytest.mark.parametrize("process", ["MEASURE_PAIRS", "STITCH"])
@pytest.mark.parametrize("value", [*FLATFIELD_MODES, "/data/flat.npy", "/data/run 1/flat field.NPY"])
def test_flatfield_reaches_the_script(process, value):
    """A mode goes to the script by ext.args; a file is staged by main.nf (the module adds --flatfield FILE)."""
    params = {**profile_params(), "flatfield": value}
    validate(params)
    staged = value not in main_functions()["flatfieldModes"]()
    flatfield = NfPath(Path(value).name) if staged else NfPathList()  # the module's input, as main.nf gives it
    args = shlex.split(ext_args_value(profile_ext_args()[process], {"params": params, "flatfield": flatfield}))
    given = args[args.index("--flatfield") + 1] if "--flatfield" in args else None
    assert staged == (value not in FLATFIELD_MODES)
    assert given == (None if staged else value)


def test_schema_documents_every_param():
    props = schema_properties()
    assert set(props) == set(config_params())
    for name, value in config_params().items():
        assert props[name].get("description"), name
        if value is not None:
            assert props[name].get("default") == value, name


@pytest.mark.parametrize("profile", [(), ("test",), ("test", "docker"), ("slurm", "gpu"), ("gpu",), ("local",)])
def test_profile_params_validate(profile):
    validate(profile_params(*profile))


@pytest.mark.parametrize(
    "name, value",
    [("overlap", 0.7), ("overlap", 0), ("overlap", 0.51), ("blending", "foo"), ("ngff_version", "0.6"),
     ("ngff_version", 0.6),
     ("flatfield", "flat.tif"), ("seed", -1), ("z", 1.5), ("publish_dir_mode", "teleport"),
     ("publish_dir_mode", "move"), ("gpu_cluster_options", "--gres=gpu:1 --mem=8G"),
     ("plane", "best"), ("backlash", "yes"), ("placement", "pairs"), ("z_chunk", 0), ("z_chunk", 2.5),
     ("background_test", "no"), ("fail_on", "always"), ("drift_tolerance", 0), ("transform", "m.txt"),
     ("transform", "m.npy.gz"), ("flatfield", "estimated"), ("flatfield", "Estimate"), ("flatfield", "flat.npy.gz"),
     ("flatfield", "/data/flat.tif"), ("transform", "/data/run 1/model.txt"),
     ("gpu_cluster_options", "-p gpu"),
     # `--gpu_cluster_options '--gres=gpu:1'`: Nextflow takes '--gres=gpu:1' as the next option and
     # gives the param `true` (a Boolean, or the string 'true' with the strict syntax)
     ("gpu_cluster_options", True), ("gpu_cluster_options", "true")],
)
def test_schema_rejects_bad_values(name, value):
    params = profile_params()
    params[name] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(params)


@pytest.mark.parametrize("name, value", [("flatfield", "none"), ("flatfield", "/data/flat.npy"), ("z", 3),
                                         ("blending", "diffusion"), ("ngff_version", "0.4"), ("transform", "m.json"),
                                         ("ngff_version", 0.4),  # `--ngff_version 0.4`: Nextflow casts it
                                         ("gpu_cluster_options", "--gpus=1"), ("gpu_cluster_options", "gres=gpu:1"),
                                         ("gpu_cluster_options", "--gres=gpu:a100:1 --account=lab"),
                                         ("publish_dir_mode", "symlink"), ("overlap", 0.49), ("overlap", 0.5),
                                         ("plane", "mean"), ("backlash", "off"), ("placement", "registered"),
                                         ("z_chunk", 1), ("background_test", False), ("transform", "/data/A.npy"),
                                         ("drift_tolerance", 0.25),
                                         # paths with blanks (the modules quote them) and the .npy suffix in any case
                                         ("flatfield", "/data/run 1/flat field.npy"), ("flatfield", "/data/FLAT.NPY"),
                                         ("transform", "/data/run 1/motor transform.json"),
                                         ("transform", "/data/run 1/A.NPY")])
def test_schema_accepts_good_values(name, value):
    params = profile_params()
    params[name] = value
    validate(params)


@pytest.mark.parametrize("value", [0.0, 1e-6, 0.1, 0.2, 0.4999, 0.5, 0.6])
def test_overlap_bounds_match_the_scripts(value):
    """The schema refuses exactly what the scripts' --overlap refuses (one rule: io.schemas.check_overlap)."""
    overlap = next(a for a in run_subparser()._actions if a.dest == "overlap")
    try:
        overlap.type(str(value))
        scripts_accept = True
    except Exception:  # argparse.ArgumentTypeError
        scripts_accept = False
    params = {**profile_params(), "overlap": value}
    try:
        validate(params)
        schema_accepts = True
    except jsonschema.ValidationError:
        schema_accepts = False
    assert schema_accepts == scripts_accept


def normalize_cli(args: list[str]) -> dict:
    """Nextflow's reading of `--name value` pipeline params (Launcher.normalizeArgs and isValue,
    nextflow 26.04): a value that starts with '-' (and is not a number or holds no blank) is not
    taken, and the param becomes 'true'; `--name=value` is kept whole."""
    params, i = {}, 0
    while i < len(args):
        current = args[i]
        i += 1
        if re.match(r"^--[a-zA-Z\d]", current):
            if "=" in current:
                key, value = current[2:].split("=", 1)
            else:
                nxt = args[i] if i < len(args) else ""
                is_value = bool(nxt) and (len(nxt) == 1 or not nxt.startswith("-") or " " in nxt
                                          or re.fullmatch(r"-?\d+(\.\d+)?", nxt) is not None)
                key, value = current[2:], nxt if is_value else "true"
                i += is_value
            params[key] = value
    return params


@pytest.mark.parametrize("argv, accepted", [
    (["--gpu_cluster_options", "--gres=gpu:1"], False),   # the README's old example
    (["--gpu_cluster_options=--gres=gpu:1"], True),       # the documented form
    (["--gpu_cluster_options", "gres=gpu:1"], True),      # leading dashes left out: conf/gpu.config adds them
])
def test_gpu_cluster_options_from_the_command_line(argv, accepted):
    params = {**profile_params("slurm", "gpu"), **normalize_cli(argv)}
    if not accepted:
        with pytest.raises(jsonschema.ValidationError):
            validate(params)
        return
    validate(params)
    cluster = closure_body(tree(REPO / "conf" / "gpu.config")["process"]["withLabel:process_gpu"]["clusterOptions"])
    assert evaluate(cluster, {"params": params}) == "--gres=gpu:1"


# ------------------------------------------------------------------------------- samplesheet


def sheet_rows(text: str) -> list[dict]:
    """A CSV samplesheet as nf-schema hands it to the validator: values stripped, empty cells left
    out, and integers cast."""
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


def input_schema() -> dict:
    return json.loads((REPO / "assets" / "schema_input.json").read_text())


@pytest.mark.parametrize("text", ["slice_id,path\n7,a_z07.ome.zarr\n8,/data/b.ome.zarr\n",
                                  "slice_id,path\n0, a.ome.zarr \n", "path,slice_id\nx.ome.zarr,3\n"])
def test_samplesheet_schema_accepts(text):
    validate(sheet_rows(text), input_schema())


@pytest.mark.parametrize("text", ["slice_id\n7\n",                      # no path column
                                  "id,path\n7,a.ome.zarr\n",             # no slice_id column
                                  "slice_id,path\nseven,a.ome.zarr\n",   # not an integer
                                  "slice_id,path\n-1,a.ome.zarr\n",      # negative
                                  "slice_id,path\n1.5,a.ome.zarr\n",
                                  "slice_id,path\n7,\n",                 # empty path
                                  "slice_id,path\n"])                    # no slices
def test_samplesheet_schema_rejects(text):
    with pytest.raises(jsonschema.ValidationError):
        validate(sheet_rows(text), input_schema())


def test_samplesheet_columns_in_the_order_main_nf_reads_them():
    """samplesheetToList gives each row's values in the schema's order: main.nf reads row[0] as the
    slice id and row[1] as the path."""
    assert list(input_schema()["items"]["properties"]) == ["slice_id", "path"]


# -------------------------------------------------------------------------------- profiles


def test_profiles():
    table = profiles()
    assert {"test", "slurm", "gpu", "docker", "singularity", "apptainer", "local"} <= set(table)
    assert evaluate(config_tree(table["docker"])["docker"]["enabled"], {}) is True
    for engine in ("singularity", "apptainer"):
        assert evaluate(config_tree(table[engine])[engine]["enabled"], {}) is True
    local = config_tree(table["local"])
    for engine in ("docker", "singularity", "apptainer", "podman"):
        assert evaluate(local[engine]["enabled"], {}) is False
    assert evaluate(config_tree(table["gpu"])["params"]["use_gpu"], {}) is True


@pytest.mark.parametrize("use_gpu, included", [(False, False), ("false", False), (True, True), ("true", True)])
def test_gpu_config_only_with_use_gpu(use_gpu, included):
    """A CPU-only run sets no clusterOptions / containerOptions, so a site's own stay in force."""
    (conditional,) = [e for e in tree(REPO / "nextflow.config")["@include"] if "params" in e]
    target = evaluate(conditional, {"params": {"use_gpu": use_gpu}})
    assert (target == "conf/gpu.config") == included
    if not included:
        assert target == "/dev/null"


def setting_paths(node, prefix=()):
    for key, value in node.items():
        if isinstance(value, dict):
            yield from setting_paths(value, (*prefix, key))
        else:
            yield (*prefix, key)


def test_cluster_and_container_options_only_in_gpu_config():
    for path in CONFIGS:
        found = [p for p in setting_paths(tree(path)) if p[-1] in ("clusterOptions", "containerOptions")]
        if path.name == "gpu.config":
            assert found and all(p[:2] == ("process", "withLabel:process_gpu") for p in found)
        else:
            assert not found, (path, found)
    for name, text in profiles().items():
        found = [p for p in setting_paths(config_tree(text)) if p[-1] in ("clusterOptions", "containerOptions")]
        assert not found, (name, found)


@pytest.mark.parametrize("engine, expected", [("docker", "--gpus all"), ("singularity", "--nv"),
                                              ("apptainer", "--nv"), (None, "")])
def test_gpu_pass_through(engine, expected):
    options = closure_body(tree(REPO / "conf" / "gpu.config")["process"]["withLabel:process_gpu"]["containerOptions"])
    assert evaluate(options, {"workflow": {"containerEngine": engine}}) == expected


def test_slurm_profile():
    slurm = tree(REPO / "conf" / "slurm.config")
    assert evaluate(slurm["process"]["executor"], {}) == "slurm"
    assert int(slurm["executor"]["queueSize"]) > 0 and slurm["executor"]["submitRateLimit"]
    queue = closure_body(slurm["process"]["withLabel:process_gpu"]["queue"])
    params = {"queue": "cpu", "gpu_queue": "gpu"}
    assert evaluate(queue, {"task": {"accelerator": 1}, "params": params}) == "gpu"
    assert evaluate(queue, {"task": {"accelerator": None}, "params": params}) == "cpu"
    assert evaluate(queue, {"task": {"accelerator": 1}, "params": {**params, "gpu_queue": None}}) == "cpu"
    # the SLURM executor emits -p/--mem/-t itself; never repeat them in clusterOptions
    with pytest.raises(jsonschema.ValidationError):
        validate({**profile_params("slurm", "gpu"), "gpu_cluster_options": "--gres=gpu:1 --time=1:00:00"})


SYNTH_SIZE = {"slices", "grid", "tile"}  # the dataset's size: what the test profile shrinks


def synth_arguments(profile: tuple[str, ...], params: dict) -> dict:
    """SYNTHESISE's ext.args for a profile, as linum_motor_synth.py reads them."""
    parser = argparse.ArgumentParser()
    add_synth_arguments(parser)
    args = ext_args_value(profile_ext_args(*profile)["SYNTHESISE"], {"params": params})
    return vars(parser.parse_args(["synthetic", *shlex.split(args)]))


@pytest.mark.parametrize("changed", [{}, {"overlap": 0.3, "seed": 7, "ngff_version": "0.4"}])
def test_test_profile_synthesises_with_the_params_as_the_default(changed):
    """conf/test.config repeats SYNTHESISE's ext.args to shrink the dataset (--slices, --grid, --tile are
    no params): the params reach the script as without the profile, and the size is smaller."""
    params = {**profile_params("test"), **changed}
    default, test = synth_arguments((), params), synth_arguments(("test",), params)
    assert {key: value for key, value in test.items() if key not in SYNTH_SIZE} == \
        {key: value for key, value in default.items() if key not in SYNTH_SIZE}
    assert (default["overlap"], default["seed"], default["ngff_version"]) == \
        (params["overlap"], params["seed"], params["ngff_version"])
    pixels = [args["slices"] * args["grid"][0] * args["grid"][1] * np.prod(args["tile"]) for args in (test, default)]
    assert pixels[0] < pixels[1]


# ------------------------------------------------------------------------------ publishing


PUBLISHED = ["MEASURE_PAIRS", "FIT_AFFINE", "STITCH", "COMPARE", "REPORT"]  # the runner's outputs
LAYOUT_IDS = [0, 7, 12, 123]


def module_of(name: str) -> Path:
    (module,) = [m for m in MODULES if EXPECTED_MODULES[m.parent.name] == name]
    return module


def publish_dir(name: str, params: dict) -> dict:
    """A process's publishDir of conf/modules.config, evaluated: {'path': folder, 'mode': mode}."""
    source = tree(REPO / "conf" / "modules.config")["process"][f"withName:{name}"]["publishDir"]
    spec = evaluate(source, {"params": params})
    return {"path": spec["path"](), "mode": spec["mode"]}


def published(name: str, meta: dict, params: dict, workdir: Path) -> set[str]:
    """Where a task's outputs are published: its stub run (what `-stub` runs) in workdir, its declared
    outputs found there, under its publishDir."""
    proc = process_of(module_of(name))
    workdir.mkdir(parents=True)
    stub = proc.render({"meta": meta, "task": {"ext": {}, "process": name, "cpus": 1}}, "stub")
    subprocess.run(["bash", "-e", "-u", "-c", stub], cwd=workdir, check=True)
    folder = publish_dir(name, params)["path"]
    return {f"{folder}/{found.name}" for pattern in proc.output_patterns() for found in workdir.glob(pattern)}


def test_published_layout_is_the_runner_s(tmp_path):
    """The per-slice names (main.nf's sliceMeta prefix), the modules' outputs and conf/modules.config's
    folders give the embedded runner's layout (runner.output_paths), slice by slice."""
    params = {**profile_params(), "outdir": "/out"}
    found = set()
    for slice_id in LAYOUT_IDS:
        meta = main_functions()["sliceMeta"](slice_id)
        assert meta == {"id": slice_id, "prefix": runner.prefix(slice_id)}
        for name in ("MEASURE_PAIRS", "STITCH", "COMPARE"):
            found |= published(name, meta, params, tmp_path / f"{name}_{slice_id}")
    found |= published("FIT_AFFINE", {"id": "motor"}, params, tmp_path / "FIT_AFFINE")
    found |= published("REPORT", {"id": "report"}, params, tmp_path / "REPORT")
    expected = runner.output_paths(Path("/out"), LAYOUT_IDS, measured=True)
    assert found == {str(path) for path in runner.planned_outputs(expected)}


@pytest.mark.parametrize("name", ["sheet.csv", "/data/run 1/Slices.CSV", "/data/slices", "/data/slices.ome.zarr",
                                  "/data/sheet.tsv", "sheet.csv.bak"])
def test_an_input_is_a_samplesheet_for_nextflow_as_for_the_library(name):
    assert main_functions()["isSamplesheet"](name) == is_samplesheet(name)


def test_a_given_transform_is_published_as_the_runner_s():
    name = main_functions()["givenTransformName"]
    assert name("/data/model.json") == runner.output_paths(Path("/out"), [1], measured=False)["transform"].name
    assert name("/data/A.npy").endswith(".npy")  # the raw matrix is not a transform JSON


@pytest.mark.parametrize("file_name", ["A.npy", "A.NPY", "motor A.Npy"])
def test_a_npy_transform_the_library_reads_is_accepted_and_kept_a_npy(tmp_path, file_name):
    """Upstream's matrix in a folder with a blank, the suffix in any case: the library reads it as a .npy,
    the schema accepts it and main.nf publishes it as a .npy."""
    path = tmp_path / "run 1" / file_name
    path.parent.mkdir()
    matrix = np.array([[60.0, 1.0], [-1.0, 60.0]])
    with path.open("wb") as handle:  # np.save would add '.npy' to a name ending in '.NPY'
        np.save(handle, matrix)
    assert np.array_equal(load_transform(path).transform, matrix)
    validate({**profile_params(), "transform": str(path)})
    assert main_functions()["givenTransformName"](str(path)) == "motor_transform.npy"


@pytest.mark.parametrize("name", [*PUBLISHED, "SYNTHESISE"])
def test_publish_mode_is_the_param(name):
    params = {**profile_params(), "outdir": "/out", "publish_dir_mode": "symlink"}
    assert publish_dir(name, params)["mode"] == "symlink"


# --------------------------------------------------------------------------- modules: meta.yml


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_meta_yml_describes_the_module(module):
    meta = yaml.safe_load((module.parent / "meta.yml").read_text())
    ours = process_of(module)
    assert meta["name"] == ours.name.lower() and meta["description"]
    documented_inputs = [next(iter(item)) for group in meta.get("input", []) for item in group]
    assert documented_inputs == [name for _, name in ours.inputs()]
    documented_outputs = list(meta["output"])
    assert documented_outputs == [output["emit"] for output in ours.outputs()]
    if ours.name != "LIBRARY_VERSION":
        assert meta["topics"]["versions"]


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_nf_test_per_module_with_stub_and_real_runs(module):
    spec = nf_test_spec(module.parent / "tests" / "main.nf.test")
    assert spec.kind == "nextflow_process" and spec.target() == module.resolve()
    assert spec.settings["process"] == process_of(module).name
    if "config" in spec.settings:
        assert (spec.path.parent / spec.settings["config"]).is_file()
    stubs = [case for case in spec.tests if case.settings.get("options") == "-stub"]
    assert stubs and len(spec.tests) > len(stubs), [case.name for case in spec.tests]


def test_nf_test_for_the_pipeline_and_the_slice_ids():
    pipeline = nf_test_spec(REPO / "tests" / "main.nf.test")
    assert pipeline.kind == "nextflow_pipeline" and pipeline.target() == (REPO / "main.nf").resolve()
    assert pipeline.settings["profile"] in profiles() and pipeline.tests
    functions = nf_test_spec(REPO / "tests" / "main.functions.nf.test")
    assert functions.kind == "nextflow_function" and functions.target() == (REPO / "main.nf").resolve()
    assert functions.settings["function"] in main_functions() and functions.tests


# --------------------------------------------------------------------------- containers / CI


def test_build_script_builds_what_the_modules_pin(tmp_path):
    import linumpy_motor  # noqa: PLC0415

    cpu, cuda = image_names()
    assert cpu == f"ghcr.io/linum-uqam/linumpy-motor:{linumpy_motor.__version__}" and cuda == f"{cpu}-cuda"
    fake = tmp_path / "docker"
    fake.write_text("#!/bin/bash\necho \"$*\" >> \"$0.log\"\n")
    fake.chmod(0o755)
    subprocess.run([str(REPO / "containers" / "build.sh"), "--push"],
                   env={"DOCKER": str(fake), "PATH": "/usr/bin:/bin"},
                   check=True, capture_output=True)
    calls = (tmp_path / "docker.log").read_text().splitlines()
    assert calls == [f"build -f containers/Dockerfile -t {cpu} .", f"push {cpu}",
                     f"build -f containers/Dockerfile.cuda -t {cuda} .", f"push {cuda}"]
    for dockerfile in ("containers/Dockerfile", "containers/Dockerfile.cuda"):
        assert (REPO / dockerfile).is_file()
    bad = subprocess.run([str(REPO / "containers" / "build.sh"), "gpu"], capture_output=True, text=True)
    assert bad.returncode == 2 and "unknown argument 'gpu'" in bad.stderr


def load_workflow(name: str) -> dict:
    data = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    assert isinstance(data, dict) and "jobs" in data
    return data


def workflow_commands(data: dict) -> list[list[str]]:
    """The commands of a workflow's `run:` steps, one argv per line."""
    runs = [step.get("run", "") for job in data["jobs"].values() for step in job.get("steps", [])]
    return [shlex.split(line) for run in runs for line in run.splitlines() if line.strip()]


def workflow_actions(data: dict) -> set[str]:
    """The actions a workflow uses, without owner and version (`actions/setup-java@v4` -> setup-java)."""
    return {step["uses"].split("@")[0].split("/")[-1] for job in data["jobs"].values()
            for step in job.get("steps", []) if "uses" in step}


def nextflow_runs(commands: list[list[str]]) -> list[tuple[str, bool]]:
    """(profiles, with -resume) of each `nextflow run .` command."""
    return [(argv[argv.index("-profile") + 1], "-resume" in argv) for argv in commands
            if argv[:3] == ["nextflow", "run", "."] and "-profile" in argv]


def test_nextflow_ci_workflow():
    data = load_workflow("nextflow.yml")
    commands = workflow_commands(data)
    assert {"setup-java", "setup-nextflow", "setup-nf-test"} <= workflow_actions(data)
    assert any(argv[:2] == ["nf-test", "test"] for argv in commands)
    runs = nextflow_runs(commands)
    assert ("test,docker", True) in runs and ("test,local", False) in runs
    assert ["containers/build.sh", "cpu"] in commands


def test_release_workflow_publishes_both_images_on_tags():
    data = load_workflow("release.yml")
    on = data.get("on", data.get(True))  # YAML 1.1 reads `on:` as True
    assert on["push"]["tags"]
    job = next(iter(data["jobs"].values()))
    assert job["permissions"]["packages"] == "write"
    assert ["containers/build.sh", "--push"] in workflow_commands(data)


def test_ci_workflow():
    assert any(argv[:2] == ["make", "test"] for argv in workflow_commands(load_workflow("ci.yml")))
