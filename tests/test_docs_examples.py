"""The docs' bad-tile example is what the program prints, and docs/output.md describes what a run writes.

One run, as docs/usage.md gives it (the `make demo` data with `--bad-tiles 4`, then `linumpy-motor run` with
`--fail-on check`), checked against the example's summary (line for line), its exit code, its log lines
(timings aside) and the log file; then its output folder against docs/output.md's layout and the JSON keys
that page names.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from doc_tables import OUTPUT, REPO, USAGE, as_pattern, code_blocks, documented_layout, section, ticked, written

from linumpy_motor.pipeline import logs
from linumpy_motor.pipeline.entry import EXIT_NOT_OK

pytestmark = pytest.mark.slow
EXAMPLE = section(USAGE, "QC verdict and `--fail-on`")


def example_commands() -> tuple[list[str], list[str]]:
    """The ``linumpy-motor synth`` and ``linumpy-motor run`` command lines of the example, as words."""
    commands = [shlex.split(name) for name in ticked(EXAMPLE.split("**A wrong")[0])
                if name.startswith("linumpy-motor ")]
    (synth,) = [words for words in commands if words[1] == "synth"]
    (run,) = [words for words in commands if words[1] == "run"]
    return synth, run


def test_the_example_data_are_the_make_demo_data_with_bad_tiles():
    synth, _ = example_commands()
    line = next(line for line in (REPO / "Makefile").read_text().splitlines() if "linumpy-motor synth" in line)
    demo = shlex.split(line.split("linumpy-motor synth", 1)[1])[1:]
    assert synth[3:] == [*demo, "--bad-tiles", "4"]


@pytest.fixture(scope="module")
def example_run(tmp_path_factory):
    """The example's commands, run in an empty folder: (folder, the run's CompletedProcess)."""
    folder = tmp_path_factory.mktemp("example")
    synth, run = example_commands()
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(synth, cwd=folder, check=True, capture_output=True, env=env)
    assert run[-2] == "2>"  # stderr to a file, as the example says: the log lines are checked from it
    done = subprocess.run(run[:-2], cwd=folder, capture_output=True, text=True, env=env)
    return folder, done


VARYING = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|(?<=in )[\d.]+(?= s)|(?<=took )[\d:]+|(?<=, )[\d.]+(?= [\w ]+/s))"
"""What differs between two runs of a log line: the time stamp, durations and rates."""


def _pattern(line: str) -> re.Pattern:
    """A documented log line as a pattern: any time stamp, duration and rate, the rest as written."""
    parts = re.split(VARYING, line)
    return re.compile("".join(re.escape(part) if k % 2 == 0 else r"[\d.:\- ]+" for k, part in enumerate(parts)))


def example_blocks() -> tuple[list[str], list[str]]:
    """The example's log lines and summary lines."""
    log_lines, summary = code_blocks(EXAMPLE.split("**A wrong")[0])
    return log_lines.strip("\n").splitlines(), summary.strip("\n").splitlines()


def test_the_summary_is_what_the_run_prints_and_its_exit_code_the_documented_one(example_run):
    _, done = example_run
    assert done.returncode == EXIT_NOT_OK, done.stderr
    assert f"exit code {EXIT_NOT_OK}" in " ".join(EXAMPLE.split())
    assert done.stdout.splitlines() == example_blocks()[1]


def test_the_log_lines_are_printed_in_their_order(example_run):
    _, done = example_run
    printed = iter(done.stderr.splitlines())  # the documented lines, in their order, among the run's
    for line in (line for line in example_blocks()[0] if line != "..."):
        assert any(_pattern(line).fullmatch(got) for got in printed), f"not printed (in this order): {line}"


def test_the_log_file_ends_with_the_summary_and_the_exit_status(example_run):
    folder, done = example_run
    log = (folder / "output" / logs.LOG_FILE).read_text().splitlines()
    summary = done.stdout.splitlines()
    assert [line.split(" INFO ", 1)[-1] for line in log[-len(summary) - 1:]] == [*summary,
                                                                                f"exit status {EXIT_NOT_OK}"]


def test_the_documented_layout_is_what_the_run_writes(example_run):
    folder, _ = example_run
    documented = [as_pattern(path) for path in documented_layout(0)]
    paths = written(folder / "output")
    for path in paths:
        assert any(pattern.fullmatch(path) for pattern in documented), f"{path} is not in docs/output.md"
    for pattern in documented:
        assert any(pattern.fullmatch(path) for path in paths), f"docs/output.md: {pattern.pattern} is not written"


def keys(value, prefix: str = "") -> set[str]:
    """Every key of a JSON value, at any depth, alone and as a dotted path (list items and ids as ``[id]``)."""
    found: set[str] = set()
    if isinstance(value, dict):
        for key, item in value.items():
            path = f"{prefix}[id]" if re.fullmatch(r"\d+", key) else f"{prefix}.{key}" if prefix else key
            found |= {key, path.removeprefix(".")} | keys(item, path)
    elif isinstance(value, list):
        for item in value:
            found |= keys(item, prefix)
    return found


@pytest.mark.parametrize("heading, file", [
    ("`pairs/slice_zNN_pairs.json`", "pairs/slice_z00_pairs.json"),
    ("`motor_transform.json`", "motor_transform.json"),
    ("`compare/slice_zNN_compare.json`", "compare/slice_z00_compare.json"),
    ("`status.json`", "report/status.json"),
])
def test_every_key_a_file_s_section_names_is_in_the_file(example_run, heading, file):
    """Back-quoted names (``drift_flag``, ``per_slice[id].fit_error``) are keys of the file the run wrote."""
    folder, _ = example_run
    found = keys(json.loads((folder / "output" / file).read_text()))
    named = [name for name in ticked(section(OUTPUT, heading)) if re.fullmatch(r"[A-Za-z_][\w.\[\]]*", name)]
    values = {"null", "ok", "check", "failed", "saturated", "bright", "blank", "unmatched"}  # values, not keys
    assert named
    for name in named:
        if name not in values:
            assert any(key == name or key.endswith(f".{name}") for key in found), \
                f"docs/output.md names {name}, which {file} does not hold"
