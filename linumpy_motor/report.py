"""QC report of a run: per slice, whether its stitch can be trusted, then the motor model and plots.

``write_report`` builds ``report.html`` (plain, self-contained apart from the PNGs beside it) and
``status.json`` in one folder, written atomically. The status rules live in :func:`slice_status`;
their thresholds are the module constants below, and the report states them.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zarr
from pydantic import BaseModel, ConfigDict

from . import __version__, outputs, plots
from .errors import InputError
from .fit import describe_transform, model_precision, pair_arrays, parity_steps
from .io import as_float, dataset_paths, level0_scale, multiscale_entry, slice_id_from_name
from .robust import outlier_cutoff, robust_scale
from .schemas import FiniteFloat, PairsFile, TransformFile, load

MIN_MEASURED_FRACTION = 0.5
"""Failed below this fraction of the grid's neighbour pairs measured with a usable NCC."""
MAX_RESIDUAL_RMS_PX = 2.0
"""Check above this RMS (px) of the slice's inlier pair residuals against the pooled model."""
MAX_OUTLIER_FRACTION = 0.1
"""Check above this fraction of the slice's pairs beyond the Tukey cutoff of the pooled model."""
SCALE_FLOOR_PX = 1e-6
"""Smallest robust residual scale, as in :func:`linumpy_motor.fit.robust_fit`."""
THUMBNAIL_PX = 1024
"""Longest side of a stitched-slice thumbnail read from its smallest pyramid level."""
UM_PER_UNIT = {"meter": 1e6, "millimeter": 1e3, "micrometer": 1.0, "nanometer": 1e-3}
"""Micrometres per NGFF axis unit (upstream writes millimetres)."""
MODEL_FORMATS = {"theta_deg": ".4f", "phi_deg": ".4f", "perpendicular_deviation_deg": ".4f", "Ox_fraction": ".4f",
                 "Oy_fraction": ".4f", "scale_y": ".6f", "scale_x": ".6f"}
"""Fixed decimals for model values a general format would round (a scale of 0.99996 is not 1)."""
MODEL_LENGTHS_PX = ("residual_rms_px", "residual_max_px", "robust_scale_px", "drift_tolerance_px")
"""Model values in px, shown in µm beside them too."""
STATUSES = ("ok", "check", "failed")
COLOURS = {"ok": ("#c8e6c9", "#1b5e20"), "check": ("#ffe0b2", "#e65100"), "failed": ("#ffcdd2", "#b71c1c")}
MODEL_ROWS = (
    ("theta_deg", "θ, scan-to-stage rotation (deg)"), ("phi_deg", "φ, angle between motor axes (deg)"),
    ("perpendicular_deviation_deg", "φ − 90° (deg)"), ("Ox_fraction", "Ox, effective overlap along x"),
    ("Oy_fraction", "Oy, effective overlap along y"), ("scale_y", "scale_y (step / nominal step)"),
    ("scale_x", "scale_x (step / nominal step)"), ("residual_rms_px", "residual RMS, inliers (px)"),
    ("residual_max_px", "residual max, inliers (px)"), ("robust_scale_px", "robust residual scale (px)"),
    ("n_inliers", "inlier pairs"), ("n_outliers", "outlier pairs"), ("n_pooled_pairs", "pooled pairs"),
    ("n_fitted_pairs", "fitted pairs (after sub-sampling)"), ("drift_tolerance_px", "drift tolerance (px)"),
    ("drifting_slices", "drifting slices"), ("backend", "fit backend"),
)
STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:1em auto;padding:0 1em}"
         "table{border-collapse:collapse;margin:0.5em 0}td,th{border:1px solid #bbb;padding:3px 8px;"
         "text-align:left;vertical-align:top}.matrix td{font-family:monospace}img{max-width:100%}"
         ".banner{font-size:1.2em}.missing{color:#777;font-style:italic}.pair{display:flex;gap:1em}"
         ".pair>*{flex:1}")


class CompareFile(BaseModel):
    """A slice's ``*_compare.json`` (:func:`linumpy_motor.compare.compare_positions` output)."""

    model_config = ConfigDict(extra="allow")
    slice_id: int | None = None
    source: str | None = None
    n_connected_tiles: int | None = None
    rms_diff_px: FiniteFloat | None = None
    max_diff_px: FiniteFloat | None = None
    flags: dict[str, bool] = {}


