"""QC report of a run: per slice, whether its stitch can be trusted, then the motor model and plots.

``write_report`` decides every slice's verdict from the data first (:func:`~linumpy_motor.qc.verdict.judge`),
then writes ``status.json`` from it and draws ``report.html`` (plain, self-contained apart from the PNGs
beside it), in one folder written atomically.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from linumpy_motor.io import outputs
from linumpy_motor.io.schemas import REPORT_PAGE, STATUS_FILE
from linumpy_motor.qc.figures import FigureJob, draw_here
from linumpy_motor.qc.html import page, section_html, summary_row
from linumpy_motor.qc.inputs import ReportInputs, load_inputs
from linumpy_motor.qc.summary import model_problems
from linumpy_motor.qc.thumbnail import Stitched, inspect_stitched, thumbnail_figure
from linumpy_motor.qc.verdict import SliceVerdict, implied_overlap, judge, status_file
from linumpy_motor.register.fit import describe_transform

__all__ = ["DEFAULT_TITLE", "REPORT_PAGE", "write_report"]

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
    draw: Callable[[Sequence[FigureJob]], None] = draw_here,
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
    draw : callable
        Draws the report's figures, given as a list of :class:`~linumpy_motor.qc.figures.FigureJob` (each
        draws one PNG into the folder being built). Default: one after another in this process; the
        embedded runner gives them to its worker processes.

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
    A = np.asarray(inputs.transform.transform, dtype=float)
    stores = {slice_id: inspect_stitched(inputs.stitched.get(slice_id), inputs.pairs.get(slice_id), A)
              for slice_id in inputs.slice_ids} if inputs.stitched else {}
    verdicts = judge(inputs, {slice_id: store.problem for slice_id, store in stores.items()} if stores else None)
    created = outputs.make_folders(out_dir.parent)
    try:
        with outputs.atomic_output(out_dir, "report") as tmp:
            tmp.mkdir()
            (tmp / STATUS_FILE).write_text(status_file(verdicts).model_dump_json(indent=2) + "\n")
            figures, html = _plan(tmp, inputs, verdicts, stores, title)
            draw(figures)
            (tmp / REPORT_PAGE).write_text(html, encoding="utf-8")
    except BaseException:
        outputs.remove_created_folders(created)
        raise
    return out_dir / REPORT_PAGE


def _plan(folder: Path, inputs: ReportInputs, verdicts: Mapping[int, SliceVerdict], stores: Mapping[int, Stitched],
          title: str) -> tuple[list[FigureJob], str]:
    """The figures of the verdicts, to be drawn into ``folder``, and the page that shows them."""
    A = np.asarray(inputs.transform.transform, dtype=float)
    model = _model(inputs)
    measured = {slice_id: _residuals(v) for slice_id, v in verdicts.items() if v.residuals is not None}
    figures: list[FigureJob] = []
    model_png = histogram_png = None
    if inputs.per_slice:
        figures.append(FigureJob(folder / "model_per_slice.png", "plot_model_per_slice", dict(
            per_slice=inputs.per_slice, pooled=model,
            drift_tolerance_px=inputs.transform.diagnostics.get("drift_tolerance_px"))))
        model_png = figures[-1].path.name
    if any(len(residuals) for residuals, _ in measured.values()):
        lengths = np.concatenate([np.linalg.norm(residuals, axis=1) for residuals, _ in measured.values()])
        rejected = np.concatenate([rejected for _, rejected in measured.values()])
        figures.append(FigureJob(folder / "residual_histogram.png", "plot_residual_histogram",
                                 dict(residuals=lengths, outliers=rejected)))
        histogram_png = figures[-1].path.name
    rows, sections, stitched_meta, pixel_um = [], [], {}, None
    for slice_id, verdict in verdicts.items():
        pairs_file, quiver, thumbnail = inputs.pairs.get(slice_id), None, None
        if pairs_file is not None and slice_id in measured and len(measured[slice_id][0]):
            residuals, rejected = measured[slice_id]
            figures.append(FigureJob(folder / f"residuals_z{slice_id:02d}.png", "plot_pair_residuals", dict(
                slice_id=slice_id, pairs=pairs_file.table(), residuals=residuals, outliers=rejected, transform=A,
                grid=pairs_file.grid, tile_hw=pairs_file.tile_shape[1:],
                named={t.tile: t.problem for t in verdict.evidence.tiles})))
            quiver = figures[-1].path.name
        store = stores.get(slice_id)
        if store is not None and store.thumbnail is not None:
            figures.append(thumbnail_figure(folder, slice_id, store.thumbnail, store.outlines))
            thumbnail = figures[-1].path.name
            stitched_meta[slice_id] = store.thumbnail.metadata
            pixel_um = pixel_um or store.thumbnail.pixel_um
        rows.append((verdict, inputs.compare.get(slice_id)))
        sections.append(section_html(slice_id, verdict, quiver, thumbnail, bool(inputs.stitched)))
    summary = [summary_row(verdict, compare, pixel_um) for verdict, compare in rows]
    warnings = model_problems(inputs.transform.diagnostics, [f.stats for f in inputs.pairs.values()])
    return figures, page(title, inputs, model, summary, sections, stitched_meta, list(verdicts), pixel_um=pixel_um,
                         model_png=model_png, histogram_png=histogram_png, warnings=warnings)


def _residuals(verdict: SliceVerdict) -> tuple[np.ndarray, np.ndarray]:
    """A measured slice's pair residuals and which pairs the pooled fit rejected (none known: none)."""
    residuals = np.zeros((0, 2)) if verdict.residuals is None else verdict.residuals
    rejected = np.zeros(len(residuals), dtype=bool) if verdict.inliers is None else ~verdict.inliers
    return residuals, rejected


def _model(inputs: ReportInputs) -> dict:
    """Pooled model description: the fit's diagnostics, completed from A when they lack keys."""
    A = np.asarray(inputs.transform.transform, dtype=float)
    first = next(iter(inputs.pairs.values()), None)
    described = describe_transform(A, first.tile_shape, first.overlap) if first else {}
    implied = implied_overlap(f.stats for f in inputs.pairs.values())
    return {**described, **inputs.transform.diagnostics,
            "implied_overlap": None if implied is None else [implied.get("x"), implied.get("y")]}
