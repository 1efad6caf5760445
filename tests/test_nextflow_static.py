"""Static checks of the Nextflow pipeline (main.nf, modules/local, configs, schemas, containers, CI).

Nextflow cannot run here. The .nf files are parsed with reftrace (processes, directives, includes),
the configs with tests/nf_groovy.py (`config_tree`), and their Groovy expressions are evaluated
for given params and task values (tests/nf_expr.py); the schemas are applied with jsonschema as
nf-schema applies them. The task scripts themselves are run in tests/test_pipeline_commands.py.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from functools import cache
from pathlib import Path

import jsonschema
import pytest
import yaml

from linumpy_motor.errors import InputError
from linumpy_motor.io.dataset import slice_id_from_name
from linumpy_motor.pipeline.entry import overlap_fraction

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nf_groovy import (  # noqa: E402
    REPO,
    closure_body,
    config_params,
    config_tree,
    evaluate,
    nf_functions,
    nf_processes,
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
    if ours.name in GPU_MODULES:
        assert "process_gpu" in labels
        assert ("val", "use_gpu") in ours.inputs()
        expr = re.search(r"accelerator\s*\{(.*)\}", ours.directives()).group(1)
        assert evaluate(expr, {"use_gpu": True}) == 1 and evaluate(expr, {"use_gpu": False}) is None
    else:
        assert "process_gpu" not in labels and not re.search(r"^\s*accelerator\b", ours.directives(), re.M)
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


@pytest.mark.parametrize("config", ["base.config", "slurm.config", "test.config"])
def test_resource_limits_cap_every_request(config):
    """Without limits the local executor refuses a task asking for more than the machine has,
    and SLURM gets twice the largest request on retry."""
    limits = tree(REPO / "conf" / config)["process"]["resourceLimits"]
    keys = set(re.findall(r"(\w+)\s*:", limits.replace("::", "")))
    assert {"cpus", "memory", "time"} <= keys, limits


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


def test_duplicate_ids_found():
    duplicates = nf_functions(REPO / "main.nf")["duplicateIds"]
    assert duplicates([3, 1, 3, 2, 1, 3]) == [1, 3]
    assert duplicates([1, 2, 3]) == []
    names = ["a_z07_v2.ome.zarr", "mosaic_grid_z07_3d.ome.zarr", "slice_z08.ome.zarr"]
    ids_ = [nf_functions(REPO / "main.nf")["sliceIdFromName"](n) for n in names]
    assert duplicates(ids_) == [7]


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


EXPECTED_DEFAULTS = {
    "input": None,
    "outdir": "results",
    "synthetic": False,
    "transform": None,
    "publish_dir_mode": "copy",
    "overlap": 0.2,
    "z": None,
    "plane": "auto",
    "background_test": True,
    "max_shift": None,
    "histogram_match": False,
    "max_empty_fraction": None,
    "n_samples": None,
    "seed": 0,
    "drift_tolerance": 1.0,
    "backlash": "auto",
    "placement": "model",
    "blending": "feather",
    "flatfield": "estimate",
    "ngff_version": "0.5",
    "z_chunk": None,
    "fail_on": "never",
    "use_gpu": False,
    "queue": None,
    "gpu_queue": None,
    "gpu_cluster_options": "--gres=gpu:1",
}


def test_schema_is_valid_2020_12():
    for path in (REPO / "nextflow_schema.json", REPO / "assets" / "schema_input.json"):
        s = json.loads(path.read_text())
        assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
        jsonschema.Draft202012Validator.check_schema(s)


def test_default_params():
    assert config_params() == EXPECTED_DEFAULTS


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
     ("background_test", "no"), ("fail_on", "always"),
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
                                         ("z_chunk", 1), ("background_test", False)])
def test_schema_accepts_good_values(name, value):
    params = profile_params()
    params[name] = value
    validate(params)


@pytest.mark.parametrize("value", [0.0, 1e-6, 0.1, 0.2, 0.4999, 0.5, 0.6])
def test_overlap_bounds_match_the_scripts(value):
    """The schema refuses exactly what the scripts' --overlap refuses (one rule: io.schemas.check_overlap)."""
    try:
        overlap_fraction(str(value))
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