@dataclass(frozen=True)
class SliceEvidence:
    """What is known about one slice; ``None`` where the input that tells it was not given.

    Attributes
    ----------
    n_usable, n_expected : int or None
        Pairs measured with a usable NCC (> 0) and the grid's neighbour pairs.
    in_fit : bool
        The motor model's diagnostics hold this slice's own fit.
    fit_error : str or None
        Why the slice's own fit failed.
    residual_rms_px, outlier_fraction : float or None
        RMS (px) of the slice's inlier pair residuals against the pooled model, and the fraction
        of its pairs beyond the Tukey cutoff.
    drift_px, drift_flag, drift_tolerance_px
        Disagreement of the slice's own model with the pooled one (from the fit).
    compare_flags : tuple of str
        Raised flags of the motor-vs-registration comparison.
    stitched_problem : str or None
        Why there is no readable stitched slice (only when stitched slices were given).
    """

    slice_id: int
    n_usable: int | None = None
    n_expected: int | None = None
    in_fit: bool = False
    fit_error: str | None = None
    residual_rms_px: float | None = None
    outlier_fraction: float | None = None
    drift_px: float | None = None
    drift_flag: bool = False
    drift_tolerance_px: float | None = None
    compare_flags: tuple[str, ...] = ()
    stitched_problem: str | None = None


def slice_status(evidence: SliceEvidence) -> tuple[str, list[str]]:
    """Whether a slice's stitch can be trusted: ``("ok" | "check" | "failed", reasons)``.

    Failed: fewer than :data:`MIN_MEASURED_FRACTION` of the grid's pairs usable, or the slice's own
    fit failed. Check: inlier residual RMS above :data:`MAX_RESIDUAL_RMS_PX`, outlier fraction above
    :data:`MAX_OUTLIER_FRACTION`, drift from the pooled model, a raised compare flag, no stitched
    slice, or evidence missing (no pairs, no per-slice fit). Reasons for failure come first.
    """
    e = evidence
    failed: list[str] = []
    check: list[str] = []
    if e.n_usable is None:
        check.append("no pairs file: tile coverage and residuals not checked")
    elif e.n_expected and e.n_usable < MIN_MEASURED_FRACTION * e.n_expected:
        failed.append(f"few valid pairs: {e.n_usable} of the grid's {e.n_expected} "
                      f"({100 * e.n_usable / e.n_expected:.0f} %, need {100 * MIN_MEASURED_FRACTION:.0f} %)")
    if not e.in_fit:
        check.append("not in the motor model's per-slice diagnostics: drift not checked")
    elif e.fit_error:
        failed.append(f"the slice's own fit failed: {e.fit_error}")
    elif e.drift_flag:
        drift = "unknown" if e.drift_px is None else f"{e.drift_px:.2f} px"
        tolerance = "" if e.drift_tolerance_px is None else f" (tolerance {e.drift_tolerance_px:g} px)"
        check.append(f"drifts from the pooled model: {drift}{tolerance}")
    if e.residual_rms_px is not None and e.residual_rms_px > MAX_RESIDUAL_RMS_PX:
        check.append(f"high residuals: inlier RMS {e.residual_rms_px:.2f} px > {MAX_RESIDUAL_RMS_PX:g} px")
    if e.outlier_fraction is not None and e.outlier_fraction > MAX_OUTLIER_FRACTION:
        check.append(f"many outlier pairs: {100 * e.outlier_fraction:.0f} % > {100 * MAX_OUTLIER_FRACTION:.0f} %")
    if e.compare_flags:
        check.append("motor vs registration: " + ", ".join(e.compare_flags))
    if e.stitched_problem:
        check.append(e.stitched_problem)
    return ("failed" if failed else "check" if check else "ok"), failed + check


