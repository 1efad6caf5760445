"""Whether each slice's stitch can be trusted, decided from the data before anything is drawn.

Two levels of evidence, both computed from the run's files:

- **Tiles.** Every pair compares two copies of one overlap, one from each tile. The measurement
  records each copy's mean level (after the flat field) and, per tile, the fraction of its pixels at
  the plane's largest value. A copy *shows tissue* when its level is at least :data:`TISSUE_LEVEL` of
  the slice's tissue level (the :data:`TISSUE_QUANTILE` quantile of its copies' levels). A tile is
  *saturated* when at least :data:`SATURATED_FRACTION` of its pixels sit at the plane's maximum;
  *blank* when, in most of its pairs whose other copy shows tissue, its own copy reads less than
  :data:`BLANK_RATIO` of the other (the two copies image the same place: a dropped frame, a missing
  chunk, the laser off), *bright* when in most of its pairs it reads more than the inverse (a gain
  change); *unmatched* when most of its (at least :data:`MIN_TILE_PAIRS`) pairs that show tissue do not
  place it: skipped, rejected by the pooled fit, or off the pooled model by more than
  :func:`agreement_px` (the fit keeps faint pairs at a low weight, whatever their displacement) --
  swapped or re-imaged content, a moved tile, or tissue around a tile that shows none. Unmatched tiles
  are named one at a time, the worst first, so a good tile between two bad ones is not named for them.
  Each tile is named by its grid index (row, column) and is enough for ``check``.
- **Pairs.** A pair that shows tissue is expected to match: one that was skipped, or that the pooled
  fit rejected (its own inlier flags, ``per_slice[id].pair_inliers`` of the motor model), is a failed
  pair. Pairs over background on both sides count for nothing either way.

:func:`judge` gathers a slice's :class:`SliceEvidence`; :func:`slice_status` applies the rules. The
thresholds are the module constants below; the report states them in words.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from linumpy_motor.io.records import pair_table
from linumpy_motor.io.schemas import STATUSES, PairsFile, SliceStatus, Status, StatusFile, TileFinding, TileProblem
from linumpy_motor.qc.inputs import ReportInputs
from linumpy_motor.register.correlation import MAX_SHIFT_DEFAULT_TEXT, MAX_SHIFT_FRACTION
from linumpy_motor.register.fit import pair_arrays, parity_steps
from linumpy_motor.register.geometry import n_neighbour_pairs, pair_weights
from linumpy_motor.register.robust import SCALE_FLOOR_PX, outlier_cutoff

__all__ = ["AGREEMENT_FLOOR_PX", "BLANK_RATIO", "CHECK", "FAILED", "MAX_FAILED_FRACTION", "MAX_RESIDUAL_RMS_PX",
           "MIN_MEASURED_FRACTION", "MIN_TILE_PAIRS", "OK", "OVERLAP_HINT", "OVERLAP_TOLERANCE", "SATURATED_FRACTION",
           "TISSUE_LEVEL", "TISSUE_QUANTILE", "SliceEvidence", "SliceVerdict", "agreement_px", "implied_overlap",
           "judge", "overlap_problem", "pair_residuals", "slice_status", "status_file", "tile_findings"]

OK, CHECK, FAILED = STATUSES
"""The verdicts (:data:`~linumpy_motor.io.schemas.Status`), best to worst."""
MIN_MEASURED_FRACTION = 0.5
"""Failed below this fraction of the grid's neighbour pairs measured with a usable NCC."""
MAX_RESIDUAL_RMS_PX = 2.0
"""Check above this RMS (px) of the slice's inlier pair residuals against the pooled model."""
MAX_FAILED_FRACTION = 0.1
"""Check above this fraction of the slice's pairs that show tissue being skipped or rejected by the fit."""
TISSUE_QUANTILE = 0.99
"""A slice's tissue level: this quantile of the levels of its overlap copies (saturated tiles left out)."""
TISSUE_LEVEL = 0.1
"""An overlap copy shows tissue when its level is at least this fraction of the slice's tissue level."""
BLANK_RATIO = 0.5
"""A tile's copy of an overlap is dark when it reads less than this fraction of the other tile's copy."""
MIN_TILE_PAIRS = 2
"""A tile is judged unmatched only when it has at least this many pairs that show tissue."""
AGREEMENT_FLOOR_PX = 1.0
"""A pair within this many px of the pooled model always places its tiles (noise-free data have a zero scale)."""
SATURATED_FRACTION = 0.25
"""A tile is saturated when at least this fraction of its pixels sit at the plane's largest value."""
OVERLAP_TOLERANCE = MAX_SHIFT_FRACTION / 2
"""The overlap the tiles imply may differ from the given one by this much (a fraction of the tile)
before it is a problem: half the default search around the nominal step, so a pair is still found,
and twice the overlap change of a 3 % stage scale error."""
OVERLAP_HINT = f"check --overlap (the search covers only {MAX_SHIFT_DEFAULT_TEXT} around the given step)"
"""What to do about signs of a wrong overlap."""


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
    fit_flags : bool
        The motor model holds the pooled fit's verdict on each of this slice's pairs.
    residual_rms_px : float or None
        RMS (px) of the slice's inlier pair residuals against the pooled model.
    n_tissue_pairs, n_failed_pairs : int or None
        Pairs (measured or skipped) that show tissue, and those of them skipped or rejected by the fit.
    tiles : tuple of TileFinding
        Tiles that are saturated, blank or unmatched (:func:`tile_findings`).
    implied_overlap : dict or None
        The overlap the slice's tiles imply, ``{"x": ..., "y": ...}`` (:func:`implied_overlap`).
    nominal_overlap : float or None
        The overlap given.
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
    fit_flags: bool = True
    residual_rms_px: float | None = None
    n_tissue_pairs: int | None = None
    n_failed_pairs: int | None = None
    tiles: tuple[TileFinding, ...] = ()
    implied_overlap: dict[str, float] | None = None
    nominal_overlap: float | None = None
    drift_px: float | None = None
    drift_flag: bool = False
    drift_tolerance_px: float | None = None
    compare_flags: tuple[str, ...] = ()
    stitched_problem: str | None = None


