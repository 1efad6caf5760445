"""QC report of a run: per slice, whether its stitch can be trusted, then the motor model and plots.

``write_report`` builds ``report.html`` (plain, self-contained apart from the PNGs beside it) and
``status.json`` in one folder, written atomically. The status rules live in :func:`slice_status`;
their thresholds are the module constants below, and the report states them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from linumpy_motor import interrupts
from linumpy_motor.io import outputs
from linumpy_motor.io.records import pair_table
from linumpy_motor.io.schemas import STATUS_FILE
from linumpy_motor.qc import plots
from linumpy_motor.qc.html import page, section_html, summary_row
from linumpy_motor.qc.inputs import ReportInputs, load_inputs
from linumpy_motor.qc.status import SliceEvidence, pair_residuals, slice_status
from linumpy_motor.qc.thumbnail import draw_thumbnail
from linumpy_motor.register.fit import describe_transform
from linumpy_motor.register.geometry import n_neighbour_pairs, pair_weights

__all__ = ["DEFAULT_TITLE", "REPORT_PAGE", "write_report"]

REPORT_PAGE = "report.html"
"""Name of the report's page in its folder."""
DEFAULT_TITLE = "linumpy-motor QC report"
"""The page's title when none is given."""

def write_report(
    out_dir: str | Path,
    transform_file: str | Path,
    pairs_files: Sequence[str | Path],
    compare_files: Sequence[str | Path] = (),
    stitched: Sequence[str | Path] = (),
    *,
    title: str = DEFAULT_TITLE,
) -> Path:
    """Write the QC report folder: ``report.html``, ``status.json`` and the PNGs it shows.

    Parameters
    ----------
    out_dir : str or Path
        Report folder, built in a temporary sibling, then renamed; an existing folder is replaced
        only when it is a report this program wrote (:func:`linumpy_motor.io.outputs.is_ours`).
    transform_file : str or Path
        ``motor_transform.json``.
    pairs_files : sequence of path
        One ``*_pairs.json`` per slice (may be empty when the motor model was given).
    compare_files : sequence of path
        ``*_compare.json`` per slice; the slice id is the file's ``slice_id`` or the number after
        ``z`` in its name.
    stitched : sequence of path
        Stitched slices (OME-Zarr, NGFF 0.4 or 0.5); slice id from the name. A missing or
        unreadable store is reported, not raised.
    title : str
        Page title.

    Returns
    -------
    Path
        ``out_dir / "report.html"``.

    Raises
    ------
    InputError
        A missing, truncated or invalid JSON input, two inputs of one kind for the same slice, or an
        ``out_dir`` that is, holds or lies in an input, or that is not a report of this program.
        Nothing is written then.
    """
    out_dir = outputs.check_output_name(out_dir)
    outputs.check_outside(out_dir, transform_file, *pairs_files, *compare_files, *stitched)
    outputs.check_replaceable(out_dir, "report")
    inputs = load_inputs(transform_file, pairs_files, compare_files, stitched)
    created = outputs.make_folders(out_dir.parent)
    try:
        with outputs.atomic_output(out_dir, "report") as tmp:
            tmp.mkdir()
            page = _build(tmp, inputs, title)
            (tmp / REPORT_PAGE).write_text(page, encoding="utf-8")
    except BaseException:
        outputs.remove_created_folders(created)
        raise
    return out_dir / REPORT_PAGE


