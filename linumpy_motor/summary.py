"""The end of a run in a few lines: slices that are not ok, a fitted overlap far from the nominal
one, and whether that makes the run fail (``--fail-on``)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path

OVERLAP_WARNING_FRACTION = 0.05
"""Warn when a fitted effective overlap differs from the nominal one by more than this fraction of a
tile (half the default search bound of 10 %: beyond it the nominal overlap is probably wrong)."""
FAIL_ON = ("never", "failed", "check")
"""``--fail-on`` choices: which slice statuses make the run's exit code non-zero."""
FAILING = {"never": (), "failed": ("failed",), "check": ("failed", "check")}


def not_ok(status: Mapping[str, Mapping] | None) -> list[tuple[int, str, list[str]]]:
    """``(slice id, status, reasons)`` of every slice whose status is not ok, by slice id."""
    entries = ((int(sid), entry["status"], list(entry.get("reasons", []))) for sid, entry in (status or {}).items())
    return sorted(entry for entry in entries if entry[1] != "ok")


def status_lines(status: Mapping[str, Mapping] | None) -> Iterator[str]:
    """A count of slices per status, then one line per slice that is not ok with its reasons."""
    if status is None:
        return
    counts = {name: sum(e["status"] == name for e in status.values()) for name in ("ok", "check", "failed")}
    yield "QC: " + ", ".join(f"{count} {name}" for name, count in counts.items())
    for slice_id, name, reasons in not_ok(status):
        yield f"  slice {slice_id}: {name.upper()}: {'; '.join(reasons) or 'no reason given'}"


def overlap_problems(diagnostics: Mapping) -> list[str]:
    """Fitted effective overlaps more than :data:`OVERLAP_WARNING_FRACTION` of a tile from the nominal one."""
    nominal = diagnostics.get("nominal_overlap_fraction")
    if nominal is None:
        return []
    problems = []
    for axis in ("x", "y"):
        fitted = diagnostics.get(f"O{axis}_fraction")
        if fitted is not None and abs(fitted - nominal) > OVERLAP_WARNING_FRACTION:
            problems.append(f"fitted overlap along {axis} is {fitted:.3f}, the nominal --overlap is {nominal:g}: "
                            "check --overlap (the search covers only 10 % of a tile around it)")
    return problems


def overlap_warnings(transform_file: str | Path) -> Iterator[str]:
    """``WARNING: ...`` lines for :func:`overlap_problems` of a transform JSON (none when unreadable)."""
    try:
        diagnostics = json.loads(Path(transform_file).read_text()).get("diagnostics") or {}
    except (OSError, ValueError):
        return
    for problem in overlap_problems(diagnostics):
        yield f"WARNING: {problem}"


def exit_code(status: Mapping[str, Mapping] | None, fail_on: str, code: int) -> int:
    """``code`` when a slice's status is one ``fail_on`` counts as failing, else 0."""
    if fail_on not in FAIL_ON:
        raise ValueError(f"--fail-on must be one of {FAIL_ON}, got {fail_on!r}")
    return code if any(name in FAILING[fail_on] for _, name, _ in not_ok(status)) else 0
