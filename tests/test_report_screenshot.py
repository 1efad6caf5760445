"""report.html as a browser shows it: a headless Chromium screenshot (skipped without Chromium:
``apt-get install -y chromium``)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from linumpy_motor import synthetic
from linumpy_motor.pipeline import runner
from linumpy_motor.qc.html import COLOURS

BROWSER = next((name for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None)
OFFLINE = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-breakpad", "--disable-quic",
           "--disable-background-networking", "--disable-component-update", "--disable-sync"]
"""A headless Chromium that asks the network for nothing: at its start it looks up Google's hosts for its updates,
sync and field trials, which a closed network refuses or, worse, leaves unanswered (and it is given no D-Bus
session to wait on: ``DBUS_SESSION_BUS_ADDRESS=disabled:``)."""
WIDTHS, HEIGHT = (1024, 1400), 6000
"""Window widths the page must fit (a laptop, a desktop), and a height that shows all of it."""
MARGIN_PX = 8  # the body's padding (1em = 16 px) leaves at least this much blank at the right edge
TAB_BLUE = (31, 119, 180)  # matplotlib's first colour: drawn in every plot of the report


def _count(rgb: np.ndarray, colour: tuple[int, int, int], tolerance: int = 6) -> int:
    return int(np.all(np.abs(rgb - np.array(colour)) <= tolerance, axis=-1).sum())


def _hex(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[k:k + 2], 16) for k in (1, 3, 5))


def _shot(report: str, width: int, path: Path) -> np.ndarray:
    """Chromium's screenshot of ``report``, ``width`` px wide. Chromium runs in a session of its own, its output
    on a file: at its time limit every process it started is killed, and none can keep the test waiting on a
    pipe (its helper processes may outlive the browser's main process, which is all a time limit of
    ``subprocess.run`` kills before it reads the pipes to their end)."""
    log = path.with_suffix(".log")
    with open(log, "wb") as output:
        command = [BROWSER, *OFFLINE, "--hide-scrollbars", f"--user-data-dir={path.parent / 'chromium'}",
                   f"--window-size={width},{HEIGHT}", f"--screenshot={path}", f"file://{report}"]
        browser = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=output, stderr=output,
                                   start_new_session=True, env={**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"})
        try:
            code = browser.wait(timeout=120)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(browser.pid, signal.SIGKILL)
            browser.wait()
    assert code == 0 and path.is_file(), f"{BROWSER} exited {code}:\n{log.read_text(errors='replace')[-2000:]}"
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"), dtype=int)


@pytest.mark.slow
@pytest.mark.skipif(BROWSER is None, reason="no Chromium: apt-get install -y chromium")
def test_report_renders_with_its_status_colours_and_plots_and_fits_narrow_windows(tmp_path):
    spec = synthetic.SyntheticSpec(nx=3, ny=4, tile_shape=(2, 96, 96), seed=3)
    synthetic.write_dataset(tmp_path / "data", spec, n_slices=2, save_scenes=False)
    result = runner.run(tmp_path / "data", tmp_path / "out", progress=False)
    for width in WIDTHS:
        rgb = _shot(result["report"], width, tmp_path / f"report_{width}.png")
        assert rgb.shape[:2] == (HEIGHT, width)
        assert _count(rgb, _hex(COLOURS["ok"][0])) > 500  # the green OK cells and banner
        assert _count(rgb, TAB_BLUE, tolerance=20) > 2000  # the PNG plots loaded (a broken image has no blue)
        text_rows = np.flatnonzero((rgb.sum(axis=-1) < 200).sum(axis=1) > 3)
        assert text_rows.size > 300  # text on many rows: the tables rendered
        # the page keeps its margin: nothing (the slice figures side by side, a long path) runs off it
        assert (rgb[:, -MARGIN_PX:] >= 250).all(), f"something is drawn in the right margin at {width} px"
