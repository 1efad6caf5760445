"""The QC report's figures (matplotlib, Agg, no pyplot state): one function per PNG."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from linumpy_motor.qc.outlines import corner_marks, tile_outlines
from linumpy_motor.register.geometry import model_positions, step_lengths

__all__ = ["DPI", "INLIER_COLOUR", "MIN_SPAN", "MODEL_PANELS", "OUTLIER_COLOUR", "at_least", "plot_model_per_slice",
           "plot_pair_residuals", "plot_residual_histogram", "plot_thumbnail"]

DPI = 90
INLIER_COLOUR = "tab:blue"
OUTLIER_COLOUR = "tab:red"
MODEL_PANELS = (
    ("theta_deg", "θ (deg)"),
    ("perpendicular_deviation_deg", "φ − 90° (deg)"),
    ("scale_y", "scale_y"),
    ("scale_x", "scale_x"),
)
MIN_SPAN = {"theta_deg": 0.1, "perpendicular_deviation_deg": 0.1, "scale_y": 0.002, "scale_x": 0.002, "drift_px": 1.0}
"""Smallest y-range of each per-slice panel, so a spread within measurement noise (0.01°, 1e-4 of a
step) is drawn flat instead of being stretched into an apparent trend."""


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 1})
    return path


def at_least(limits: tuple[float, float], span: float) -> tuple[float, float]:
    """``limits`` widened about their centre to at least ``span``."""
    low, high = limits
    if high - low >= span:
        return low, high
    centre = (low + high) / 2
    return centre - span / 2, centre + span / 2


def plot_model_per_slice(path: Path, per_slice: Mapping[int, dict], pooled: Mapping[str, float],
                         drift_tolerance_px: float | None) -> Path:
    """Each slice's own θ, φ deviation, scales and drift against the pooled model's.

    Parameters
    ----------
    path : Path
        PNG to write.
    per_slice : mapping of slice id to dict
        ``fit`` (the slice's own fit diagnostics, or None), ``drift_px`` and ``drift_flag``.
    pooled : mapping
        The pooled model's values of the :data:`MODEL_PANELS` keys.
    drift_tolerance_px : float or None
        Drawn on the drift panel.

    Notes
    -----
    Each panel's legend names only what it shows; a slice whose own fit failed is a red band (the
    legend says so when there is one), so the figure is drawn even when every per-slice fit failed.
    """
    ids = sorted(per_slice)
    drifting = [s for s in ids if per_slice[s].get("drift_flag") and per_slice[s].get("fit")]
    unfitted = [s for s in ids if not per_slice[s].get("fit")]
    fig = Figure(figsize=(7, 10), layout="constrained")
    axes = fig.subplots(len(MODEL_PANELS) + 1, 1, sharex=True)
    panels = [*MODEL_PANELS, ("drift_px", "drift (px)")]
    for ax, (key, label) in zip(axes, panels, strict=True):
        source = (lambda s: per_slice[s]) if key == "drift_px" else (lambda s: per_slice[s].get("fit") or {})
        values = {s: source(s).get(key) for s in ids}
        fitted = [s for s in ids if values[s] is not None]
        if fitted:
            ax.plot(fitted, [values[s] for s in fitted], "o-", color=INLIER_COLOUR, ms=4, label="slice's own fit")
        marked = [s for s in drifting if values[s] is not None]
        if marked:
            ax.plot(marked, [values[s] for s in marked], "o", ms=11, mfc="none", mec=OUTLIER_COLOUR, mew=2,
                    label="drifting slice")
        reference = drift_tolerance_px if key == "drift_px" else pooled.get(key)
        if reference is not None:
            ax.axhline(reference, color="k", ls="--", lw=1,
                       label="drift tolerance" if key == "drift_px" else "pooled model")
        for n, s in enumerate(unfitted):
            ax.axvspan(s - 0.15, s + 0.15, color=OUTLIER_COLOUR, alpha=0.25, lw=0,
                       label="own fit failed" if n == 0 else None)
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.ticklabel_format(axis="y", useOffset=False)
        ax.set_xlim(min(ids) - 0.5, max(ids) + 0.5)
        ax.set_ylim(*at_least(ax.get_ylim(), MIN_SPAN[key]))
        if ax is axes[0] or ax is axes[-1]:  # the first panel's legend serves the others, bar the drift panel's line
            ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1].set_xlabel("slice id")
    fig.suptitle("Per-slice motor model against the pooled model")
    return _save(fig, path)


def plot_residual_histogram(path: Path, residuals: np.ndarray, outliers: np.ndarray) -> Path:
    """Histogram of pair residual lengths against the pooled model, the pairs its fit rejected in their own colour."""
    residuals = np.asarray(residuals, dtype=float)
    outliers = np.asarray(outliers, dtype=bool)
    positive = residuals[residuals > 0]
    floor = max(float(positive.min()) / 1.5 if positive.size else 1e-2, 1e-3)
    edges = np.geomspace(floor, max(float(residuals.max(initial=0)), floor * 10) * 1.05, 41)
    clipped = np.clip(residuals, floor, None)
    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.subplots()
    groups = [(clipped[~outliers], INLIER_COLOUR, f"kept by the fit ({int((~outliers).sum())})"),
              (clipped[outliers], OUTLIER_COLOUR, f"rejected by the fit ({int(outliers.sum())})")]
    groups = [group for group in groups if group[0].size]
    ax.hist([g[0] for g in groups], bins=edges.tolist(), stacked=True, color=[g[1] for g in groups],
            label=[g[2] for g in groups])
    ax.set_xscale("log")
    ax.set_xlabel("|measured displacement − A @ [Δrow, Δcol]| (px)")
    ax.set_ylabel("pairs")
    ax.set_title("Pair residuals against the pooled model, all slices")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, path)


def plot_pair_residuals(path: Path, slice_id: int, pairs: np.ndarray, residuals: np.ndarray,
                        outliers: np.ndarray, transform: np.ndarray, grid: Sequence[int],
                        tile_hw: Sequence[int], named: Mapping[tuple[int, int], str] | None = None) -> Path:
    """Quiver of each pair's residual at the pair's midpoint over the slice's tile grid.

    Parameters
    ----------
    path : Path
        PNG to write.
    slice_id : int
        The slice (in the title).
    pairs : np.ndarray
        The slice's pair table (:data:`~linumpy_motor.io.records.PAIR_DTYPE`).
    residuals : np.ndarray
        ``(n, 2)`` residual (dy, dx) of each pair against the pooled model, in px.
    outliers : np.ndarray of bool
        Pairs the pooled fit rejected (drawn in red).
    transform : np.ndarray
        The pooled 2x2 matrix (places the tiles and the midpoints).
    grid : (nx, ny)
        Tile rows and columns.
    tile_hw : (h, w)
        Tile size.
    named : mapping of (row, column) to str, optional
        Tiles the QC verdict names, outlined in red with their problem written inside.

    Notes
    -----
    Arrows longer than 1.5 times the key's length are drawn that long, with their true length
    written beside them (the title says so when there is one).
    """
    A = np.asarray(transform, dtype=float)
    h, w = tile_hw
    outlines = tile_outlines(grid[0], grid[1], tile_hw, A)
    shift = model_positions(grid[0], grid[1], A).min(axis=0)  # as affine_positions shifts the canvas
    midpoints = pairs["tile"] + np.column_stack([pairs["row_delta"], pairs["col_delta"]]) / 2
    centres = midpoints @ A.T - shift + (h / 2, w / 2)
    residuals = np.asarray(residuals, dtype=float).reshape(-1, 2)
    lengths = np.linalg.norm(residuals, axis=1)
    inlier_lengths = lengths[~outliers]
    reference = max(float(np.percentile(inlier_lengths, 90)) if inlier_lengths.size else 1.0, 0.05)
    step = min(step_lengths(A))
    scale = reference / (0.3 * step)  # px of residual per canvas px: the reference is 30 % of a step
    longest = 1.5 * reference  # arrows are drawn at most this long; longer ones are labelled
    drawn = residuals * np.minimum(1.0, longest / np.maximum(lengths, 1e-12))[:, None]
    fig = Figure(figsize=(7, min(7 * (grid[0] * h) / max(grid[1] * w, 1) + 0.8, 12)), layout="constrained")
    ax = fig.subplots()
    ax.add_collection(LineCollection(list(outlines), colors="0.75", linewidths=0.8))
    for (i, j), problem in sorted((named or {}).items()):
        outline = outlines[i * grid[1] + j]
        ax.add_collection(LineCollection([outline], colors=OUTLIER_COLOUR, linewidths=2))
        ax.text(outline[:4, 0].mean(), outline[:4, 1].mean(), f"({i}, {j})\n{problem}", ha="center", va="center",
                fontsize=7, color=OUTLIER_COLOUR, bbox={"facecolor": "white", "alpha": 0.8, "lw": 0, "pad": 1})
    arrows = [
        ax.quiver(centres[mask, 1], centres[mask, 0], drawn[mask, 1], drawn[mask, 0], angles="xy",
                  scale_units="xy", scale=scale, color=colour, width=0.005, label=label)
        for mask, colour, label in ((~outliers, INLIER_COLOUR, "kept by the fit"),
                                    (outliers, OUTLIER_COLOUR, "rejected by the fit"))
        if mask.any()
    ]
    long = lengths > longest
    for (y, x), length in zip(centres[long], lengths[long], strict=True):
        ax.annotate(f"{length:.1f} px", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7,
                    color="k")
    if arrows:  # beside the plot, under the legend: nothing drawn over the title or the tiles
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
        ax.quiverkey(arrows[0], 1.04, 0.8, reference, f"{reference:.2g} px", labelpos="E", coordinates="axes",
                     fontproperties={"size": 8})
    ax.set_xlim(outlines[..., 0].min() - w * 0.1, outlines[..., 0].max() + w * 0.1)
    ax.set_ylim(outlines[..., 1].max() + h * 0.1, outlines[..., 1].min() - h * 0.1)
    ax.set_aspect("equal")
    ax.set_xlabel("x (px)")
    ax.set_ylabel("y (px)")
    title = f"Slice {slice_id}: pair residuals against the pooled model"
    if long.any():
        title += f"\n(arrows longer than {longest:.2g} px cut to that length, their length written beside them)"
    ax.set_title(title, loc="left", fontsize=10)
    return _save(fig, path)


def plot_thumbnail(path: Path, slice_id: int, plane: np.ndarray, extent_hw: Sequence[float],
                   outlines: np.ndarray | None) -> Path:
    """A stitched slice's plane with the motor model's tile corners marked over it.

    Parameters
    ----------
    plane : np.ndarray
        2-D image (a small pyramid level).
    extent_hw : (float, float)
        Height and width the plane covers in level-0 (canvas) pixels, so tile outlines given in
        canvas pixels land on the right place whatever the level's downsampling.
    outlines : np.ndarray or None
        ``(n, 5, 2)`` tile outlines in canvas (x, y) pixels (:func:`tile_outlines`), or None.
    """
    finite = plane[np.isfinite(plane)]
    low, high = (np.percentile(finite, (1, 99.5)) if finite.size else (0.0, 1.0))
    height, width = extent_hw
    fig = Figure(figsize=(7, min(7 * height / max(width, 1) + 0.6, 12)), layout="constrained")
    ax = fig.subplots()
    ax.imshow(np.nan_to_num(plane), cmap="gray", vmin=low, vmax=max(high, low + 1e-12),
              extent=(0, width, height, 0), interpolation="antialiased")
    if outlines is not None:  # corner ticks only: the seams between them stay visible
        ax.add_collection(LineCollection(list(corner_marks(outlines)), colors="yellow", linewidths=0.8, alpha=0.8))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.set_title(f"Slice {slice_id}: stitched, central plane" + (", tile corners" if outlines is not None else ""),
                 loc="left", fontsize=10)
    ax.set_xlabel("x (px, level 0)")
    ax.set_ylabel("y (px, level 0)")
    return _save(fig, path)
