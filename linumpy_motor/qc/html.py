"""The QC report's HTML: value formatting and one function per part of the page."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime

import numpy as np

from linumpy_motor import __version__
from linumpy_motor.io.schemas import STATUSES, CompareFile, Status
from linumpy_motor.qc.inputs import ReportInputs
from linumpy_motor.qc.verdict import (
    BLANK_RATIO,
    MAX_FAILED_FRACTION,
    MAX_RESIDUAL_RMS_PX,
    MIN_MEASURED_FRACTION,
    MIN_TILE_PAIRS,
    OVERLAP_TOLERANCE,
    SATURATED_FRACTION,
    TISSUE_LEVEL,
    TISSUE_QUANTILE,
    SliceEvidence,
    SliceVerdict,
)
from linumpy_motor.register.geometry import step_lengths

__all__ = ["COLOURS", "MODEL_FORMATS", "MODEL_LENGTHS_PX", "MODEL_ROWS", "STYLE", "page", "section_html",
           "summary_row"]

MODEL_FORMATS = {"theta_deg": ".4f", "phi_deg": ".4f", "perpendicular_deviation_deg": ".4f", "Ox_fraction": ".4f",
                 "Oy_fraction": ".4f", "scale_y": ".6f", "scale_x": ".6f"}
"""Fixed decimals for model values a general format would round (a scale of 0.99996 is not 1)."""
MODEL_LENGTHS_PX = ("residual_rms_px", "residual_max_px", "robust_scale_px", "drift_tolerance_px")
"""Model values in px, shown in µm beside them too."""
COLOURS: dict[Status, tuple[str, str]] = dict(zip(
    STATUSES, (("#c8e6c9", "#1b5e20"), ("#ffe0b2", "#e65100"), ("#ffcdd2", "#b71c1c")), strict=True))
"""Background and text colour of each status, best to worst: green, orange, red."""
MODEL_ROWS = (
    ("theta_deg", "θ, scan-to-stage rotation (deg)"), ("phi_deg", "φ, angle between motor axes (deg)"),
    ("perpendicular_deviation_deg", "φ − 90° (deg)"), ("nominal_overlap_fraction", "overlap given (--overlap)"),
    ("implied_overlap", "overlap the tiles imply, along x and y (whatever was given)"),
    ("Ox_fraction", "Ox, effective overlap along x"), ("Oy_fraction", "Oy, effective overlap along y"),
    ("scale_y", "scale_y (step / nominal step)"),
    ("scale_x", "scale_x (step / nominal step)"), ("residual_rms_px", "residual RMS, inliers (px)"),
    ("residual_max_px", "residual max, inliers (px)"), ("robust_scale_px", "robust residual scale (px)"),
    ("n_inliers", "inlier pairs"), ("n_outliers", "outlier pairs"), ("n_pooled_pairs", "pooled pairs"),
    ("n_fitted_pairs", "fitted pairs (after sub-sampling)"), ("drift_tolerance_px", "drift tolerance (px)"),
    ("drifting_slices", "drifting slices"), ("failed_fit_slices", "slices whose own fit failed"),
    ("backend", "fit backend"),
)
STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em;overflow-wrap:anywhere}"
         "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
         "text-align:left;vertical-align:top}.matrix td{font-family:monospace}img{max-width:100%}"
         ".banner{font-size:1.2em}.missing{color:#777;font-style:italic}.pair{display:flex;gap:1em}"
         ".pair>*{flex:1;min-width:0}.warning{background:#ffe0b2;color:#e65100;padding:4px 8px;"
         "font-weight:bold}")


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple):
        return ", ".join(_fmt(v) for v in value) or "none"
    return str(value)


def _e(value) -> str:
    return html.escape(_fmt(value))


def _length(value_px, pixel_um: float | None) -> str | None:
    """``1.23 px (3.69 µm)``: a length in px with its physical size beside it when the pixel size is known."""
    if value_px is None:
        return None
    if isinstance(value_px, list | tuple):
        return " / ".join(_length(v, pixel_um) or "—" for v in value_px)
    return _px_length(value_px, pixel_um)


def _px_length(value_px: float, pixel_um: float | None) -> str:
    """One length in px, with its physical size when the pixel size is known (see :func:`_length`)."""
    text = f"{value_px:.3g} px"
    return text if pixel_um is None else f"{text} ({value_px * pixel_um:.3g} µm)"


def _rules_html() -> str:
    return (
        "<h2>How the status is decided</h2><ul>"
        f"<li><b>failed</b>: fewer than {100 * MIN_MEASURED_FRACTION:.0f} % of the grid's neighbour pairs "
        "measured with a usable NCC, or the slice's own fit failed.</li>"
        "<li><b>check</b>: a tile named (each pair holds two copies of one overlap, one from each tile; a copy "
        f"shows tissue when it reads at least {100 * TISSUE_LEVEL:g} % of the slice's tissue level, the "
        f"{100 * TISSUE_QUANTILE:g}th percentile of its copies): <i>saturated</i> (at least "
        f"{100 * SATURATED_FRACTION:g} % of its pixels at the plane's largest value), <i>blank</i> or "
        f"<i>bright</i> (in most of its overlaps its copy reads under {100 * BLANK_RATIO:g} % of the neighbour's "
        f"copy of the same place, which shows tissue, or over {1 / BLANK_RATIO:g} times it), <i>unmatched</i> "
        f"(most of its pairs that show tissue, at least {MIN_TILE_PAIRS}, skipped, rejected by the pooled fit or "
        "off the pooled model by more than the fit's outlier cutoff); more than "
        f"{100 * MAX_FAILED_FRACTION:.0f} % of the pairs that show tissue skipped or rejected by the pooled fit; "
        f"the RMS of the pair residuals the fit kept, in tissue, above {MAX_RESIDUAL_RMS_PX:g} px; an overlap "
        f"implied by its tiles more than {100 * OVERLAP_TOLERANCE:g} % of a tile from the given one (then the "
        "other signs, which it explains, are not listed); its own motor model drifting from the pooled one by "
        "more than the fit's drift tolerance; a flag of the motor-vs-registration comparison; a missing or "
        "unreadable stitched slice; or its pairs, per-slice fit or the fit's verdict on its pairs not "
        "available.</li><li><b>ok</b>: none of these.</li></ul>"
    )


def _summary_html(rows: list[dict]) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    banner = " · ".join(
        f'<span style="background:{COLOURS[s][0]};color:{COLOURS[s][1]};padding:2px 8px">{counts[s]} {s}</span>'
        for s in STATUSES)
    header = ("<tr><th>slice</th><th>status</th><th>reasons</th><th>usable pairs / grid pairs</th>"
              "<th>residual RMS</th><th>pairs in tissue failed</th><th>drift</th>"
              "<th>motor vs registration RMS / max</th></tr>")
    body = "".join(
        f'<tr id="slice-{r["id"]}" data-status="{r["status"]}"><td>{r["id"]}</td>'
        f'<td style="background:{COLOURS[r["status"]][0]};color:{COLOURS[r["status"]][1]};font-weight:bold">'
        f'{r["status"].upper()}</td><td>{"<br>".join(html.escape(x) for x in r["reasons"]) or "—"}</td>'
        f'<td>{_e(r["pairs"])}</td><td>{_e(r["rms"])}</td><td>{_e(r["failed"])}</td>'
        f'<td>{_e(r["drift"])}</td><td>{_e(r["compare"])}</td></tr>'
        for r in rows)
    return (f'<h2>Can each slice\'s stitch be trusted?</h2><p class="banner">{banner}</p>'
            f"<table>{header}{body}</table>")


def _model_value(key: str, value, pixel_um: float | None) -> str:
    if isinstance(value, float) and key in MODEL_FORMATS:
        return html.escape(format(value, MODEL_FORMATS[key]))
    if isinstance(value, int | float) and not isinstance(value, bool) and key in MODEL_LENGTHS_PX:
        return html.escape(_px_length(float(value), pixel_um))
    return _e(value)


def _model_html(inputs: ReportInputs, model: Mapping, pixel_um: float | None) -> str:
    A = np.asarray(inputs.transform.transform, dtype=float)
    matrix = "".join("<tr>" + "".join(f"<td>{v:.4f}</td>" for v in row) + "</tr>" for row in A)
    backends = sorted({str(f.stats.get("backend")) for f in inputs.pairs.values() if f.stats.get("backend")})
    rows = [(label.replace(" (px)", "") if key in MODEL_LENGTHS_PX else label,
             _model_value(key, model.get(key), pixel_um)) for key, label in MODEL_ROWS if key in model]
    rows.append(("pair measurement backend", _e(backends or None)))
    steps = zip(("step down the rows", "step along the columns"), step_lengths(A), strict=True)
    rows += [(label, html.escape(_px_length(float(value), pixel_um))) for label, value in steps]
    rows.append(("pixel size (level 0, x)", "unknown (no length unit in the stitched slices)" if pixel_um is None
                 else f"{pixel_um:.4g} µm"))
    table = "".join(f"<tr><th>{html.escape(label)}</th><td>{value}</td></tr>" for label, value in rows)
    return (f"<h2>Motor model</h2><p>From <code>{html.escape(str(inputs.source))}</code>. Tile (i, j) sits at "
            f"A @ [i, j]; columns of A are the steps down the rows and along the columns, (dy, dx) px.</p>"
            f'<table class="matrix">{matrix}</table><table>{table}</table>')


def _provenance_html(inputs: ReportInputs, stitched_meta: Mapping[int, dict], ids: Sequence[int]) -> str:
    """Where every number came from: versions, date, parameters, and each slice's input files."""
    diagnostics = inputs.transform.diagnostics
    first = next(iter(inputs.pairs.values()), None)
    run = [("report written", datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")),
           ("linumpy-motor (report)", __version__),
           ("linumpy-motor (fit)", diagnostics.get("version")),
           ("motor model", str(inputs.source)),
           ("given motor model", diagnostics.get("given_transform")),
           ("nominal overlap", None if first is None else first.overlap),
           ("tile shape (z, h, w)", None if first is None else list(first.tile_shape)),
           ("fit: pairs sub-sampled", diagnostics.get("n_samples") or ("all" if "n_samples" in diagnostics else None)),
           ("fit: seed", diagnostics.get("seed")),
           ("fit: drift tolerance (px)", diagnostics.get("drift_tolerance_px"))]
    table = "".join(f"<tr><th>{html.escape(k)}</th><td>{_e(v)}</td></tr>" for k, v in run if v is not None)
    header = ("<tr><th>slice</th><th>input mosaic grid</th><th>plane measured</th><th>search bound (px)</th>"
              "<th>pairs no better than chance (background test)</th>"
              "<th>stitched from</th><th>blending</th><th>flat field</th><th>backends (measure / stitch)</th></tr>")
    body = ""
    for slice_id in ids:
        pairs, meta = inputs.pairs.get(slice_id), stitched_meta.get(slice_id, {})
        cells = [slice_id, None if pairs is None else pairs.source, None if pairs is None else pairs.z,
                 None if pairs is None else pairs.stats.get("max_shift_px"),
                 None if pairs is None else pairs.stats.get("n_background"), meta.get("source"),
                 meta.get("blending"), meta.get("flatfield"),
                 [None if pairs is None else pairs.stats.get("backend"), meta.get("backend")]]
        body += "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"
    return f"<h2>Provenance</h2><table>{table}</table><table>{header}{body}</table>"


def _img(name: str | None, alt: str, missing: str) -> str:
    if name is None:
        return f'<p class="missing">{html.escape(missing)}</p>'
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def section_html(slice_id: int, verdict: SliceVerdict, quiver: str | None, thumbnail: str | None,
                 stitched_given: bool) -> str:
    """One slice's section of the page: its status, its reasons, the tiles named and its two figures.

    Parameters
    ----------
    slice_id : int
        The slice.
    verdict : SliceVerdict
        Its status, reasons and the tiles named (:func:`~linumpy_motor.qc.verdict.judge`).
    quiver, thumbnail : str or None
        File names of the pair-residual plot and the stitched thumbnail beside the page; None
        when not drawn (a note says why).
    stitched_given : bool
        Whether stitched slices were given at all (picks the note of a missing thumbnail).

    Returns
    -------
    str
        HTML.
    """
    background, colour = COLOURS[verdict.status]
    tiles = "".join(f"<li>tile ({t.tile[0]}, {t.tile[1]}): <b>{t.problem}</b>: {html.escape(t.detail)}</li>"
                    for t in verdict.evidence.tiles)
    return (
        f'<h3 id="section-{slice_id}">Slice {slice_id}: <span style="background:{background};color:{colour};'
        f'padding:0 6px">{verdict.status.upper()}</span></h3>'
        + (f"<ul>{''.join(f'<li>{html.escape(r)}</li>' for r in verdict.reasons)}</ul>" if verdict.reasons else "")
        + (f'<p>Tiles named (row, column), outlined in red in the residual plot:</p><ul class="tiles">{tiles}</ul>'
           if tiles else "")
        + '<div class="pair">'
        + _img(quiver, f"slice {slice_id} pair residuals", "no pairs for this slice")
        + _img(thumbnail, f"slice {slice_id} stitched thumbnail",
               "no readable stitched slice" if stitched_given else "no stitched slices given")
        + "</div>"
    )


def summary_row(verdict: SliceVerdict, compare: CompareFile | None, pixel_um: float | None) -> dict:
    """One slice's row of the summary table, as the display values :func:`page` shows.

    Parameters
    ----------
    verdict : SliceVerdict
        The slice's verdict and evidence.
    compare : CompareFile or None
        Its motor-vs-registration comparison, when given.
    pixel_um : float or None
        Pixel size, for lengths in µm beside px; None when unknown.

    Returns
    -------
    dict
        ``id``, ``status``, ``reasons``, ``rms``, ``drift``, ``pairs``, ``failed`` and ``compare``
        (None for a value not available).
    """
    e = verdict.evidence
    return {"id": e.slice_id, "status": verdict.status, "reasons": verdict.reasons,
            "rms": _length(e.residual_rms_px, pixel_um), "drift": _length(e.drift_px, pixel_um),
            "pairs": None if e.n_usable is None else f"{e.n_usable} / {e.n_expected}",
            "failed": None if e.n_tissue_pairs is None else f"{e.n_failed_pairs} of {e.n_tissue_pairs}",
            "compare": _compare_cell(compare, e, pixel_um)}


def _compare_cell(compare: CompareFile | None, e: SliceEvidence, pixel_um: float | None) -> str | None:
    """Motor-vs-registration RMS / max, or ``n/a`` when no two tiles are connected by pairs (the
    registration then only repeats the motor positions, and a ~0 difference would read as perfect)."""
    if compare is None:
        return None
    if e.n_usable == 0 or (compare.n_connected_tiles is not None and compare.n_connected_tiles < 2):
        return "n/a (no tiles connected by pairs)"
    return _length([compare.rms_diff_px, compare.max_diff_px], pixel_um)


def page(title: str, inputs: ReportInputs, model: Mapping, summary: list[dict], sections: list[str],
         stitched_meta: Mapping[int, dict], ids: Sequence[int], *, pixel_um: float | None,
         model_png: str | None, histogram_png: str | None, warnings: Sequence[str] = ()) -> str:
    """The whole report page from its parts (figures are PNG names beside the page, None when not drawn;
    ``warnings``: problems of the whole run, shown first)."""
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + "".join(f'<p class="warning">WARNING: {html.escape(w)}</p>' for w in warnings)
        + _summary_html(summary) + _rules_html() + _model_html(inputs, model, pixel_um)
        + "<h2>Plots</h2>"
        + _img(model_png, "per-slice model against pooled", "no per-slice fits in the motor model")
        + _img(histogram_png, "pair residual histogram", "no pairs given: no residual histogram")
        + "<h2>Slices</h2>" + "".join(sections) + _provenance_html(inputs, stitched_meta, ids)
        + "</body></html>\n"
    )
