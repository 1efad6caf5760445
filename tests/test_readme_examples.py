"""The README's bad-tile example is what the program prints: the `make demo` data with `--bad-tiles 4`,
run as the README says, gives its summary line for line, its exit code and (timings aside) its log lines."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from linumpy_motor.pipeline import logs
from linumpy_motor.pipeline.entry import EXIT_NOT_OK

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
COMMAND = "linumpy-motor run input output --fail-on check 2> run.log"


def _blocks_after(marker: str, count: int) -> list[list[str]]:
    """The lines of the ``count`` code blocks that follow ``marker`` in the README."""
    text = README[README.index(marker):]
    return [block.strip("\n").splitlines() for block in re.findall(r"```\n(.*?)```", text, re.DOTALL)[:count]]


def _demo_synth_arguments() -> list[str]:
    """The arguments `make demo` gives `linumpy-motor synth` after its output folder."""
    line = next(line for line in (ROOT / "Makefile").read_text().splitlines() if "linumpy-motor synth" in line)
    return shlex.split(line.split("linumpy-motor synth", 1)[1])[1:]


VARYING = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d|(?<=in )[\d.]+(?= s)|(?<=took )[\d:]+|(?<=, )[\d.]+(?= [\w ]+/s))"
"""What differs between two runs of a README log line: the time stamp, durations and rates."""


def _pattern(line: str) -> re.Pattern:
    """A README log line as a pattern: any time stamp, duration and rate, the rest as written."""
    parts = re.split(VARYING, line)
    return re.compile("".join(re.escape(part) if k % 2 == 0 else r"[\d.:\- ]+" for k, part in enumerate(parts)))


@pytest.mark.slow
def test_the_bad_tile_example_is_what_a_run_prints(tmp_path):
    assert f"(`{COMMAND}`, the `make demo` data with\n`--bad-tiles 4`)" in README
    log_lines, summary = _blocks_after("A batch log", 2)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    subprocess.run(["linumpy-motor", "synth", "input", *_demo_synth_arguments(), "--bad-tiles", "4"], cwd=tmp_path,
                   check=True, capture_output=True, env=env)
    done = subprocess.run(shlex.split(COMMAND.split(" 2>")[0]), cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == EXIT_NOT_OK, done.stderr
    assert "and the exit code was 3 (`--fail-on check`)" in README and EXIT_NOT_OK == 3
    assert done.stdout.splitlines() == summary
    printed = iter(done.stderr.splitlines())  # the README's lines, in its order, among the run's
    for line in (line for line in log_lines if line != "..."):
        assert any(_pattern(line).fullmatch(got) for got in printed), f"not printed (in this order): {line}"
    log = (tmp_path / "output" / logs.LOG_FILE).read_text().splitlines()
    assert [line.split(" INFO ", 1)[-1] for line in log[-len(summary) - 1:]] == [*summary, "exit status 3"]