@dataclass(frozen=True)
class SliceVerdict:
    """A slice's status, the reasons for it, the evidence, and the pooled fit's verdict on each pair.

    Attributes
    ----------
    status : Status
    reasons : list of str
    evidence : SliceEvidence
    inliers : np.ndarray of bool or None
        Per measured pair: kept by the pooled fit (``None`` without the fit's flags).
    residuals : np.ndarray or None
        ``(n, 2)`` pair residuals (dy, dx) against the pooled model (None without pairs).
    """

    status: Status
    reasons: list[str]
    evidence: SliceEvidence
    inliers: np.ndarray | None = None
    residuals: np.ndarray | None = field(default=None, repr=False)


_PROBLEMS = {
    "saturated": "saturated",
    "bright": "bright (re-imaged at another gain?)",
    "blank": "blank",
    "unmatched": "matching no neighbour (swapped, re-imaged or moved?)",
}
"""Each tile problem in words, for the reasons (the tiles' own details go to status.json and the report)."""


def slice_status(evidence: SliceEvidence) -> tuple[Status, list[str]]:
    """Whether a slice's stitch can be trusted: ``("ok" | "check" | "failed", reasons)``.

    Failed: fewer than :data:`MIN_MEASURED_FRACTION` of the grid's pairs usable, or the slice's own
    fit failed. Check: a saturated, bright, blank or unmatched tile (each named); more than
    :data:`MAX_FAILED_FRACTION` of the pairs that show tissue skipped or rejected; inlier residual RMS
    above :data:`MAX_RESIDUAL_RMS_PX`; an overlap the tiles imply beyond :data:`OVERLAP_TOLERANCE` of
    the given one; drift from the pooled model; a raised compare flag; no stitched slice; or evidence
    missing (no pairs, no per-slice fit or fit flags). Reasons for failure come first.
    """
    e = evidence
    failed: list[str] = []
    check: list[str] = []
    overlap = None if e.implied_overlap is None or e.nominal_overlap is None else \
        overlap_problem(e.implied_overlap, e.nominal_overlap)
    if overlap:  # every pair was looked for in the wrong place: the rest of the pairs' evidence says no more
        check.append(overlap)
    if e.n_usable is None:
        check.append("no pairs file: tile coverage and residuals not checked")
    elif e.n_expected and e.n_usable < MIN_MEASURED_FRACTION * e.n_expected:
        failed.append(f"few valid pairs: {e.n_usable} of the grid's {e.n_expected} "
                      f"({100 * e.n_usable / e.n_expected:.0f} %, need {100 * MIN_MEASURED_FRACTION:.0f} %)")
    if not e.in_fit:
        check.append("not in the motor model's per-slice diagnostics: drift not checked")
    elif e.fit_error:
        failed.append(f"the slice's own fit failed: {e.fit_error}")
    elif e.drift_flag and not overlap:
        drift = "unknown" if e.drift_px is None else f"{e.drift_px:.2f} px"
        tolerance = "" if e.drift_tolerance_px is None else f" (tolerance {e.drift_tolerance_px:g} px)"
        check.append(f"drifts from the pooled model: {drift}{tolerance}")
    if e.n_usable is not None and e.in_fit and not e.fit_flags:
        check.append("the motor model does not say which pairs its fit rejected: outliers not checked")
    for problem, words in _PROBLEMS.items():
        named = [f"({t.tile[0]}, {t.tile[1]})" for t in e.tiles if t.problem == problem]
        if named:
            check.append(f"{'tile' if len(named) == 1 else 'tiles'} {', '.join(named)} {words}")
    if e.n_tissue_pairs and e.n_failed_pairs is not None and not overlap \
            and e.n_failed_pairs > MAX_FAILED_FRACTION * e.n_tissue_pairs:
        check.append(f"failed pairs in tissue: {e.n_failed_pairs} of {e.n_tissue_pairs} "
                     f"({100 * e.n_failed_pairs / e.n_tissue_pairs:.0f} % > {100 * MAX_FAILED_FRACTION:.0f} %)")
    if e.residual_rms_px is not None and e.residual_rms_px > MAX_RESIDUAL_RMS_PX and not overlap:
        check.append(f"high residuals: inlier RMS {e.residual_rms_px:.2f} px > {MAX_RESIDUAL_RMS_PX:g} px")
    if e.compare_flags:
        check.append("motor vs registration: " + ", ".join(e.compare_flags))
    if e.stitched_problem:
        check.append(e.stitched_problem)
    return (FAILED if failed else CHECK if check else OK), failed + check


