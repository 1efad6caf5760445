"""The real-image benchmark's generator (bench/realmosaic.py) keeps its promises about the truth.

The benchmark is only a yardstick if its truth is right: tiles really sit at the stated sub-pixel
positions, A_true carries the drawn θ and scale, and the floors are what they say. These checks use
SciPy's spline shifts and plain least squares, not the library under test.
"""

from __future__ import annotations

import math
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import realmosaic as rm  # noqa: E402

SMALL = rm.RealSpec(photo="gravel", nx=3, ny=3, tile_hw=(64, 80), nz=2, overlap=0.25)
CLEAN = replace(SMALL, noise=0.0, tile_speckle=0.0, vignetting=0.0)


def _tile(volume: np.ndarray, z: int, i: int, j: int, hw: tuple[int, int]) -> np.ndarray:
    h, w = hw
    return volume[z, i * h:(i + 1) * h, j * w:(j + 1) * w]


def test_stage_matrix_carries_the_drawn_angle_and_scale():
    stage = rm.draw_stage(SMALL, np.random.default_rng(3))
    (a, b), (c, d) = stage.A_true
    step_y, step_x = SMALL.nominal_steps
    assert math.degrees(math.atan2(-b, d)) == pytest.approx(stage.theta_deg, abs=1e-9)
    assert math.degrees(math.atan2(a, c)) + stage.theta_deg == pytest.approx(90 - stage.skew_deg, abs=1e-9)
    assert math.hypot(b, d) / step_x == pytest.approx(stage.scale[1])
    assert np.all((np.abs(stage.scale - 1) >= 0.02) & (np.abs(stage.scale - 1) <= 0.03))
    assert abs(stage.theta_deg) <= 3


def test_tiles_sit_at_their_true_subpixel_positions():
    """Each neighbour's overlap equals this tile's, moved by the true displacement; not by a nearby one."""
    draw = rm.make_draw(CLEAN, seed=5, n_slices=1)
    tile_slice = draw.slices[0]
    truth = rm.true_pair_displacements(tile_slice.positions, CLEAN.nx, CLEAN.ny)
    h, w = CLEAN.tile_hw
    for (i, j, di, dj), (dy, dx) in truth.items():
        a = _tile(tile_slice.volume, 0, i, j, CLEAN.tile_hw).astype(float)
        b = _tile(tile_slice.volume, 0, i + di, j + dj, CLEAN.tile_hw).astype(float)
        oy, ox = int(round(dy)), int(round(dx))  # whole pixels: crop the overlap
        top, left = max(oy, 0), max(ox, 0)
        win_a = a[top:h + min(oy, 0), left:w + min(ox, 0)]
        win_b = b[top - oy:top - oy + win_a.shape[0], left - ox:left - ox + win_a.shape[1]]

        def mismatch(fy: float, fx: float) -> float:
            moved = ndimage.shift(win_a, (-fy, -fx), order=3, mode="nearest")  # moved(r) = win_a(r + f)
            return float(np.mean((moved - win_b)[4:-4, 4:-4] ** 2))

        fy, fx = dy - oy, dx - ox
        at_truth = mismatch(fy, fx)
        assert at_truth < 0.05 * min(mismatch(fy + 0.25, fx), mismatch(fy, fx + 0.25), mismatch(fy - 0.25, fx - 0.25))


def test_floor_is_exact_without_jitter_and_ignores_bumps_and_backlash():
    spec = replace(SMALL, nx=4, jitter_px=0.0, n_bumped=2, backlash_px=3.0)
    draw = rm.make_draw(spec, seed=2, n_slices=2)
    assert sum(s.bumped.sum() for s in draw.slices) == 4
    np.testing.assert_allclose(draw.floor, draw.stage.A_true, atol=1e-9)
    _, backlash = rm.floor_transform([s.positions for s in draw.slices], spec.nx, spec.ny,
                                     keep=[~s.bumped for s in draw.slices], backlash=True)
    np.testing.assert_allclose(backlash, draw.stage.backlash, atol=1e-9)
    assert abs(draw.stage.backlash[1]) == 3.0
    # a plain affine absorbs part of the backlash: its floor is off
    assert np.abs(draw.floor_affine - draw.stage.A_true).max() > 0.1


def test_floor_with_jitter_is_near_the_truth():
    draw = rm.make_draw(replace(SMALL, jitter_px=0.3), seed=4, n_slices=2)
    error = np.abs(draw.floor - draw.stage.A_true).max()
    assert 0 < error < 0.5


def test_data_contract_determinism_and_background():
    spec = replace(SMALL, tissue_fraction=0.4, nx=4, ny=4)
    one = rm.make_draw(spec, seed=7, n_slices=1).slices[0]
    again = rm.make_draw(spec, seed=7, n_slices=1).slices[0]
    other = rm.make_draw(spec, seed=8, n_slices=1).slices[0]
    assert one.volume.shape == (2, 4 * 64, 4 * 80) and one.volume.dtype == np.float32
    np.testing.assert_array_equal(one.volume, again.volume)
    assert not np.array_equal(one.volume, other.volume)
    assert one.volume.min() > 0  # agarose is low but never exactly zero
    assert 0.2 < one.tissue.mean() < 0.6
    agarose = [k for k in range(16) if one.tissue[k] < 0.05]
    tissue = [k for k in range(16) if one.tissue[k] > 0.95]
    assert agarose and tissue
    mean_of = lambda k: _tile(one.volume, 0, *divmod(k, 4), SMALL.tile_hw).mean()  # noqa: E731
    assert max(mean_of(k) for k in agarose) < 0.5 * min(mean_of(k) for k in tissue)


def test_deeper_planes_are_dimmer_and_blurrier():
    volume = rm.make_draw(replace(CLEAN, nz=4), seed=1, n_slices=1).slices[0].volume
    means = volume.mean(axis=(1, 2))
    detail = np.abs(np.diff(volume, axis=2)).mean(axis=(1, 2)) / means
    assert np.all(np.diff(means) < 0) and np.all(np.diff(detail) < 0)


def test_upstream_style_store_opens_with_the_tile_grid(tmp_path):
    from linumpy_motor.io.grid import open_mosaic

    volume = rm.make_draw(SMALL, seed=3, n_slices=1).slices[0].volume
    path = rm.write_ome_zarr(tmp_path / "mosaic_grid_3d_z03.ome.zarr", volume, SMALL.tile_hw, tiles_per_shard=2)
    grid = open_mosaic(path)
    assert (grid.nx, grid.ny, grid.tile_shape) == (3, 3, (2, 64, 80))
    assert not list(tmp_path.glob(".*tmp*"))
