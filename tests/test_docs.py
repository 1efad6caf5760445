"""What README.md and docs/ state are the program's facts: the options and their defaults, the Nextflow
params, the numbers fixed in the code, the command lines, the links and the files they name.

The docs are read as data (tables, back-quoted names, code blocks), never as sentences: the words around
the facts may change freely. The examples that show a run's output are rerun in test_docs_examples.py.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import re
import shlex
from pathlib import Path

import pytest
from doc_tables import DOCS, OUTPUT, README, REPO, USAGE, code_blocks, section, table, ticked

from linumpy_motor.pipeline import cli
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.register.correlation import MAX_SHIFT_DEFAULT_TEXT
from linumpy_motor.stitch.assemble import BLOCK_BYTES


def run_parser() -> argparse.ArgumentParser:
    subparsers = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return subparsers.choices["run"]


def documented_options() -> dict[str, list[str]]:
    """The option table of docs/usage.md: each flag it names -> its row."""
    rows = {}
    for row in table(section(USAGE, "Options")):
        for flag in ticked(row[0]):
            rows[flag.split()[0]] = row
    return rows


def test_the_option_table_lists_exactly_the_options_of_linumpy_motor_run():
    program = {flag for action in run_parser()._actions for flag in action.option_strings} - {"-h", "--help"}
    assert set(documented_options()) == program


def test_the_option_table_gives_each_option_the_default_the_program_has():
    documented = documented_options()
    top = {action.dest: action.default for action in cli.build_parser()._actions
           if action.default != argparse.SUPPRESS}
    for action in run_parser()._actions:
        if not action.option_strings or action.dest == "help":
            continue
        if action.default == argparse.SUPPRESS and action.dest in top:  # the default is set before the sub-command
            action.default = top[action.dest]
        default = documented[action.option_strings[-1]][1]
        if action.nargs == 0:  # a flag: not given unless given
            assert default.split()[0] == "off", (action.option_strings, default)
        elif action.default is None:  # the program decides: the docs say how, not a value
            assert default not in (action.choices or []) and not re.fullmatch(r"[\d.]+", default), default
        else:
            assert default == str(action.default), (action.option_strings, default, action.default)
    assert documented["--max-shift"][1] == MAX_SHIFT_DEFAULT_TEXT
    assert f"{BLOCK_BYTES // 2**20} MiB" in documented["--z-chunk"][1]


def test_the_option_table_names_every_choice_of_an_option():
    documented = documented_options()
    for action in run_parser()._actions:
        if action.choices:
            named = set(ticked(" ".join(documented[action.option_strings[-1]][1:])))
            assert {str(choice) for choice in action.choices} <= named, action.option_strings


def schema_params() -> dict[str, dict]:
    schema = json.loads((REPO / "nextflow_schema.json").read_text())
    return {name: spec for group in schema["$defs"].values() for name, spec in group["properties"].items()}


def test_the_params_table_lists_exactly_the_params_of_the_schema():
    documented = [name for row in table(section(USAGE, "Params")) for name in ticked(row[0])]
    assert sorted(documented) == sorted(schema_params())


def test_the_params_table_gives_each_param_the_schema_s_default():
    params = schema_params()
    for row in table(section(USAGE, "Params")):
        names = ticked(row[0])
        defaults = row[1].split(", ") if ", " in row[1] else [row[1]] * len(names)
        assert len(defaults) == len(names), row
        for name, documented in zip(names, defaults):
            default = params[name].get("default")
            if documented == "as the runner":
                assert default == RunOptions.model_fields[name].default, name
            elif documented in ("—", "site default"):
                assert default is None, name
            else:
                assert documented.strip("`") == json.dumps(default).strip('"'), (name, documented, default)


def test_the_numbers_fixed_in_the_code_are_the_code_s():
    rows = table(section(USAGE, "Numbers fixed in the code"))
    units = {"%": 0.01, "MiB": 2**20, "px": 1, "s": 1, "tiles": 1, "": 1}
    checked = set()
    for what, value, where in rows:
        (name,) = ticked(where)
        module, constant = name.rsplit(".", 1)
        actual = getattr(importlib.import_module(f"linumpy_motor.{module}"), constant)
        number, unit = re.fullmatch(r"([\d.]+) ?(%|MiB|px|s|tiles|)", value).groups()
        assert math.isclose(float(number) * units[unit], actual), (what, value, actual)
        checked.add(name)
    assert {"qc.verdict.TISSUE_LEVEL", "qc.verdict.TISSUE_QUANTILE", "qc.verdict.SATURATED_FRACTION",
            "qc.verdict.BLANK_RATIO", "qc.verdict.MAX_FAILED_FRACTION", "qc.verdict.OVERLAP_TOLERANCE",
            "qc.summary.POOR_FIT_SCALE_PX", "qc.summary.POOR_NCC", "stitch.plan.CACHE_BYTES",
            "stitch.assemble.BLOCK_PX", "register.flatfield.DEEP_CHUNK_MIN_TILES",
            "register.measure.MAX_EMPTY_DEFAULT", "mosaic.motor.BLEND_SHIFT_SHARE",
            "mosaic.motor.BLEND_MIN_SHIFT_PX"} <= checked


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    return {slug(h) for h in re.findall(r"^#+ (.+)$", path.read_text(encoding="utf-8"), re.MULTILINE)}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_relative_link_resolves(doc):
    text = doc.read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert links or doc.name != "README.md"
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue  # a web address
        target, _, anchor = link.partition("#")
        path = (doc.parent / target).resolve() if target else doc
        assert path.exists(), f"{doc.name}: {link} does not exist"
        if anchor:
            assert anchor in anchors(path), f"{doc.name}: {link}: no such heading"


TOP = {p.name for p in REPO.iterdir()} - {".git", ".venv"}


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_repository_file_named_exists(doc):
    """A back-quoted path under one of the repository's folders (``bench/README.md``) names a file or folder
    that is there; patterns (``zNN``, ``<step>``, ``*``) and run-time folders (``bench/_work``) aside."""
    for name in ticked(doc.read_text(encoding="utf-8")):
        path = name.split()[0]
        if "/" in path and path.split("/")[0] in TOP and not re.search(r"NN|<|\*|…|_work", path):
            assert (REPO / path).exists(), f"{doc.name} names {path}, which is not in the repository"


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([\w-]+):", (REPO / "Makefile").read_text(), re.MULTILINE))


def test_the_quick_start_commands_are_makefile_targets():
    commands = [line.split("#")[0].split() for block in code_blocks(section(README, "Quick start"), "bash")
                for line in block.splitlines()]
    assert commands and all(command[0] == "make" for command in commands)
    assert {command[1] for command in commands} <= makefile_targets()


def test_the_quick_start_names_the_folders_make_demo_writes():
    from linumpy_motor.qc.report import REPORT_PAGE

    makefile = (REPO / "Makefile").read_text()
    demo = re.search(r"^DEMO\s*\?=\s*(\S+)", makefile, re.MULTILINE).group(1)
    run = next(line for line in makefile.splitlines() if "linumpy-motor run" in line).split()
    data, out = (word.replace("$(DEMO)", demo) for word in run[-2:])
    named = ticked(section(README, "Quick start"))
    assert {f"{data}/", f"{out}/", f"{out}/report/{REPORT_PAGE}"} <= set(named)


def command_lines(program: str) -> list[list[str]]:
    """Every command line of a bash block of the docs that runs ``program`` (continuations joined)."""
    found = []
    for doc in DOCS:
        for block in code_blocks(doc.read_text(encoding="utf-8"), "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                words = shlex.split(line.split("  #")[0])
                if program in words:
                    found.append([word for word in words[words.index(program) + 1:] if word != "[options]"])
    return found


def test_every_documented_runner_command_line_parses():
    lines = command_lines(".venv/bin/linumpy-motor")
    assert lines
    for words in lines:
        cli.build_parser().parse_args(words)


def nextflow_profiles() -> set[str]:
    """The profiles ``nextflow.config`` declares (the blocks one level inside ``profiles { }``)."""
    block = (REPO / "nextflow.config").read_text().split("\nprofiles {", 1)[1].split("\n}", 1)[0]
    return set(re.findall(r"^    (\w+) \{", block, re.MULTILINE))


def test_the_profile_table_lists_exactly_the_profiles_of_nextflow_config():
    documented = {name for row in table(section(USAGE, "Profiles")) for name in ticked(row[0])}
    assert documented == nextflow_profiles()


def test_every_param_and_profile_of_a_documented_nextflow_command_line_exists():
    lines = command_lines("nextflow")
    assert lines
    known = set(schema_params()) | {"helpFull"}
    for words in lines:
        params = {word[2:].split("=")[0] for word in words if word.startswith("--")}
        assert params <= known, words
        profiles = {p for k, word in enumerate(words) if word == "-profile" for p in words[k + 1].split(",")}
        assert profiles <= nextflow_profiles(), words


def test_the_status_json_example_is_a_valid_status_file():
    from linumpy_motor.io.schemas import STATUSES, StatusFile, TileProblem

    text = section(OUTPUT, "`status.json`")
    (example,) = code_blocks(text, "json")
    StatusFile.model_validate_json(example)
    words = set(ticked(text))
    assert set(STATUSES) <= words
    assert set(TileProblem.__args__) <= words