def implied_overlap(stats: Iterable[Mapping]) -> dict[str, float] | None:
    """The overlap the tiles imply along x and y (``{"x": Ox, "y": Oy}``): the median over the given
    measurement statistics' ``implied_overlap`` (one per slice); None when none holds it."""
    found: dict[str, list[float]] = {"x": [], "y": []}
    for entry in stats:
        for direction, axis in (("horizontal", "x"), ("vertical", "y")):
            value = ((entry.get("implied_overlap") or {}).get(direction) or {}).get("overlap")
            if value is not None:
                found[axis].append(float(value))
    medians = {axis: statistics.median(values) for axis, values in found.items() if values}
    return medians or None


def overlap_problem(implied: Mapping[str, float], nominal: float) -> str | None:
    """The overlap the tiles imply stated next to the given one, when they differ by more than
    :data:`OVERLAP_TOLERANCE` along an axis; else None."""
    if not any(abs(value - nominal) > OVERLAP_TOLERANCE for value in implied.values()):
        return None
    stated = " and ".join(f"{value:.2f} along {axis}" for axis, value in sorted(implied.items()))
    return f"the tiles imply an overlap of {stated}, the given --overlap is {nominal:g}: {OVERLAP_HINT}"


def _as_table(pairs: np.ndarray | Iterable[Mapping]) -> np.ndarray:
    """A pair table of pairs given as one, or as dicts that may lack a displacement (a skipped pair, a pair
    built by hand): those get NaN."""
    if isinstance(pairs, np.ndarray):
        return pairs
    return pair_table({"measured_dy": math.nan, "measured_dx": math.nan, **p} for p in pairs)


