"""The synthetic generator tells the truth, and the pooled motor fit recovers it end to end."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import DEFAULT_TILE, true_pair_displacement
from scipy import ndimage

from linumpy_motor.io.grid import open_mosaic
from linumpy_motor.mosaic import motor
from linumpy_motor.pipeline.cli import main
from linumpy_motor.register.correlation import ncc_at
from linumpy_motor.synthetic import SyntheticSpec, true_transform, vignetting_field


def test_true_transform_follows_the_design_conventions():
    spec = SyntheticSpec(theta_deg=2.0, perpendicular_deviation_deg=-1.2, scale=1.01, overlap=0.15)
    (a, b), (c, d) = true_transform(spec)
    step = 0.85 * 160 * 1.01
    assert math.hypot(a, c) == pytest.approx(step)
    assert math.hypot(b, d) == pytest.approx(step)
    theta = math.degrees(math.atan2(-b, d))
    assert theta == pytest.approx(2.0)
    assert math.degrees(math.atan2(a, c)) + theta == pytest.approx(88.8)


def test_defaults_are_the_issue_scenario():
    spec = SyntheticSpec()
    assert (spec.nx, spec.ny, spec.tile_shape[1:], spec.overlap) == (6, 7, (160, 160), 0.2)
    assert (spec.theta_deg, spec.perpendicular_deviation_deg, spec.jitter_px) == (1.5, 0.8, 0.3)
    assert spec.noise > 0 and spec.vignetting > 0


def test_tiles_are_sampled_at_the_truth_positions(synthetic_dataset_v05):
    """Each tissue tile matches the clean scene at its truth position better than 0.5 px beside it."""
    ds = synthetic_dataset_v05
    slice_id = ds.slice_ids[0]
    entry = ds.truth["slices"][str(slice_id)]
    scene = np.load(ds.root / entry["scene"])
    coefficients = ndimage.spline_filter(scene, order=3)
    origin = np.array(entry["scene_origin"])
    grid = open_mosaic(ds.path(slice_id))
    nz, h, w = grid.tile_shape
    plane = np.asarray(grid.array[nz // 2])
    vignette = vignetting_field((h, w), ds.spec.vignetting)
    yy, xx = np.mgrid[0:h, 0:w].astype(float)

    def scene_at(top_left):
        coords = [yy + origin[0] + top_left[0], xx + origin[1] + top_left[1]]
        return ndimage.map_coordinates(coefficients, coords, order=3, prefilter=False)

    checked = 0
    for k, position in enumerate(ds.positions(slice_id)):
        i, j = divmod(k, grid.ny)
        expected = scene_at(position)
        if expected.mean() < 0.5 * scene.mean():
            continue  # mostly background: nothing to compare
        checked += 1
        tile = plane[i * h:(i + 1) * h, j * w:(j + 1) * w] / vignette
        score = ncc_at(tile, expected, (0, 0))
        assert score > 0.95
        for offset in ((0.5, 0), (-0.5, 0), (0, 0.5), (0, -0.5)):
            assert ncc_at(tile, scene_at(position + offset), (0, 0)) < score
    assert checked >= 20


def test_positions_follow_the_motor_model_with_the_requested_jitter(synthetic_dataset_v05):
    ds = synthetic_dataset_v05
    ij = np.array([(i, j) for i in range(ds.spec.nx) for j in range(ds.spec.ny)], dtype=float)
    residuals = np.concatenate([ds.positions(s) - ij @ ds.transform.T for s in ds.slice_ids])
    assert np.std(residuals) == pytest.approx(ds.spec.jitter_px, rel=0.2)
    assert np.abs(residuals).max() < 5 * ds.spec.jitter_px


def test_bad_tiles_are_spoiled(synthetic_dataset_v05_bad_tiles):
    ds = synthetic_dataset_v05_bad_tiles
    for slice_id in ds.slice_ids:
        bad = ds.bad_tiles(slice_id)
        assert len(bad) == 2 and {kind for _, _, kind in bad} == {"background", "swap"}
        grid = open_mosaic(ds.path(slice_id))
        nz, h, w = grid.tile_shape
        plane = np.asarray(grid.array[nz // 2])
        tiles = {(i, j): plane[i * h:(i + 1) * h, j * w:(j + 1) * w] for i in range(grid.nx) for j in range(grid.ny)}
        tissue_level = np.median([t.mean() for t in tiles.values()])
        for i, j, kind in bad:
            if kind == "background":
                assert tiles[i, j].mean() < 0.2 * tissue_level
            else:
                twins = [key for key, t in tiles.items()
                         if key != (i, j) and np.corrcoef(t.ravel(), tiles[i, j].ravel())[0, 1] > 0.8]
                assert len(twins) == 1 and abs(twins[0][0] - i) + abs(twins[0][1] - j) > 2


def test_measured_pairs_match_the_true_displacements(synthetic_dataset_v05, synthetic_pairs_v05):
    """Sub-pixel pair measurement on OCT-like tiles: most pairs within 0.05 px of the truth."""
    ds = synthetic_dataset_v05
    errors = np.array([
        np.linalg.norm([p["measured_dy"], p["measured_dx"]] - true_pair_displacement(p, ds.positions(sid), ds.spec.ny))
        for sid, pairs in synthetic_pairs_v05.items() for p in pairs
    ])
    # all but the few pairs whose overlap is background only (skipped by the background test)
    assert 3 * (6 * 6 + 5 * 7) - 6 <= len(errors) <= 3 * (6 * 6 + 5 * 7)
    assert np.median(errors) < 0.04
    assert np.mean(errors < 0.1) > 0.9


def test_pooled_fit_recovers_the_motor_model(synthetic_dataset_v05):
    ds = synthetic_dataset_v05
    A, diagnostics = motor.pool_pairs_and_fit_global_affine(ds.volumes, ds.spec.overlap)
    assert A.shape == (2, 2)
    assert np.abs(A - ds.transform).max() <= 0.05
    model, ours = diagnostics["displacement_model"], diagnostics[motor.EXTRA_KEY]
    assert model["theta_deg"] == pytest.approx(ds.truth["theta_deg"], abs=0.05)
    assert model["phi_deg"] == pytest.approx(ds.truth["phi_deg"], abs=0.05)
    assert ours["perpendicular_deviation_deg"] == pytest.approx(ds.spec.perpendicular_deviation_deg, abs=0.05)
    assert model["Ox_fraction"] == pytest.approx(ds.spec.overlap, abs=0.001)
    assert model["Oy_fraction"] == pytest.approx(ds.spec.overlap, abs=0.001)
    assert diagnostics["backend"] == "cpu"
    marked = [entry["measurement"]["n_background"] for entry in ours["per_slice"]]
    assert diagnostics["n_pairs_pooled_total"] == 3 * 71 and sum(marked) <= 6  # every pair goes to the fit
    assert ours["drifting_slices"] == []
    assert [entry["slice_id"] for entry in ours["per_slice"]] == ds.slice_ids


def test_pooled_fit_rejects_wrong_pairs_from_bad_tiles(synthetic_dataset_v05_bad_tiles):
    ds = synthetic_dataset_v05_bad_tiles
    A, diagnostics = motor.pool_pairs_and_fit_global_affine(ds.volumes, ds.spec.overlap)
    assert np.abs(A - ds.transform).max() <= 0.08
    assert diagnostics["displacement_model"]["theta_deg"] == pytest.approx(ds.truth["theta_deg"], abs=0.05)
    assert diagnostics["displacement_model"]["phi_deg"] == pytest.approx(ds.truth["phi_deg"], abs=0.05)
    # each background or swapped tile spoils its (up to 4) pairs: about 8 wrong pairs per slice, marked by the
    # background test (no correlation better than chance) or rejected by the fit (weighted down by their NCC if not)
    ours = diagnostics[motor.EXTRA_KEY]
    marked = sum(entry["measurement"]["n_background"] for entry in ours["per_slice"])
    assert ours["n_outliers"] + marked >= 3 * 6
    assert ours["n_inliers"] + ours["n_outliers"] == ours["n_fitted_pairs"] == diagnostics["n_pairs_used"]
    assert diagnostics["backend"] == "cpu"


def test_pooled_fit_is_unbiased_under_a_stage_scale_error(make_synthetic_dataset):
    spec = SyntheticSpec(nx=4, ny=5, tile_shape=(1, 160, 160), scale=1.03, jitter_px=0.0, tissue_fraction=1.0)
    ds = make_synthetic_dataset(spec, n_slices=1)
    A, _ = motor.pool_pairs_and_fit_global_affine(ds.volumes, ds.spec.overlap)
    assert np.abs(A - ds.transform).max() <= 0.03


def test_a_slice_with_another_motor_model_is_flagged_as_drifting(synthetic_dataset_v05, make_synthetic_dataset):
    """A slice acquired with θ = 2.5° (tiles ~3 px off at the grid corners) among θ = 1.5° slices."""
    other = make_synthetic_dataset(SyntheticSpec(tile_shape=DEFAULT_TILE, theta_deg=2.5), n_slices=1, first_slice=9)
    volumes = synthetic_dataset_v05.volumes + other.volumes
    A, diagnostics = motor.pool_pairs_and_fit_global_affine(volumes, 0.2, drift_tolerance_px=1.0)
    assert diagnostics[motor.EXTRA_KEY]["drifting_slices"] == [9]
    assert np.abs(A - synthetic_dataset_v05.transform).max() <= 0.1
    drift = {e["slice_id"]: e["drift_px"] for e in diagnostics[motor.EXTRA_KEY]["per_slice"]}
    # true disagreement of the two models at the corners of the 6x7 grid, centred on its middle
    corners = np.array([[i, j] for i in (-2.5, 2.5) for j in (-3.0, 3.0)])
    expected = np.linalg.norm(corners @ (other.transform - synthetic_dataset_v05.transform).T, axis=1).max()
    assert expected > 5
    assert drift[9] == pytest.approx(expected, abs=0.5)
    assert all(drift[s] < 0.5 for s in synthetic_dataset_v05.slice_ids)


@pytest.mark.parametrize("arguments, problem", [
    (["--grid", "0", "3"], "grid [0, 3] and tile shape"), (["--tile", "0", "16", "16"], "must be >= 1"),
    (["--jitter", "nan"], "jitter must be a finite number"), (["--theta", "inf"], "theta must be a finite number"),
    (["--noise", "-1"], "noise must be >= 0"), (["--bad-tiles", "100"], "bad tiles must be in [0, 9]"),
    (["--seed", "-5"], "the seed >= 0"), (["--slices", "0"], "the number of slices must be >= 1"),
])
def test_synth_refuses_an_impossible_acquisition_in_one_line(tmp_path, capsys, arguments, problem):
    assert main(["synth", str(tmp_path / "out"), "--grid", "3", "3", "--tile", "2", "32", "32", *arguments]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and problem in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()