def pair_residuals(pairs: Sequence[Mapping], transform: np.ndarray, scale_px: float | None = None,
                   backlash: Sequence[float] | None = None,
                   error_model: Mapping[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Residuals of pairs against a motor model and the pairs beyond its Tukey cutoff.

    Parameters
    ----------
    pairs : sequence of dict
        Measured pairs.
    transform : np.ndarray
        The 2x2 matrix A.
    scale_px : float or None
        Robust residual scale of the fit (``robust_scale_px`` of its diagnostics); ``None``:
        recomputed from these residuals with :func:`linumpy_motor.fit.robust_fit`'s rule.
    backlash : sequence of float or None
        The model's backlash vector (odd tile rows' offset), part of the model's displacements.
    error_model : mapping or None
        The fit's ``pair_error_model``: residuals are weighed by each pair's precision under it
        (:func:`linumpy_motor.fit.model_precision`), as in the fit; None: all pairs alike.

    Returns
    -------
    residuals : np.ndarray
        ``(n, 2)`` measured displacement minus ``A @ [row_delta, col_delta]`` (dy, dx), px.
    outliers : np.ndarray of bool
        Residual length times the pair's precision (the fit's standardised residual) at or beyond
        :func:`~linumpy_motor.robust.outlier_cutoff` of the scale (weight 0 in the fit), or no usable NCC.
    cutoff : float
        The cutoff, px.
    """
    X, Y, w = pair_arrays(pairs)
    residuals = Y - X @ np.asarray(transform, dtype=float).T
    if backlash is not None:
        residuals -= parity_steps(pairs)[:, None] * np.asarray(backlash, dtype=float)
    w = model_precision(error_model, w**2)
    lengths = w * np.linalg.norm(residuals, axis=1)  # standardised, as the fit's Tukey stage
    if scale_px is None:
        usable = lengths[w > 0]
        scale_px = robust_scale(usable) if usable.size else 0.0
    cutoff = outlier_cutoff(max(float(scale_px), SCALE_FLOOR_PX))
    return residuals, (lengths >= cutoff) | (w <= 0), cutoff


class Thumbnail(NamedTuple):
    """A stitched slice's preview: ``plane`` covers ``extent_hw`` level-0 pixels; ``metadata`` is the
    store's ``linumpy_motor`` root attribute (``transform``, ``grid``, ``tile_shape``...; ``{}`` if absent);
    ``pixel_um`` the level-0 pixel size along x in µm (NGFF scale and unit; None when the unit is no length)."""

    plane: np.ndarray
    extent_hw: tuple[float, float]
    metadata: dict
    pixel_um: float | None = None


def read_thumbnail(path: str | Path, max_px: int = THUMBNAIL_PX) -> Thumbnail:
    """Central Z plane of the smallest pyramid level of an OME-Zarr image, at most ``max_px`` a side.

    Returns
    -------
    Thumbnail
        The plane (2-D float32, magnitude for complex data), the height and width it covers in
        level-0 pixels, and the stitch metadata of the store.

    Raises
    ------
    InputError
        Missing store, not a zarr group, no multiscales metadata, a missing level, or not a 3-D image.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "no such OME-Zarr store")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises various types for a folder that is no zarr group
        raise InputError(path, f"not a zarr store ({type(exc).__name__})") from None
    attrs = group.attrs.asdict()
    entry, _ = multiscale_entry(attrs, path)
    try:
        found = [group[name] for name in dataset_paths(entry, path)]
    except KeyError as exc:
        raise InputError(path, f"incomplete multiscale image (KeyError: {exc})") from None
    levels = [level for level in found if isinstance(level, zarr.Array) and level.ndim == 3]
    if len(levels) != len(found):
        raise InputError(path, "expected 3-D (z, y, x) levels")
    smallest = min(levels, key=lambda level: math.prod(level.shape))
    nz, height, width = smallest.shape
    step = max(1, math.ceil(max(height, width) / max_px))
    plane = as_float(smallest[nz // 2, ::step, ::step])
    level0 = levels[0].shape
    extent = (plane.shape[0] * step * level0[1] / height, plane.shape[1] * step * level0[2] / width)
    metadata = attrs.get("linumpy_motor")
    units = [axis.get("unit") for axis in entry.get("axes", [])]
    factor = UM_PER_UNIT.get(units[-1]) if units else None
    pixel_um = None if factor is None else level0_scale(entry, path)[-1] * factor
    return Thumbnail(plane, extent, metadata if isinstance(metadata, dict) else {}, pixel_um)


def _index(items: Iterable[tuple[int, tuple[Path, object]]], what: str) -> dict:
    indexed: dict = {}
    for slice_id, (path, value) in items:
        if slice_id in indexed:
            raise InputError(path, f"slice {slice_id} has more than one {what}")
        indexed[slice_id] = (path, value)
    return {slice_id: value for slice_id, (_, value) in indexed.items()}


def _per_slice(transform: TransformFile, path: Path) -> dict[int, dict]:
    raw = transform.diagnostics.get("per_slice") or {}
    try:
        return {int(key): dict(value) for key, value in raw.items()}
    except (TypeError, ValueError, AttributeError):
        raise InputError(path, "diagnostics.per_slice must map slice ids to objects") from None


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


@dataclass(frozen=True)
class _Inputs:
    transform: TransformFile
    pairs: dict[int, PairsFile]
    compare: dict[int, CompareFile]
    stitched: dict[int, Path]
    per_slice: dict[int, dict]
    source: Path


def _load(transform_file, pairs_files, compare_files, stitched) -> _Inputs:
    transform_file = Path(transform_file)
    transform = load(transform_file, TransformFile)
    pairs = _index(((f.slice_id, (p, f)) for p in map(Path, pairs_files) for f in [load(p, PairsFile)]),
                   "pairs file")
    compare = _index((((c.slice_id if c.slice_id is not None else slice_id_from_name(p)), (p, c))
                      for p in map(Path, compare_files) for c in [load(p, CompareFile)]), "compare file")
    stitched = _index(((slice_id_from_name(p), (p, p)) for p in map(Path, stitched)), "stitched slice")
    return _Inputs(transform, pairs, compare, stitched, _per_slice(transform, transform_file), transform_file)


def _model(inputs: _Inputs) -> dict:
    """Pooled model description: the fit's diagnostics, completed from A when they lack keys."""
    A = np.asarray(inputs.transform.transform, dtype=float)
    first = next(iter(inputs.pairs.values()), None)
    described = describe_transform(A, first.tile_shape, first.overlap) if first else {}
    return {**described, **inputs.transform.diagnostics}


def _rules_html(cutoff: float | None) -> str:
    cutoff_text = "" if cutoff is None else f" (here {cutoff:.2f} px)"
    return (
        "<h2>How the status is decided</h2><ul>"
        f"<li><b>failed</b>: fewer than {100 * MIN_MEASURED_FRACTION:.0f} % of the grid's neighbour pairs "
        "measured with a usable NCC (MIN_MEASURED_FRACTION), or the slice's own fit failed.</li>"
        f"<li><b>check</b>: the RMS of the slice's inlier pair residuals against the pooled model is above "
        f"{MAX_RESIDUAL_RMS_PX:g} px (MAX_RESIDUAL_RMS_PX); more than {100 * MAX_OUTLIER_FRACTION:.0f} % of "
        f"its pairs lie beyond the fit's Tukey cutoff{cutoff_text} (MAX_OUTLIER_FRACTION); its own motor "
        "model drifts from the pooled one by more than the fit's drift tolerance; the motor-vs-registration "
        "comparison raised a flag; its stitched slice is missing or unreadable; or its pairs or per-slice "
        "fit are not available.</li><li><b>ok</b>: none of these.</li></ul>"
    )


def _summary_html(rows: list[dict]) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in STATUSES}
    banner = " · ".join(
        f'<span style="background:{COLOURS[s][0]};color:{COLOURS[s][1]};padding:2px 8px">{counts[s]} {s}</span>'
        for s in STATUSES)
    header = ("<tr><th>slice</th><th>status</th><th>reasons</th><th>usable pairs / grid pairs</th>"
              "<th>residual RMS</th><th>outliers</th><th>drift</th><th>motor vs registration RMS / max</th></tr>")
    body = "".join(
        f'<tr id="slice-{r["id"]}" data-status="{r["status"]}"><td>{r["id"]}</td>'
        f'<td style="background:{COLOURS[r["status"]][0]};color:{COLOURS[r["status"]][1]};font-weight:bold">'
        f'{r["status"].upper()}</td><td>{"<br>".join(html.escape(x) for x in r["reasons"]) or "—"}</td>'
        f'<td>{_e(r["pairs"])}</td><td>{_e(r["rms"])}</td><td>{_e(r["outliers"])}</td>'
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


def _model_html(inputs: _Inputs, model: Mapping, pixel_um: float | None) -> str:
    A = np.asarray(inputs.transform.transform, dtype=float)
    matrix = "".join("<tr>" + "".join(f"<td>{v:.4f}</td>" for v in row) + "</tr>" for row in A)
    backends = sorted({str(f.stats.get("backend")) for f in inputs.pairs.values() if f.stats.get("backend")})
    rows = [(label.replace(" (px)", "") if key in MODEL_LENGTHS_PX else label,
             _model_value(key, model.get(key), pixel_um)) for key, label in MODEL_ROWS if key in model]
    rows.append(("pair measurement backend", _e(backends or None)))
    steps = [("step down the rows", np.hypot(*A[:, 0])), ("step along the columns", np.hypot(*A[:, 1]))]
    rows += [(label, html.escape(_px_length(float(value), pixel_um))) for label, value in steps]
    rows.append(("pixel size (level 0, x)", "unknown (no length unit in the stitched slices)" if pixel_um is None
                 else f"{pixel_um:.4g} µm"))
    table = "".join(f"<tr><th>{html.escape(label)}</th><td>{value}</td></tr>" for label, value in rows)
    return (f"<h2>Motor model</h2><p>From <code>{html.escape(str(inputs.source))}</code>. Tile (i, j) sits at "
            f"A @ [i, j]; columns of A are the steps down the rows and along the columns, (dy, dx) px.</p>"
            f'<table class="matrix">{matrix}</table><table>{table}</table>')


def _provenance_html(inputs: _Inputs, stitched_meta: Mapping[int, dict], ids: Sequence[int]) -> str:
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
              "<th>stitched from</th><th>blending</th><th>flat field</th><th>backends (measure / stitch)</th></tr>")
    body = ""
    for slice_id in ids:
        pairs, meta = inputs.pairs.get(slice_id), stitched_meta.get(slice_id, {})
        cells = [slice_id, None if pairs is None else pairs.source, None if pairs is None else pairs.z,
                 None if pairs is None else pairs.stats.get("max_shift_px"), meta.get("source"),
                 meta.get("blending"), meta.get("flatfield"),
                 [None if pairs is None else pairs.stats.get("backend"), meta.get("backend")]]
        body += "<tr>" + "".join(f"<td>{_e(c)}</td>" for c in cells) + "</tr>"
    return f"<h2>Provenance</h2><table>{table}</table><table>{header}{body}</table>"


def _img(name: str | None, alt: str, missing: str) -> str:
    if name is None:
        return f'<p class="missing">{html.escape(missing)}</p>'
    return f'<img src="{html.escape(name)}" alt="{html.escape(alt)}">'


def write_report(
    out_dir: str | Path,
    transform_file: str | Path,
    pairs_files: Sequence[str | Path],
    compare_files: Sequence[str | Path] = (),
    stitched: Sequence[str | Path] = (),
    *,
    title: str = "linumpy-motor QC report",
) -> Path:
    """Write the QC report folder: ``report.html``, ``status.json`` and the PNGs it shows.

    Parameters
    ----------
    out_dir : str or Path
        Report folder, built in a temporary sibling, then renamed; an existing folder is replaced
        only when it is a report this program wrote (:func:`linumpy_motor.outputs.is_ours`).
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
    outputs.check_replaceable(out_dir)
    inputs = _load(transform_file, pairs_files, compare_files, stitched)
    created = outputs.make_folders(out_dir.parent)
    try:
        with outputs.atomic_output(out_dir, "report") as tmp:
            tmp.mkdir()
            page = _build(tmp, inputs, title)
            (tmp / "report.html").write_text(page, encoding="utf-8")
    except BaseException:
        outputs.remove_created_folders(created)
        raise
    return out_dir / "report.html"


def _build(folder: Path, inputs: _Inputs, title: str) -> str:
    """Draw every figure into ``folder``, decide each slice's status, write ``status.json``; return the page."""
    A = np.asarray(inputs.transform.transform, dtype=float)
    diagnostics = inputs.transform.diagnostics
    model = _model(inputs)
    ids = sorted(set(inputs.pairs) | set(inputs.compare) | set(inputs.stitched)) or sorted(inputs.per_slice)
    pair_lists = {s: [p.model_dump() for p in inputs.pairs[s].pairs] for s in sorted(inputs.pairs)}
    pooled = [p for pairs in pair_lists.values() for p in pairs]
    residuals, outliers, cutoff = pair_residuals(pooled, A, diagnostics.get("robust_scale_px"),
                                                 inputs.transform.backlash, diagnostics.get("pair_error_model"))
    bounds = np.cumsum([0] + [len(pairs) for pairs in pair_lists.values()])
    parts = {s: slice(bounds[k], bounds[k + 1]) for k, s in enumerate(pair_lists)}
    model_png = histogram_png = None
    if any(entry.get("fit") for entry in inputs.per_slice.values()):
        model_png = plots.plot_model_per_slice(folder / "model_per_slice.png", inputs.per_slice, model,
                                               diagnostics.get("drift_tolerance_px")).name
    if pooled:
        histogram_png = plots.plot_residual_histogram(folder / "residual_histogram.png",
                                                      np.linalg.norm(residuals, axis=1), outliers, cutoff).name
    rows, sections, stitched_meta, pixel_um = [], [], {}, None
    for slice_id in ids:
        pairs_file, quiver, thumbnail, problem = inputs.pairs.get(slice_id), None, None, None
        mine = (residuals[parts[slice_id]], outliers[parts[slice_id]]) if pairs_file else None
        if pairs_file is not None and mine is not None and len(mine[1]):
            quiver = plots.plot_pair_residuals(folder / f"residuals_z{slice_id:02d}.png", slice_id,
                                               pair_lists[slice_id], *mine, A, pairs_file.grid,
                                               pairs_file.tile_shape[1:]).name
        if inputs.stitched:
            thumbnail, problem, thumb = _thumbnail(folder, slice_id, inputs.stitched.get(slice_id), pairs_file, A)
            if thumb is not None:
                stitched_meta[slice_id] = thumb.metadata
                pixel_um = pixel_um or thumb.pixel_um
        evidence = _evidence(slice_id, inputs, mine, problem)
        status, reasons = slice_status(evidence)
        rows.append((evidence, status, reasons, mine, inputs.compare.get(slice_id)))
        sections.append(_section_html(slice_id, status, reasons, quiver, thumbnail, bool(inputs.stitched)))
    summary = [_row(*row, pixel_um) for row in rows]
    status_json = {str(r["id"]): {"status": r["status"], "reasons": r["reasons"]} for r in summary}
    (folder / "status.json").write_text(json.dumps(status_json, indent=2, sort_keys=True) + "\n")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
        + _summary_html(summary) + _rules_html(cutoff if pooled else None) + _model_html(inputs, model, pixel_um)
        + "<h2>Plots</h2>"
        + _img(model_png, "per-slice model against pooled", "no per-slice fits in the motor model")
        + _img(histogram_png, "pair residual histogram", "no pairs given: no residual histogram")
        + "<h2>Slices</h2>" + "".join(sections) + _provenance_html(inputs, stitched_meta, ids)
        + "</body></html>\n"
    )


