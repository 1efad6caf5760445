"""The end of a run in a few lines: slices that are not ok (with the tiles named), signs of a wrong
``--overlap`` in the pooled fit, and whether that makes the run fail (``--fail-on``)."""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

from linumpy_motor.errors import check_choice
from linumpy_motor.io.schemas import STATUS_FILE, STATUSES, StatusFile, load
from linumpy_motor.qc.verdict import CHECK, FAILED, OK, OVERLAP_HINT, implied_overlap, overlap_problem

__all__ = ["FAILING", "FAIL_ON", "POOR_FIT_SCALE_PX", "POOR_NCC", "exit_code", "model_problems", "model_warnings",
           "read_status", "status_lines"]

POOR_FIT_SCALE_PX = 2.0
"""Warn when the pooled fit's robust residual scale is above this (px): the pairs disagree with any one model."""
POOR_NCC = 0.3
"""Warn when the median NCC of the measured pairs (median over slices) is below this: the overlap
windows compared do not show the same tissue."""
FAIL_ON = ("never", "failed", "check")
"""``--fail-on`` choices: which slice statuses make the run's exit code non-zero (the first is the default)."""
FAILING = {"never": (), "failed": (FAILED,), "check": (FAILED, CHECK)}
"""The statuses each ``--fail-on`` choice counts as failing."""


def _not_ok(status: Mapping[str, Mapping] | None) -> list[tuple[int, str, list[str]]]:
    """``(slice id, status, reasons)`` of every slice whose status is not ok, by slice id."""
    entries = ((int(sid), entry["status"], list(entry.get("reasons", []))) for sid, entry in (status or {}).items())
    return sorted(entry for entry in entries if entry[1] != OK)


def status_lines(status: Mapping[str, Mapping] | None) -> Iterator[str]:
    """A count of slices per status, then one line per slice that is not ok with its reasons."""
    if status is None:
        return
    counts = {name: sum(e["status"] == name for e in status.values()) for name in STATUSES}
    yield "QC: " + ", ".join(f"{count} {name}" for name, count in counts.items())
    for slice_id, name, reasons in _not_ok(status):
        yield f"  slice {slice_id}: {name.upper()}: {'; '.join(reasons) or 'no reason given'}"


def model_problems(diagnostics: Mapping, measurements: Iterable[Mapping] | None = None) -> list[str]:
    """Signs in a pooled fit's diagnostics that the nominal overlap is wrong: the overlap the tiles
    imply (:func:`~linumpy_motor.qc.verdict.overlap_problem`; alone when it is stated), else a robust
    residual scale above :data:`POOR_FIT_SCALE_PX` or a median pair NCC below :data:`POOR_NCC`.

    ``measurements`` are the slices' measurement statistics (default: those the diagnostics hold per slice).
    """
    problems = []
    if measurements is None:
        measurements = [entry["measurement"] for entry in (diagnostics.get("per_slice") or {}).values()
                        if isinstance(entry, Mapping) and isinstance(entry.get("measurement"), Mapping)]
    measurements = list(measurements)
    implied, nominal = implied_overlap(measurements), diagnostics.get("nominal_overlap_fraction")
    overlap = None if implied is None or nominal is None else overlap_problem(implied, nominal)
    if overlap:  # the cause: a poor fit and poor correlations would only repeat it
        return [overlap]
    scale = diagnostics.get("robust_scale_px")
    if scale is not None and scale > POOR_FIT_SCALE_PX:
        problems.append(f"the pooled model fits the pairs poorly (robust residual scale {scale:.2f} px > "
                        f"{POOR_FIT_SCALE_PX:g} px): {OVERLAP_HINT}")
    nccs = [m["median_ncc"] for m in measurements if m.get("median_ncc") is not None]
    if nccs and statistics.median(nccs) < POOR_NCC:
        problems.append(f"the tile overlaps correlate poorly (median NCC {statistics.median(nccs):.2f} < "
                        f"{POOR_NCC:g}): {OVERLAP_HINT}")
    return problems


def model_warnings(transform_file: str | Path) -> Iterator[str]:
    """``WARNING: ...`` lines for :func:`model_problems` of a transform JSON (none when unreadable)."""
    try:
        diagnostics = json.loads(Path(transform_file).read_text()).get("diagnostics") or {}
    except (OSError, ValueError):
        return
    for problem in model_problems(diagnostics):
        yield f"WARNING: {problem}"


def read_status(report_dir: str | Path) -> dict[str, dict]:
    """The slices' QC statuses of a report folder (its ``status.json``), as the report wrote them.

    Raises
    ------
    InputError
        No readable, valid ``status.json`` in the folder (named in the message).
    """

    entries = load(Path(report_dir) / STATUS_FILE, StatusFile).root
    return {str(slice_id): entry.model_dump() for slice_id, entry in entries.items()}


def exit_code(status: Mapping[str, Mapping] | None, fail_on: str, code: int) -> int:
    """``code`` when a slice's status is one ``fail_on`` counts as failing, else 0."""
    check_choice("fail-on value", fail_on, FAIL_ON)
    return code if any(name in FAILING[fail_on] for _, name, _ in _not_ok(status)) else 0