def _copies(pairs: np.ndarray) -> tuple[list[tuple[int, int]], list[tuple[int, int]], np.ndarray]:
    """The tiles of each pair's two copies of its overlap, and the copies' levels ``(n, 2)`` (NaN where not
    recorded), from a pair table."""
    first = [(int(i), int(j)) for i, j in pairs["tile"]]
    second = [(i + int(di), j + int(dj)) for (i, j), di, dj in zip(first, pairs["row_delta"], pairs["col_delta"])]
    return first, second, np.asarray(pairs["levels"], dtype=float).reshape(-1, 2)


def _level_mismatches(tiles: Sequence[tuple[tuple[int, int], tuple[int, int]]], levels: np.ndarray,
                      compared: np.ndarray, problem: TileProblem) -> dict[tuple[int, int], TileFinding]:
    """The tiles whose copies of their overlaps are dark (``blank``: below :data:`BLANK_RATIO` of the other
    copy) or bright (``bright``: above its inverse) in most of the overlaps ``compared[k, own]`` marks."""
    factor = BLANK_RATIO if problem == "blank" else 1 / BLANK_RATIO
    odd: dict[tuple[int, int], list[tuple[float, tuple[int, int]]]] = {}
    counts: dict[tuple[int, int], int] = {}
    for k, own in zip(*np.nonzero(compared)):
        tile, neighbour = tiles[k][own], tiles[k][1 - own]
        counts[tile] = counts.get(tile, 0) + 1
        ratio = float(levels[k, own] / levels[k, 1 - own])
        if ratio < factor if problem == "blank" else ratio > factor:
            odd.setdefault(tile, []).append((ratio, neighbour))
    found = {}
    for tile, seen in odd.items():
        if 2 * len(seen) > counts[tile]:
            ratio, (i, j) = min(seen) if problem == "blank" else max(seen)
            found[tile] = TileFinding(tile=tile, problem=problem, detail=(
                f"its copy of the overlap with ({i}, {j}) reads {100 * ratio:.0f} % of that tile's copy "
                f"({len(seen)} of {counts[tile]} overlaps {'dark' if problem == 'blank' else 'bright'})"))
    return found


def tile_findings(pairs: np.ndarray | Sequence[Mapping], usable: npt.ArrayLike,
                  tiles_at_maximum: Sequence[Sequence[float]] | None = None) -> tuple[list[TileFinding], np.ndarray]:
    """The saturated, bright, blank and unmatched tiles of a slice, and which of its pairs show tissue.

    Parameters
    ----------
    pairs : np.ndarray or sequence of dict
        Every pair of the slice, measured or skipped: a pair table (:data:`~linumpy_motor.io.records.PAIR_DTYPE`),
        or dicts with ``tile``, ``row_delta``, ``col_delta`` and ``levels`` (the mean of each tile's copy of
        the overlap; a pair without it is taken to show tissue).
    usable : array-like of bool
        Per pair: it places its two tiles (measured with a usable NCC, kept by the fit, near the model).
    tiles_at_maximum : nested sequence of float or None
        Per tile (grid rows), the fraction of its pixels at the plane's largest value.

    Returns
    -------
    findings : list of TileFinding
        By tile, one finding per tile (saturated, then bright, blank, unmatched).
    tissue : np.ndarray of bool
        Per pair: one of its copies shows tissue.
    """
    usable = np.asarray(usable, dtype=bool)
    first, second, levels = _copies(_as_table(pairs))
    tiles = list(zip(first, second))
    at_max = np.asarray(tiles_at_maximum if tiles_at_maximum is not None else [[0.0]], dtype=float)
    findings = {(int(i), int(j)): TileFinding(tile=(int(i), int(j)), problem="saturated",
                                              detail=f"{100 * at_max[i, j]:.0f} % of its pixels at the plane's maximum")
                for i, j in zip(*np.nonzero(at_max >= SATURATED_FRACTION))}

    def clear(*named: Mapping) -> np.ndarray:  # pairs neither of whose tiles is named yet
        return np.array([not any(a in n or b in n for n in (findings, *named)) for a, b in tiles],
                        dtype=bool).reshape(-1)

    known = np.isfinite(levels).all(axis=1)
    positive = known & (levels > 0).all(axis=1)
    bright = _level_mismatches(tiles, levels, np.column_stack([positive & clear()] * 2), "bright")
    reference = levels[known & clear(bright)]  # a bright tile would raise the tissue level
    threshold = TISSUE_LEVEL * float(np.quantile(reference, TISSUE_QUANTILE)) if reference.size else np.inf
    shows = (levels >= threshold) & (levels > 0)
    tissue = ~known | shows.any(axis=1)
    findings |= _level_mismatches(tiles, levels, (known & clear(bright))[:, None] & shows[:, ::-1], "blank")
    # bright again, now against tiles that are not blank: a tile beside blank ones is not bright for it
    findings |= _level_mismatches(tiles, levels, np.column_stack([positive & clear()] * 2), "bright")
    while unmatched := _worst_unmatched(tiles, tissue & clear(), usable):  # one at a time: a good tile between
        findings[unmatched.tile] = unmatched  # two bad ones is cleared once they are named
    return [findings[tile] for tile in sorted(findings)], tissue