def _evidence(slice_id: int, inputs: _Inputs, mine: tuple[np.ndarray, np.ndarray] | None,
              stitched_problem: str | None) -> SliceEvidence:
    """Gather a slice's evidence from its pairs (``mine``: residuals and outliers), fit and comparison."""
    entry = inputs.per_slice.get(slice_id)
    compare = inputs.compare.get(slice_id)
    evidence: dict = {"slice_id": slice_id, "in_fit": entry is not None, "stitched_problem": stitched_problem,
                      "drift_tolerance_px": inputs.transform.diagnostics.get("drift_tolerance_px")}
    if entry is not None:
        evidence.update(fit_error=entry.get("fit_error"), drift_px=entry.get("drift_px"),
                        drift_flag=bool(entry.get("drift_flag")))
    if compare is not None:
        evidence["compare_flags"] = tuple(name for name, raised in sorted(compare.flags.items()) if raised)
    if mine is not None:
        nx, ny = inputs.pairs[slice_id].grid
        lengths, out = np.linalg.norm(mine[0], axis=1), mine[1]
        evidence.update(n_usable=sum(p.ncc > 0 for p in inputs.pairs[slice_id].pairs),
                        n_expected=nx * (ny - 1) + (nx - 1) * ny,
                        outlier_fraction=float(out.mean()) if len(out) else None,
                        residual_rms_px=float(np.sqrt(np.mean(lengths[~out] ** 2))) if (~out).any() else None)
    return SliceEvidence(**evidence)


