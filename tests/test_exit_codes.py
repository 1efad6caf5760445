"""The exit codes' numbers: the one test where they are ground truth (every other test imports
``linumpy_motor.pipeline.entry.EXIT_*``), and the README quoting them."""

from __future__ import annotations

import argparse
import re
import signal
from pathlib import Path

import pytest

from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_NOT_OK, EXIT_TERMINATED

README = Path(__file__).resolve().parents[1] / "README.md"
CODES = {"EXIT_BAD_INPUT": EXIT_BAD_INPUT, "EXIT_NOT_OK": EXIT_NOT_OK, "EXIT_INTERRUPTED": EXIT_INTERRUPTED,
         "EXIT_TERMINATED": EXIT_TERMINATED}


def failure_modes() -> str:
    """The README's "Failure modes" section, up to the next heading, on one line."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Failure modes\n", 1)[1].split("\n#", 1)[0]
    return " ".join(section.split())


def test_exit_codes_are_the_documented_numbers():
    """Bad input shares argparse's usage-error code; the signal codes follow the shell's 128 + signal number."""
    with pytest.raises(SystemExit) as usage_error:
        argparse.ArgumentParser(prog="probe").parse_args(["--no-such-option"])
    assert EXIT_BAD_INPUT == usage_error.value.code == 2
    assert EXIT_NOT_OK == 3
    assert EXIT_INTERRUPTED == 128 + signal.SIGINT == 130
    assert EXIT_TERMINATED == 128 + signal.SIGTERM == 143
    assert len({0, 1, *CODES.values()}) == len(CODES) + 2, "each exit code must mean one thing"


@pytest.mark.parametrize("name, statement", [
    ("EXIT_BAD_INPUT", r"Every command exits with code (\d+) and prints one error line"),
    ("EXIT_NOT_OK", r"A finished run exits 0, or (\d+) with `--fail-on`"),
    ("EXIT_INTERRUPTED", r"Ctrl-C exits (\d+) with `interrupted"),
    ("EXIT_TERMINATED", r"SIGTERM \([^)]*\) exits (\d+) with `terminated"),
])
def test_failure_modes_quotes_each_exit_code(name, statement):
    found = re.search(statement, failure_modes())
    assert found, f"README's Failure modes no longer says {statement!r}: update this test with it"
    assert int(found.group(1)) == CODES[name], f"README quotes {found.group(1)} for {name} = {CODES[name]}"


def test_every_exit_code_the_readme_quotes_is_one_the_program_uses():
    """'exits 3', 'exit code was 3', 'exit with code 3' anywhere in the README (Nextflow's own 'exit status' aside)."""
    quoted = re.findall(r"\bexit(?:s|ed)?(?: with)?(?: code)?(?: was)? (\d+)\b", " ".join(README.read_text().split()))
    assert quoted, "the README quotes no exit code"
    assert {int(code) for code in quoted} <= {0, *CODES.values()}, quoted
