"""The exit codes' numbers: the one test where they are ground truth (every other test imports
``linumpy_motor.pipeline.entry.EXIT_*``), and the docs' table of them."""

from __future__ import annotations

import argparse
import os
import re
import signal
from pathlib import Path

import pytest
from doc_tables import DOCS, USAGE, section, table, ticked

from linumpy_motor.errors import EXIT_NO_MEMORY, InputError, OutOfMemory, Terminated
from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT, EXIT_INTERRUPTED, EXIT_NOT_OK, EXIT_TERMINATED, stopped_by

CODES = {"EXIT_BAD_INPUT": EXIT_BAD_INPUT, "EXIT_NOT_OK": EXIT_NOT_OK, "EXIT_INTERRUPTED": EXIT_INTERRUPTED,
         "EXIT_TERMINATED": EXIT_TERMINATED, "EXIT_NO_MEMORY": EXIT_NO_MEMORY}
BASE_CONFIG = Path(__file__).resolve().parents[1] / "conf" / "base.config"


def documented_codes() -> dict[int, list[str]]:
    """docs/usage.md's table of exit codes: code -> its row."""
    return {int(row[0]): row for row in table(section(USAGE, "Exit codes"))}


def test_exit_codes_are_the_documented_numbers():
    """Bad input shares argparse's usage-error code; the signal codes follow the shell's 128 + signal number."""
    with pytest.raises(SystemExit) as usage_error:
        argparse.ArgumentParser(prog="probe").parse_args(["--no-such-option"])
    assert EXIT_BAD_INPUT == usage_error.value.code == 2
    assert EXIT_NOT_OK == 3
    assert EXIT_INTERRUPTED == 128 + signal.SIGINT == 130
    assert EXIT_TERMINATED == 128 + signal.SIGTERM == 143
    assert EXIT_NO_MEMORY == os.EX_TEMPFAIL == 75  # sysexits: a temporary failure, worth retrying
    assert len({0, 1, *CODES.values()}) == len(CODES) + 2, "each exit code must mean one thing"


def test_the_documented_exit_codes_are_the_program_s():
    assert set(documented_codes()) == {0, *CODES.values()}


@pytest.mark.parametrize("stop", [KeyboardInterrupt(), Terminated(), InputError("FILE", "PROBLEM"),
                                  OutOfMemory("FILE", "PROBLEM")], ids=["ctrl-c", "sigterm", "bad input", "no memory"])
def test_each_stop_s_code_is_documented_with_the_line_the_program_prints(stop):
    """The row of the code a stop exits with quotes what the program prints last (``PROG: `` aside)."""
    words, code = stopped_by(stop)
    printed = ticked(documented_codes()[code][2])
    assert any(words == line.removeprefix("PROG: ") for line in printed), (code, words, printed)


def test_the_pipeline_retries_a_task_without_memory_with_twice_the_memory():
    """The code of a step that did not fit its memory is retried like the OOM killer's 137, and every memory
    request doubles after it: a refusal by the step's own estimate is not final."""
    config = BASE_CONFIG.read_text()
    retried = re.search(r"errorStrategy = \{ task\.exitStatus in \[([\d, ]+)\] \? 'retry'", config)
    assert retried and {EXIT_NO_MEMORY, 137} <= {int(code) for code in retried.group(1).split(",")}
    memory = re.findall(r"memory = \{[^}]*previousTrace\.exit in \[([\d, ]+)\] \? 2 : 1\) \}", config)
    assert len(memory) == config.count("memory = {") >= 5
    assert all({int(code) for code in codes.split(",")} == {EXIT_NO_MEMORY, 137} for codes in memory)


def test_fail_on_exits_with_the_code_documented_for_it():
    """The option that gives the not-ok code is named in that code's row."""
    assert "--fail-on" in ticked(documented_codes()[EXIT_NOT_OK][1])


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_exit_code_the_docs_quote_is_one_the_program_uses(doc):
    """'exits 3', 'exit code 3', 'exit with code 3' anywhere in README.md and docs/ (Nextflow's own 'exit status'
    and the scheduler's task statuses aside)."""
    quoted = re.findall(r"\bexit(?:s|ed)?(?: with)?(?: code)?(?: was)? (\d+)\b", " ".join(doc.read_text().split()))
    assert {int(code) for code in quoted} <= {0, *CODES.values()}, quoted