def test_lenient_cache_is_documented_for_shared_file_systems():
    readme = (REPO / "README.md").read_text()
    nextflow_section = readme[readme.index("## Nextflow"):]
    nextflow_section = nextflow_section[: nextflow_section.index("\n## ", 1)]
    assert re.search(r"process\.cache\s*=\s*'lenient'", nextflow_section)


# ------------------------------------------------------------------------------ publishing


@pytest.mark.parametrize("name, folder", [("SYNTHESISE", ""), ("MEASURE_PAIRS", "/pairs"), ("FIT_AFFINE", ""),
                                          ("STITCH", "/stitched"), ("COMPARE", "/compare"), ("REPORT", "")])
def test_publish_dirs(name, folder):
    spec = tree(REPO / "conf" / "modules.config")["process"][f"withName:{name}"]["publishDir"]
    path_expr = re.search(r"path:\s*\{(.*?)\}\s*,", spec).group(1)
    params = {**profile_params(), "outdir": "/out", "publish_dir_mode": "symlink"}
    assert evaluate(path_expr, {"params": params}) == f"/out{folder}"
    mode_expr = re.search(r"mode:\s*([\w.]+)", spec).group(1)
    assert evaluate(mode_expr, {"params": params}) == "symlink"


# --------------------------------------------------------------------------- modules: meta.yml


def declared_names(section: str) -> list[str]:
    names = []
    for line in section.splitlines():
        line = line.strip()
        if not line:
            continue
        emit = re.search(r"\bemit:\s*(\w+)", line)
        names.append(emit.group(1) if emit else line)
    return names


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_meta_yml_describes_the_module(module):
    meta = yaml.safe_load((module.parent / "meta.yml").read_text())
    ours = process_of(module)
    assert meta["name"] == ours.name.lower() and meta["description"]
    documented_inputs = [next(iter(item)) for group in meta.get("input", []) for item in group]
    assert documented_inputs == [name for _, name in ours.inputs()]
    documented_outputs = list(meta["output"])
    assert documented_outputs == declared_names(ours.sections["output"])
    if ours.name != "LIBRARY_VERSION":
        assert meta["topics"]["versions"]


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_nf_test_per_module_with_stub_and_real_runs(module):
    text = (module.parent / "tests" / "main.nf.test").read_text()
    assert re.search(rf"nextflow_process\s*\{{.*?process\s+\"{process_of(module).name}\"", text, re.S)
    names = re.findall(r"\btest\(\"([^\"]+)\"\)", text)
    stub = [n for n in names if "stub" in n]
    assert stub and len(names) > len(stub), names


def test_nf_test_for_the_pipeline_and_the_slice_ids():
    text = (REPO / "tests" / "main.nf.test").read_text()
    assert re.search(r"nextflow_pipeline\s*\{", text)
    functions = (REPO / "tests" / "main.functions.nf.test").read_text()
    assert re.search(r"function\s+\"sliceIdFromName\"", functions)


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


def workflow_runs(data: dict) -> list[str]:
    return [step.get("run", "") for job in data["jobs"].values() for step in job.get("steps", [])]


def test_nextflow_ci_workflow():
    data = load_workflow("nextflow.yml")
    runs = "\n".join(workflow_runs(data))
    uses = " ".join(s.get("uses", "") for job in data["jobs"].values() for s in job.get("steps", []))
    assert "setup-java" in uses and "setup-nextflow" in uses and "setup-nf-test" in uses
    assert re.search(r"^nf-test test\b", runs, re.M)
    assert re.search(r"nextflow run \. -profile test,docker[^\n]*-resume", runs)
    assert re.search(r"nextflow run \. -profile test,local\b", runs)
    assert re.search(r"containers/build\.sh cpu", runs)


def test_release_workflow_publishes_both_images_on_tags():
    data = load_workflow("release.yml")
    on = data.get("on", data.get(True))  # YAML 1.1 reads `on:` as True
    assert on["push"]["tags"]
    job = next(iter(data["jobs"].values()))
    assert job["permissions"]["packages"] == "write"
    runs = "\n".join(workflow_runs(data))
    assert re.search(r"containers/build\.sh --push\b", runs)


def test_ci_workflow():
    runs = "\n".join(workflow_runs(load_workflow("ci.yml")))
    assert re.search(r"^make test\b", runs, re.M)