def _worst_unmatched(tiles: Sequence[tuple[tuple[int, int], tuple[int, int]]], candidates: np.ndarray,
                     usable: np.ndarray) -> TileFinding | None:
    """The tile that the most of its ``candidates`` pairs fail to place (by fraction, then count), when that is
    more than half of at least :data:`MIN_TILE_PAIRS`; None when no tile is."""
    outcomes: dict[tuple[int, int], list[bool]] = {}
    for k in map(int, np.flatnonzero(candidates)):
        for tile in tiles[k]:
            outcomes.setdefault(tile, []).append(bool(usable[k]))
    failing = [(placed.count(False) / len(placed), placed.count(False), tile) for tile, placed in outcomes.items()
               if len(placed) >= MIN_TILE_PAIRS and 2 * placed.count(False) > len(placed)]
    if not failing:
        return None
    _, failed, tile = max(failing, key=lambda entry: (entry[0], entry[1], [-v for v in entry[2]]))
    return TileFinding(tile=tile, problem="unmatched", detail=(
        f"{failed} of its {len(outcomes[tile])} pairs in tissue do not place it (skipped, rejected by the fit, "
        "or off the pooled model)"))


def pair_residuals(pairs: np.ndarray, transform: np.ndarray,
                   backlash: Sequence[float] | None = None) -> np.ndarray:
    """Residuals ``(n, 2)`` of a pair table's pairs against a motor model: measured displacement minus
    ``A @ [row_delta, col_delta]`` (dy, dx) px, less the backlash of the pairs that cross a row parity."""
    X, Y, _ = pair_arrays(pairs)
    residuals = Y - X @ np.asarray(transform, dtype=float).T
    if backlash is not None:
        residuals -= parity_steps(pairs)[:, None] * np.asarray(backlash, dtype=float)
    return residuals


def _fit_flags(entry: Mapping | None, n_pairs: int) -> np.ndarray | None:
    """The pooled fit's verdict on each pair of a slice (pairs it did not see count as kept); None when the
    model does not hold it for these pairs."""
    flags = None if entry is None else entry.get("pair_inliers")
    if not isinstance(flags, list) or len(flags) != n_pairs:
        return None
    return np.array([flag is not False for flag in flags], dtype=bool)


def agreement_px(diagnostics: Mapping) -> float:
    """How far (px) a pair's displacement may lie from the pooled model for the pair to place its tiles: the
    fit's outlier cutoff for a pair of full precision, at least :data:`AGREEMENT_FLOOR_PX`."""
    scale = diagnostics.get("robust_scale_px")
    return max(outlier_cutoff(max(float(scale), SCALE_FLOOR_PX)) if scale is not None else 0.0, AGREEMENT_FLOOR_PX)