def _row(e: SliceEvidence, status: str, reasons: list[str], mine, compare: CompareFile | None,
         pixel_um: float | None) -> dict:
    return {"id": e.slice_id, "status": status, "reasons": reasons, "rms": _length(e.residual_rms_px, pixel_um),
            "drift": _length(e.drift_px, pixel_um),
            "pairs": None if e.n_usable is None else f"{e.n_usable} / {e.n_expected}",
            "outliers": None if mine is None else f"{int(mine[1].sum())} of {len(mine[1])}",
            "compare": _compare_cell(compare, e, pixel_um)}


def _compare_cell(compare: CompareFile | None, e: SliceEvidence, pixel_um: float | None) -> str | None:
    """Motor-vs-registration RMS / max, or ``n/a`` when no two tiles are connected by pairs (the
    registration then only repeats the motor positions, and a ~0 difference would read as perfect)."""
    if compare is None:
        return None
    if e.n_usable == 0 or (compare.n_connected_tiles is not None and compare.n_connected_tiles < 2):
        return "n/a (no tiles connected by pairs)"
    return _length([compare.rms_diff_px, compare.max_diff_px], pixel_um)


def _thumbnail(folder: Path, slice_id: int, store: Path | None, pairs_file: PairsFile | None,
               A: np.ndarray) -> tuple[str | None, str | None, Thumbnail | None]:
    """Draw a stitched slice's thumbnail with its tile seams: ``(png name, problem or None, thumbnail)``.

    Seams follow the layout the store records (its transform, grid and tile shape), else the
    slice's pairs file placed with ``A``; a store stitched with another matrix than ``A`` is a problem.
    """
    if store is None:
        return None, "no stitched slice", None
    try:
        thumb = read_thumbnail(store)
    except Exception as exc:  # any unreadable store is reported on the page, not raised
        return None, f"stitched slice unreadable: {exc}", None
    meta, problem, outlines = thumb.metadata, None, None
    try:
        if {"transform", "grid", "tile_shape"} <= set(meta):
            stitched_A = np.asarray(meta["transform"], dtype=float).reshape(2, 2)
            nx, ny = (int(n) for n in meta["grid"])
            tile_hw = tuple(int(n) for n in meta["tile_shape"][-2:])
            if not _layout_fits(nx, ny, tile_hw, stitched_A, thumb.extent_hw):
                raise ValueError("layout does not match the image")
            placed = np.asarray(meta.get("positions", []), dtype=float)  # per-tile placement, when recorded
            outlines = plots.tile_outlines(nx, ny, tile_hw, stitched_A,
                                           placed if placed.shape == (nx * ny, 2) else None)
            if not np.allclose(stitched_A, A, rtol=0, atol=1e-6):
                problem = "stitched with another motor model than this report's motor_transform.json"
    except (TypeError, ValueError):
        problem = "stitched slice has unreadable layout metadata"
    if outlines is None and pairs_file is not None:
        outlines = plots.tile_outlines(*pairs_file.grid, pairs_file.tile_shape[1:], A)
    path = plots.plot_thumbnail(folder / f"thumbnail_z{slice_id:02d}.png", slice_id, thumb.plane, thumb.extent_hw,
                                outlines)
    return path.name, problem, thumb


