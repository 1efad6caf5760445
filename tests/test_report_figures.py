"""The QC report's figures say what they show: legend entries only for what is drawn, a legend off the
bars, long arrows explained, the per-slice plot drawn even when every slice's own fit failed."""

from __future__ import annotations

import numpy as np

from linumpy_motor.io.outputs import write_json
from linumpy_motor.io.records import pair_table
from linumpy_motor.qc import plots
from linumpy_motor.qc.report import write_report


def _figures(monkeypatch) -> list:
    """The figures the report's plot functions draw, captured instead of saved."""
    drawn: list = []
    monkeypatch.setattr(plots, "_save", lambda figure, path: drawn.append(figure) or path)
    return drawn


def _legend(ax) -> list[str]:
    legend = ax.get_legend()
    return [] if legend is None else [text.get_text() for text in legend.get_texts()]


def test_model_panels_name_only_what_they_show(monkeypatch, tmp_path):
    drawn = _figures(monkeypatch)
    fit_0 = {"theta_deg": 1.5, "perpendicular_deviation_deg": 0.8, "scale_y": 1.0, "scale_x": 1.0}
    per_slice = {0: {"fit": fit_0, "drift_px": 0.2, "drift_flag": False},
                 1: {"fit": fit_0, "drift_px": 0.3, "drift_flag": False}}
    plots.plot_model_per_slice(tmp_path / "m.png", per_slice, fit_0, 1.0)
    axes = drawn[-1].axes
    assert _legend(axes[0]) == ["slice's own fit", "pooled model"]
    assert _legend(axes[-1]) == ["slice's own fit", "drift tolerance"]  # the drift panel's line is the tolerance
    assert all(_legend(ax) == [] for ax in axes[1:-1])
    per_slice[1] = {"fit": None, "fit_error": "too few pairs", "drift_px": None, "drift_flag": False}
    per_slice[2] = {"fit": fit_0, "drift_px": 1.5, "drift_flag": True}
    plots.plot_model_per_slice(tmp_path / "m.png", per_slice, fit_0, 1.0)
    assert _legend(drawn[-1].axes[-1]) == ["slice's own fit", "drifting slice", "drift tolerance", "own fit failed"]


def test_the_model_plot_is_drawn_when_every_slice_fit_failed(tmp_path):
    failed = {"fit": None, "fit_error": "too few usable pairs", "drift_px": None, "drift_flag": False}
    transform = tmp_path / "t.json"
    write_json(transform, {"transform": [[64.0, 0.0], [0.0, 64.0]],
                           "diagnostics": {"per_slice": {"0": failed, "1": failed}, "drifting_slices": [],
                                           "failed_fit_slices": [0, 1]}})
    page = write_report(tmp_path / "r", transform, []).read_text()
    assert '<img src="model_per_slice.png"' in page and (tmp_path / "r" / "model_per_slice.png").is_file()
    assert "<th>drifting slices</th><td>none</td>" in page
    assert "<th>slices whose own fit failed</th><td>0, 1</td>" in page


def test_the_histogram_legend_stays_off_the_bars(monkeypatch, tmp_path):
    drawn = _figures(monkeypatch)
    lengths = np.r_[np.full(50, 0.3), np.full(3, 8.0)]
    plots.plot_residual_histogram(tmp_path / "h.png", lengths, lengths > 1)
    figure = drawn[-1]
    figure.canvas.draw()
    ax = figure.axes[0]
    legend, frame = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= frame.x1  # beside the plot, over no bar
    assert _legend(ax) == ["kept by the fit (50)", "rejected by the fit (3)"]
    plots.plot_residual_histogram(tmp_path / "h.png", lengths[:50], np.zeros(50, bool))
    assert _legend(drawn[-1].axes[0]) == ["kept by the fit (50)"]  # no entry for what is not there


def test_long_residual_arrows_are_explained_and_named_tiles_outlined(monkeypatch, tmp_path):
    drawn = _figures(monkeypatch)
    A = np.array([[64.0, 0.0], [0.0, 64.0]])
    pairs = pair_table([{"tile": [0, 0], "row_delta": 0, "col_delta": 1, "measured_dy": 0.1, "measured_dx": 64.1},
                        {"tile": [0, 1], "row_delta": 0, "col_delta": 1, "measured_dy": 0.0, "measured_dx": 68.0}])
    residuals = np.array([[0.1, 0.1], [0.0, 4.0]])
    plots.plot_pair_residuals(tmp_path / "q.png", 3, pairs, residuals, np.array([False, True]), A, (1, 3), (80, 80),
                              {(0, 2): "blank"})
    ax = drawn[-1].axes[0]
    assert "cut to that length, their length written beside them" in ax.get_title(loc="left")
    texts = [t.get_text() for t in ax.texts]
    assert "4.0 px" in texts and "(0, 2)\nblank" in texts
    assert _legend(ax) == ["kept by the fit", "rejected by the fit"]
