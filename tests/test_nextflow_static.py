"""Static checks of the Nextflow pipeline (main.nf, modules/local, configs, schema, CI).

Nextflow cannot run here, so the .nf code is checked for what can go wrong without it:
parse errors (reftrace), process conventions, the bin/ command-line contract, params vs
schema, container tags vs the library version, and the facts of /work/shared/spec/nextflow.md.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import sys
from functools import lru_cache
from pathlib import Path

import jsonschema
import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nf_groovy import (  # noqa: E402
    REPO,
    config_ext_args,
    config_params,
    named_blocks,
    nf_processes,
    profile_ext_args,
    profile_params,
    profiles,
    strip_comments,
)

reftrace = pytest.importorskip("reftrace")

MODULES = sorted((REPO / "modules" / "local").glob("*/main.nf"))
NF_FILES = [REPO / "main.nf", *MODULES]
CONFIGS = [REPO / "nextflow.config", *sorted((REPO / "conf").glob("*.config"))]
EXPECTED_MODULES = {
    "synthesise": "SYNTHESISE",
    "measure_pairs": "MEASURE_PAIRS",
    "fit_affine": "FIT_AFFINE",
    "stitch": "STITCH",
    "compare": "COMPARE",
    "report": "REPORT",
}
GPU_MODULES = {"MEASURE_PAIRS", "STITCH"}
IMAGE = "ghcr.io/linum-uqam/linumpy-motor"


def library_version() -> str:
    text = (REPO / "linumpy_motor" / "__init__.py").read_text()
    return re.search(r"^__version__\s*=\s*['\"]([^'\"]+)['\"]", text, re.MULTILINE).group(1)


@lru_cache(maxsize=None)
def process_of(module: Path):
    procs = nf_processes(module)
    assert len(procs) == 1, f"{module}: one process per module file"
    return procs[0]


@lru_cache(maxsize=None)
def rt_process(module: Path):
    mod = reftrace.Module.from_file(str(module))
    assert isinstance(mod, reftrace.Module), mod
    (proc,) = mod.processes
    return proc


def ids(paths):
    return [str(p.relative_to(REPO)) for p in paths]


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


def test_main_includes_resolve():
    result = reftrace.parse_modules(str(REPO))
    assert not result.errors, result.errors
    assert not result.unresolved_includes, [i.to_dict() for i in result.unresolved_includes]
    (main,) = [m for m in result.results if Path(m.path).name == "main.nf" and Path(m.path).parent == REPO]
    included = {item.name for inc in main.includes for item in inc.items}
    assert included == set(EXPECTED_MODULES.values())


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
    for section in ("input", "output", "script", "stub"):
        assert section in ours.sections, f"{section}: block"
    assert "task.ext.args" in ours.script_text(), "the script takes extra arguments from task.ext.args"
    assert "versions.yml" in ours.script_text() and "versions.yml" in ours.script_text("stub")
    assert any(p == "versions.yml" for p in ours.output_patterns())
    # every output is produced by the stub too (-stub-run); checked by running it in test_pipeline_commands
    kinds = [k for k, _ in ours.inputs()]
    if ours.name != "SYNTHESISE":
        assert kinds[:2] == ["val", "path"], "first input: tuple val(meta), path(...)"


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_container_pinned_to_library_version(module):
    (container,) = rt_process(module).containers
    version = library_version()
    names = [container.true_name, container.false_name] if container.condition else [container.name]
    for name in names:
        assert re.fullmatch(rf"{re.escape(IMAGE)}:{re.escape(version)}(-cuda)?", name), name
    if process_of(module).name in GPU_MODULES:
        assert container.condition.strip() == "task.accelerator"
        assert container.true_name == f"{IMAGE}:{version}-cuda"
        assert container.false_name == f"{IMAGE}:{version}"
    else:
        assert container.name == f"{IMAGE}:{version}"


def test_manifest_version_matches_library():
    text = strip_comments((REPO / "nextflow.config").read_text())
    (manifest,) = [c for n, c in named_blocks(text) if n == "manifest"]
    assert re.search(rf"version\s*=\s*'{re.escape(library_version())}'", manifest)
    m = re.search(r"nextflowVersion\s*=\s*'!?>=\s*(\d+)\.(\d+)", manifest)
    assert m and (int(m.group(1)), int(m.group(2))) >= (24, 10)


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_gpu_label_and_accelerator(module):
    proc = rt_process(module)
    ours = process_of(module)
    labels = {label.value for label in proc.labels}
    if ours.name in GPU_MODULES:
        assert "process_gpu" in labels
        script = ours.script_text()
        assert re.search(r"task\.accelerator\s*\?\s*'--use-gpu'\s*:\s*''", script), "--use-gpu only with an accelerator"
    else:
        assert "process_gpu" not in labels
        assert "--use-gpu" not in ours.script_text()


def test_labels_are_defined_in_base_config():
    base = (REPO / "conf" / "base.config").read_text()
    defined = set(re.findall(r"withLabel:\s*'(\w+)'", base))
    assert {"process_single", "process_low", "process_medium", "process_high", "process_gpu"} <= defined
    used = {label.value for m in MODULES for label in rt_process(m).labels}
    assert used <= defined


def test_base_config_conventions():
    base = strip_comments((REPO / "conf" / "base.config").read_text())
    assert "errorStrategy = { task.exitStatus in ((130..145) + 104 + 175) ? 'retry' : 'finish' }" in base
    assert re.search(r"maxRetries\s*=\s*\d+", base)
    for directive in ("cpus", "memory", "time"):
        assert re.search(rf"{directive}\s*=\s*\{{[^}}]*task\.attempt", base), f"{directive} scales with task.attempt"
    gpu = re.search(r"withLabel:\s*'process_gpu'\s*\{([^}]*\{[^}]*\}[^}]*)\}", base).group(1)
    assert "accelerator" in gpu


def test_shell_and_cache_notes():
    text = (REPO / "nextflow.config").read_text()
    assert "process.shell = ['bash', '-C', '-e', '-u', '-o', 'pipefail']" in text
    assert "cache = 'lenient'" in text, "document cache 'lenient' for NFS / Lustre"


def test_no_store_dir_anywhere():
    for path in [*NF_FILES, *CONFIGS]:
        assert "storeDir" not in strip_comments(path.read_text()), path


# ------------------------------------------------------------------------------- main.nf story


def test_main_workflow_story():
    text = strip_comments((REPO / "main.nf").read_text())
    # every gather is sorted, so the command lines (and task hashes) are the same on -resume
    collects = re.findall(r"\.collect\(([^)]*)\)", text)
    assert collects and all("sort:" in c for c in collects), collects
    for call in ("SYNTHESISE(", "MEASURE_PAIRS(", "FIT_AFFINE(", "STITCH(", "COMPARE(", "REPORT("):
        assert call in text
    assert "params.transform" in text
    assert "channel.value(file(params.transform" in text
    assert "FIT_AFFINE.out.transform" in text


# ---------------------------------------------------------------------------- bin/ contract


@lru_cache(maxsize=None)
def bin_parser(script: str) -> argparse.ArgumentParser:
    path = REPO / "bin" / script
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    spec = importlib.util.spec_from_file_location(f"nf_bin_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build_parser()


def option_strings(parser: argparse.ArgumentParser) -> set[str]:
    return {s for action in parser._actions for s in action.option_strings}


def flags_in(text: str) -> set[str]:
    return set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", text))


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_bin_scripts_called_by_bare_name(module):
    ours = process_of(module)
    (script,) = ours.bin_scripts()
    assert not re.search(r"(python3?\s+\S*linum_motor|bin/linum_motor)", ours.script_text()), (
        "call bin/ scripts by bare name: only then are they part of the task hash"
    )
    path = REPO / "bin" / script
    assert path.is_file(), f"bin/{script} is missing"
    assert os.access(path, os.X_OK), f"bin/{script} is not executable"
    assert path.read_text().startswith("#!"), f"bin/{script} has no shebang"


@pytest.mark.parametrize("module", MODULES, ids=ids(MODULES))
def test_script_flags_are_accepted(module):
    ours = process_of(module)
    (script,) = ours.bin_scripts()
    if not (REPO / "bin" / script).is_file():
        pytest.fail(f"bin/{script} is missing")
    accepted = option_strings(bin_parser(script))
    used = flags_in(ours.script_text())
    assert used, "no flags found: parsing went wrong"
    assert used <= accepted, f"bin/{script} does not accept {sorted(used - accepted)}"
    if ours.name in GPU_MODULES:
        assert "--use-gpu" in accepted


def test_config_ext_args_flags_are_accepted():
    scripts = {process_of(m).name: next(iter(process_of(m).bin_scripts())) for m in MODULES}
    texts = [p.read_text() for p in CONFIGS]
    for text in texts:
        for name, args in config_ext_args(text).items():
            assert name in scripts, f"withName: '{name}' names no process"
            accepted = option_strings(bin_parser(scripts[name]))
            assert flags_in(args) <= accepted, (name, args)


# ------------------------------------------------------------------------------ params/schema


def schema():
    return json.loads((REPO / "nextflow_schema.json").read_text())


def schema_properties() -> dict:
    s = schema()
    props = dict(s.get("properties", {}))
    for group in s.get("$defs", {}).values():
        props.update(group.get("properties", {}))
    return props


def validate(params: dict):
    """As nf-schema does: null (unset) params are not validated."""
    jsonschema.validate({k: v for k, v in params.items() if v is not None}, schema(), cls=jsonschema.Draft202012Validator)


EXPECTED_DEFAULTS = {
    "input": None,
    "outdir": "results",
    "synthetic": False,
    "transform": None,
    "publish_dir_mode": "copy",
    "overlap": 0.2,
    "z": None,
    "max_shift": None,
    "histogram_match": False,
    "max_empty_fraction": None,
    "n_samples": None,
    "seed": 0,
    "drift_tolerance": 1.0,
    "blending": "feather",
    "flatfield": "estimate",
    "ngff_version": "0.5",
    "use_gpu": False,
    "queue": None,
    "gpu_queue": None,
    "gpu_cluster_options": "--gres=gpu:1",
}


def test_schema_is_valid_2020_12():
    s = schema()
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


@pytest.mark.parametrize("profile", [(), ("test",), ("test", "docker"), ("slurm", "gpu"), ("gpu",)])
def test_profile_params_validate(profile):
    validate(profile_params(*profile))


def test_test_profile_is_synthetic():
    params = profile_params("test")
    assert params["synthetic"] is True
    assert "--slices" in profile_ext_args("test")["SYNTHESISE"]


@pytest.mark.parametrize(
    "name, value",
    [("overlap", 0.7), ("overlap", 0), ("blending", "foo"), ("ngff_version", "0.6"), ("flatfield", "flat.tif"),
     ("seed", -1), ("z", 1.5), ("publish_dir_mode", "teleport"), ("gpu_cluster_options", "--gres=gpu:1 --mem=8G")],
)
def test_schema_rejects_bad_values(name, value):
    params = profile_params()
    params[name] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(params)


@pytest.mark.parametrize("name, value", [("flatfield", "none"), ("flatfield", "/data/flat.npy"), ("z", 3),
                                         ("blending", "diffusion"), ("ngff_version", "0.4"), ("transform", "m.json")])
def test_schema_accepts_good_values(name, value):
    params = profile_params()
    params[name] = value
    validate(params)


# -------------------------------------------------------------------------------- profiles


def test_profiles():
    table = profiles()
    assert {"test", "slurm", "gpu", "docker", "singularity", "apptainer"} <= set(table)
    assert "docker.enabled" in table["docker"] and "--gpus all" in table["docker"]
    for engine in ("singularity", "apptainer"):
        assert f"{engine}.enabled" in table[engine] and "'--nv'" in table[engine]
    for engine in ("docker", "singularity", "apptainer"):
        assert "withLabel: 'process_gpu'" in table[engine], "GPU pass-through only for GPU tasks"
        assert re.search(r"containerOptions\s*=\s*\{\s*task\.accelerator\s*\?", table[engine])
    assert "params.use_gpu = true" in table["gpu"]


def test_use_gpu_is_read_once():
    """params.use_gpu sets the accelerator; everything else (script flag, -cuda image, GPU
    pass-through, SLURM partition and --gres) follows task.accelerator, so they cannot disagree."""
    readers = []
    for path in [*NF_FILES, *CONFIGS]:
        for line in strip_comments(path.read_text()).splitlines():
            if "params.use_gpu" in line and not re.match(r"\s*params\.use_gpu\s*=", line):
                readers.append((path.name, line.strip()))
    assert readers == [("base.config", "accelerator = { params.use_gpu.toString().toBoolean() ? 1 : null }")]


def test_slurm_profile():
    slurm = profiles()["slurm"]
    assert "executor = 'slurm'" in slurm
    assert re.search(r"queueSize\s*=\s*\d+", slurm)
    assert "submitRateLimit" in slurm
    gpu = slurm[slurm.index("withLabel: 'process_gpu'") :]
    assert re.search(r"queue\s*=\s*\{\s*task\.accelerator && params\.gpu_queue \? params\.gpu_queue : params\.queue", gpu)
    assert re.search(r"clusterOptions\s*=\s*\{\s*task\.accelerator \? params\.gpu_cluster_options : ''", gpu)
    # the SLURM executor emits -p/--mem/-t itself; never repeat them in clusterOptions
    assert not re.search(r"--mem|--time|--partition|(^|\s)-[pt]\s", EXPECTED_DEFAULTS["gpu_cluster_options"])


# --------------------------------------------------------------------------- containers / CI


def test_containers():
    cpu = (REPO / "containers" / "Dockerfile").read_text()
    cuda = (REPO / "containers" / "Dockerfile.cuda").read_text()
    readme = (REPO / "containers" / "README.md").read_text()
    assert re.search(r"^FROM python:3\.11-slim", cpu, re.MULTILINE)
    assert "pip install" in cpu and "/src" in cpu and "bin/" in cpu
    assert re.search(r"^FROM nvidia/cuda:12\.", cuda, re.MULTILINE) and "[gpu]" in cuda
    assert "docker://" in readme and "Dockerfile.cuda" in readme


def load_workflow(name: str) -> dict:
    data = yaml.safe_load((REPO / ".github" / "workflows" / name).read_text())
    assert isinstance(data, dict) and "jobs" in data
    return data


def workflow_commands(data: dict) -> str:
    return "\n".join(step.get("run", "") for job in data["jobs"].values() for step in job.get("steps", []))


def test_nextflow_ci_workflow():
    data = load_workflow("nextflow.yml")
    runs = workflow_commands(data)
    uses = " ".join(s.get("uses", "") for job in data["jobs"].values() for s in job.get("steps", []))
    assert "setup-java" in uses and "nextflow" in uses.lower()
    assert "nextflow run . -profile test,docker" in runs
    assert re.search(r"nextflow run \. -profile test,docker[^\n]*-resume", runs)


def test_ci_workflow():
    runs = workflow_commands(load_workflow("ci.yml"))
    assert "make test" in runs