def _layout_fits(nx: int, ny: int, tile_hw: tuple[int, ...], A: np.ndarray, extent_hw: tuple[float, float]) -> bool:
    """Whether a claimed tile layout spans the stitched image it describes (checked from the grid's
    corners, before any per-tile array is made: metadata may claim any grid)."""
    if nx < 1 or ny < 1 or len(tile_hw) != 2 or min(tile_hw) < 1 or not np.isfinite(A).all():
        return False
    corners = np.array([[0, 0], [0, ny - 1], [nx - 1, 0], [nx - 1, ny - 1]], dtype=float) @ A.T
    span = np.ptp(corners, axis=0) + tile_hw
    return bool(np.all(np.abs(span - np.asarray(extent_hw)) <= np.maximum(4.0, 0.05 * np.asarray(extent_hw))))


def _section_html(slice_id: int, status: str, reasons: list[str], quiver: str | None, thumbnail: str | None,
                  stitched_given: bool) -> str:
    background, colour = COLOURS[status]
    return (
        f'<h3 id="section-{slice_id}">Slice {slice_id}: <span style="background:{background};color:{colour};'
        f'padding:0 6px">{status.upper()}</span></h3>'
        + (f"<ul>{''.join(f'<li>{html.escape(r)}</li>' for r in reasons)}</ul>" if reasons else "")
        + '<div class="pair">'
        + _img(quiver, f"slice {slice_id} pair residuals", "no pairs for this slice")
        + _img(thumbnail, f"slice {slice_id} stitched thumbnail",
               "no readable stitched slice" if stitched_given else "no stitched slices given")
        + "</div>"
    )