def _build(folder: Path, inputs: ReportInputs, title: str) -> str:
    """Draw every figure into ``folder``, decide each slice's status, write ``status.json``; return the page."""
    A = np.asarray(inputs.transform.transform, dtype=float)
    diagnostics = inputs.transform.diagnostics
    model = _model(inputs)
    ids = sorted(set(inputs.pairs) | set(inputs.compare) | set(inputs.stitched)) or sorted(inputs.per_slice)
    pair_lists = {s: inputs.pairs[s].table() for s in sorted(inputs.pairs)}
    pooled = pair_table([]) if not pair_lists else np.concatenate(list(pair_lists.values()))
    residuals, outliers, cutoff = pair_residuals(pooled, A, diagnostics.get("robust_scale_px"),
                                                 inputs.transform.backlash, diagnostics.get("pair_error_model"))
    bounds = np.cumsum([0] + [len(pairs) for pairs in pair_lists.values()])
    parts = {s: slice(bounds[k], bounds[k + 1]) for k, s in enumerate(pair_lists)}
    model_png = histogram_png = None
    if any(entry.get("fit") for entry in inputs.per_slice.values()):
        model_png = plots.plot_model_per_slice(folder / "model_per_slice.png", inputs.per_slice, model,
                                               diagnostics.get("drift_tolerance_px")).name
    if len(pooled):
        histogram_png = plots.plot_residual_histogram(folder / "residual_histogram.png",
                                                      np.linalg.norm(residuals, axis=1), outliers, cutoff).name
    rows, sections, stitched_meta, pixel_um = [], [], {}, None
    for slice_id in ids:
        interrupts.check()  # a safe point between slices (a command's Ctrl-C or SIGTERM)
        pairs_file, quiver, thumbnail, problem = inputs.pairs.get(slice_id), None, None, None
        mine = (residuals[parts[slice_id]], outliers[parts[slice_id]]) if pairs_file else None
        if pairs_file is not None and mine is not None and len(mine[1]):
            quiver = plots.plot_pair_residuals(folder / f"residuals_z{slice_id:02d}.png", slice_id,
                                               pair_lists[slice_id], *mine, A, pairs_file.grid,
                                               pairs_file.tile_shape[1:]).name
        if inputs.stitched:
            thumbnail, problem, thumb = draw_thumbnail(folder, slice_id, inputs.stitched.get(slice_id), pairs_file, A)
            if thumb is not None:
                stitched_meta[slice_id] = thumb.metadata
                pixel_um = pixel_um or thumb.pixel_um
        evidence = _evidence(slice_id, inputs, pair_lists.get(slice_id), mine, problem)
        status, reasons = slice_status(evidence)
        rows.append((evidence, status, reasons, mine, inputs.compare.get(slice_id)))
        sections.append(section_html(slice_id, status, reasons, quiver, thumbnail, bool(inputs.stitched)))
    summary = [summary_row(*row, pixel_um) for row in rows]
    status_json = {str(r["id"]): {"status": r["status"], "reasons": r["reasons"]} for r in summary}
    (folder / STATUS_FILE).write_text(json.dumps(status_json, indent=2, sort_keys=True) + "\n")
    return page(title, inputs, model, summary, sections, stitched_meta, ids, pixel_um=pixel_um,
                cutoff=cutoff if len(pooled) else None, model_png=model_png, histogram_png=histogram_png)


def _evidence(slice_id: int, inputs: ReportInputs, pairs: np.ndarray | None,
              mine: tuple[np.ndarray, np.ndarray] | None, stitched_problem: str | None) -> SliceEvidence:
    """Gather a slice's evidence from its pairs (``mine``: their residuals and outliers), fit and comparison."""
    entry = inputs.per_slice.get(slice_id)
    compare = inputs.compare.get(slice_id)
    evidence: dict = {"slice_id": slice_id, "in_fit": entry is not None, "stitched_problem": stitched_problem,
                      "drift_tolerance_px": inputs.transform.diagnostics.get("drift_tolerance_px")}
    if entry is not None:
        evidence.update(fit_error=entry.get("fit_error"), drift_px=entry.get("drift_px"),
                        drift_flag=bool(entry.get("drift_flag")))
    if compare is not None:
        evidence["compare_flags"] = tuple(name for name, raised in sorted(compare.flags.items()) if raised)
    if pairs is not None and mine is not None:
        nx, ny = inputs.pairs[slice_id].grid
        lengths, out = np.linalg.norm(mine[0], axis=1), mine[1]
        evidence.update(n_usable=int((pair_weights(pairs) > 0).sum()),
                        n_expected=n_neighbour_pairs(nx, ny),
                        outlier_fraction=float(out.mean()) if len(out) else None,
                        residual_rms_px=float(np.sqrt(np.mean(lengths[~out] ** 2))) if (~out).any() else None)
    return SliceEvidence(**evidence)


def _model(inputs: ReportInputs) -> dict:
    """Pooled model description: the fit's diagnostics, completed from A when they lack keys."""
    A = np.asarray(inputs.transform.transform, dtype=float)
    first = next(iter(inputs.pairs.values()), None)
    described = describe_transform(A, first.tile_shape, first.overlap) if first else {}
    return {**described, **inputs.transform.diagnostics}
