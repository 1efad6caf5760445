"""OCT intensities in any value range are measured like any other (issue 19, item 6): linear data shifted
below zero, dB (mostly negative), and data scaled by 1e10 or 1e37 (whose squares overflow float32).

Mosaics are cut from a real photograph by ``bench/realmosaic.py`` (which shares no code with the library
or ``linumpy_motor.synthetic``), with known tile positions; the pooled matrix must come within 1.5x of the
floor (the least-squares matrix of the true, jittered positions). An earlier version took all-negative
data for empty overlaps (no pair), found no tissue in dB data (2.3x the floor), and overflowed in the
correlation of huge values ("is --overlap right?", or a non-finite NCC in the pairs JSON).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from linumpy_motor.pipeline import runner
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.register.fit import fit_pooled
from linumpy_motor.register.measure import measure_volume

_spec = importlib.util.spec_from_file_location("realmosaic",
                                               Path(__file__).resolve().parents[1] / "bench" / "realmosaic.py")
rm = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("realmosaic", rm)
_spec.loader.exec_module(rm)

SPEC = rm.RealSpec(photo="ihc", nx=4, ny=5, tile_hw=(128, 128), nz=3, jitter_px=0.1)
RANGES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "negative": lambda v: v - v.max() - 1.0,  # every value below zero
    "dB": lambda v: 10 * np.log10(v + 1e-3),  # mostly negative
    "x1e10": lambda v: v * 1e10,
    "x1e37": lambda v: v * 1e37,
}


@pytest.fixture(scope="module")
def draw():
    """Two slices of the tissue-like photograph on one stage, and their floor."""
    return rm.make_draw(SPEC, seed=1, n_slices=2)


def _error(A: np.ndarray, draw) -> tuple[float, float]:
    return float(np.abs(A - draw.stage.A_true).max()), float(np.abs(draw.floor - draw.stage.A_true).max())


def _as(name: str, volume: np.ndarray) -> np.ndarray:
    values = RANGES[name](volume.astype(np.float64)).astype(np.float32)
    assert np.isfinite(values).all()
    return values


@pytest.mark.parametrize("name", list(RANGES))
def test_every_value_range_is_measured_within_1_5x_of_the_floor(draw, name):
    pairs = {}
    for n, s in enumerate(draw.slices):
        volume = _as(name, s.volume)

        def read(zs, rows, cols, volume=volume):
            return volume[zs, rows, cols]

        table, _, _ = measure_volume(read, (SPEC.nz, *SPEC.tile_hw), SPEC.nx, SPEC.ny, SPEC.overlap)
        assert np.isfinite(table["ncc"]).all()
        pairs[n] = table
    model, _ = fit_pooled(pairs, {n: (SPEC.nx, SPEC.ny) for n in pairs}, (SPEC.nz, *SPEC.tile_hw), SPEC.overlap)
    ours, floor = _error(model.matrix, draw)
    assert ours <= 1.5 * floor, f"{name}: {ours:.4f} px against a floor of {floor:.4f} px"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["dB", "x1e37"])
def test_the_runner_measures_stitches_and_reports_db_and_huge_values(draw, name, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for n, s in enumerate(draw.slices):
        rm.write_ome_zarr(data / f"mosaic_grid_3d_z{n:02d}.ome.zarr", _as(name, s.volume), SPEC.tile_hw)
    result = runner.run(data, tmp_path / "out", RunOptions(), progress=False)
    assert all(entry["status"] != "failed" for entry in result["status"].values()), result["status"]
    A = np.array(json.loads((tmp_path / "out" / "motor_transform.json").read_text())["transform"])
    ours, floor = _error(A, draw)
    assert ours <= 1.5 * floor, f"{name}: {ours:.4f} px against a floor of {floor:.4f} px"
