"""Whether a slice's stitch can be trusted: the evidence about a slice and the rules that judge it.

The thresholds are the module constants below; the report states them (:mod:`.html`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from linumpy_motor.io.schemas import STATUSES, Status
from linumpy_motor.register.fit import model_precision, pair_arrays, parity_steps
from linumpy_motor.register.robust import SCALE_FLOOR_PX, outlier_cutoff, robust_scale

__all__ = ["CHECK", "FAILED", "MAX_OUTLIER_FRACTION", "MAX_RESIDUAL_RMS_PX", "MIN_MEASURED_FRACTION", "OK",
           "SliceEvidence", "pair_residuals", "slice_status"]

OK, CHECK, FAILED = STATUSES
"""The verdicts (:data:`~linumpy_motor.io.schemas.Status`), best to worst."""
MIN_MEASURED_FRACTION = 0.5
"""Failed below this fraction of the grid's neighbour pairs measured with a usable NCC."""
MAX_RESIDUAL_RMS_PX = 2.0
"""Check above this RMS (px) of the slice's inlier pair residuals against the pooled model."""
MAX_OUTLIER_FRACTION = 0.1
"""Check above this fraction of the slice's pairs beyond the Tukey cutoff of the pooled model."""


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


def slice_status(evidence: SliceEvidence) -> tuple[Status, list[str]]:
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
    return (FAILED if failed else CHECK if check else OK), failed + check


def pair_residuals(pairs: np.ndarray, transform: np.ndarray, scale_px: float | None = None,
                   backlash: Sequence[float] | None = None,
                   error_model: Mapping[str, float] | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Residuals of pairs against a motor model and the pairs beyond its Tukey cutoff.

    Parameters
    ----------
    pairs : np.ndarray
        Measured pairs, a pair table (:data:`~linumpy_motor.io.records.PAIR_DTYPE`).
    transform : np.ndarray
        The 2x2 matrix A.
    scale_px : float or None
        Robust residual scale of the fit (``robust_scale_px`` of its diagnostics); ``None``:
        recomputed from these residuals with :func:`linumpy_motor.register.fit.robust_fit`'s rule.
    backlash : sequence of float or None
        The model's backlash vector (odd tile rows' offset), part of the model's displacements.
    error_model : mapping or None
        The fit's ``pair_error_model``: residuals are weighed by each pair's precision under it
        (:func:`linumpy_motor.register.fit.model_precision`), as in the fit; None: all pairs alike.

    Returns
    -------
    residuals : np.ndarray
        ``(n, 2)`` measured displacement minus ``A @ [row_delta, col_delta]`` (dy, dx), px.
    outliers : np.ndarray of bool
        Residual length times the pair's precision (the fit's standardised residual) at or beyond
        :func:`~linumpy_motor.register.robust.outlier_cutoff` of the scale (weight 0 in the fit), or no usable NCC.
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