def _pairs_evidence(pairs_file: PairsFile, pairs: np.ndarray, inliers: np.ndarray | None,
                    residuals: np.ndarray, agree_px: float) -> dict:
    """The evidence a slice's pairs give: coverage, residuals, failed pairs in tissue, tiles, overlap."""
    nx, ny = pairs_file.grid
    weights = pair_weights(pairs)
    kept = (weights > 0) & (inliers if inliers is not None else True)
    lengths = np.linalg.norm(residuals, axis=1)
    skipped = np.zeros(len(pairs_file.skipped), dtype=bool)
    tiles, tissue = tile_findings(np.concatenate([pairs, _as_table(pairs_file.skipped)]),
                                  np.concatenate([kept & (lengths <= agree_px), skipped]),
                                  pairs_file.stats.get("tiles_at_maximum"))
    failed = tissue & ~np.concatenate([kept, skipped])
    fitted = lengths[kept & tissue[:len(pairs)]]
    return {"n_usable": int((weights > 0).sum()), "n_expected": n_neighbour_pairs(nx, ny),
            "n_tissue_pairs": int(tissue.sum()), "n_failed_pairs": int(failed.sum()), "tiles": tuple(tiles),
            "residual_rms_px": float(np.sqrt(np.mean(fitted**2))) if fitted.size else None,
            "implied_overlap": implied_overlap([pairs_file.stats]), "nominal_overlap": pairs_file.overlap}


def status_file(verdicts: Mapping[int, SliceVerdict]) -> StatusFile:
    """The report's ``status.json`` content: each slice's status, reasons and named tiles."""
    return StatusFile({slice_id: SliceStatus(status=v.status, reasons=v.reasons, tiles=list(v.evidence.tiles))
                       for slice_id, v in sorted(verdicts.items())})


def judge(inputs: ReportInputs, stitched_problems: Mapping[int, str | None] | None = None) -> dict[int, SliceVerdict]:
    """Each slice's verdict from a run's files.

    Parameters
    ----------
    inputs : ReportInputs
        The motor model, pairs and comparisons, by slice id.
    stitched_problems : mapping of slice id to str or None, optional
        Why a slice has no usable stitched slice (None: it has one); only when stitched slices were given.

    Returns
    -------
    dict of int to SliceVerdict
        By slice id (:attr:`~linumpy_motor.qc.inputs.ReportInputs.slice_ids`).
    """
    diagnostics = inputs.transform.diagnostics
    A = np.asarray(inputs.transform.transform, dtype=float)
    verdicts = {}
    for slice_id in inputs.slice_ids:
        entry = inputs.per_slice.get(slice_id)
        compare = inputs.compare.get(slice_id)
        evidence: dict = {"slice_id": slice_id, "in_fit": entry is not None,
                          "drift_tolerance_px": diagnostics.get("drift_tolerance_px")}
        if stitched_problems is not None:
            evidence["stitched_problem"] = stitched_problems.get(slice_id) if slice_id in stitched_problems \
                else "no stitched slice"
        if entry is not None:
            evidence.update(fit_error=entry.get("fit_error"), drift_px=entry.get("drift_px"),
                            drift_flag=bool(entry.get("drift_flag")))
        if compare is not None:
            evidence["compare_flags"] = tuple(name for name, raised in sorted(compare.flags.items()) if raised)
        inliers = residuals = None
        pairs_file = inputs.pairs.get(slice_id)
        if pairs_file is not None:
            pairs = pairs_file.table()
            inliers = _fit_flags(entry, len(pairs))
            residuals = pair_residuals(pairs, A, inputs.transform.backlash)
            evidence.update(_pairs_evidence(pairs_file, pairs, inliers, residuals, agreement_px(diagnostics)),
                            fit_flags=inliers is not None)
            if overlap_problem(evidence["implied_overlap"] or {}, pairs_file.overlap):
                evidence["tiles"] = ()  # looked for in the wrong place, every tile would look bad
        status, reasons = slice_status(SliceEvidence(**evidence))
        verdicts[slice_id] = SliceVerdict(status, reasons, SliceEvidence(**evidence), inliers, residuals)
    return verdicts
