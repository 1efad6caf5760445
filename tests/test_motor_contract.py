"""The façade's contract: what a caller of upstream's ``linumpy.mosaic.motor`` relies on.

Written from upstream's documentation (``tests/data/linumpy_mosaic_motor_api.txt``) and its documented
behaviour (issue 20: rounding, fallbacks, key sets, side effects, logger); the numbers may be better,
nothing else may differ. Upstream's own test file and scripts are run against the façade outside this
repository (docs/usage.md, "The library: a drop-in for linumpy.mosaic.motor").
"""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
from conftest import SMALL, grid_positions, pairs_from_positions

from linumpy_motor.io import ngff
from linumpy_motor.mosaic import motor
from linumpy_motor.synthetic import SyntheticSpec, true_transform

A_TRUE = true_transform(SyntheticSpec())
PAIR_KEYS = {"row_delta", "col_delta", "measured_dy", "measured_dx"}
STATS_KEYS = {"total_pairs", "valid_pairs", "clamped_pairs", "mean_refinement", "max_refinement"}
MODEL_KEYS = {"theta_deg", "phi_deg", "Ox_fraction", "Oy_fraction", "expected_overlap", "off_diagonal_px", "transform"}
POOL_KEYS = {"n_volumes", "n_pairs_pooled_total", "n_pairs_used", "tile_shape", "overlap_fraction", "histogram_match",
             "max_empty_fraction", "sampled_n", "seed", "backend", "transform", "displacement_model", "lstsq_residual",
             "fallback", "per_slice_stats"}


# -- compute_motor_positions -----------------------------------------------------------------------


def test_motor_steps_are_truncated_not_rounded():
    positions, step_y, step_x = motor.compute_motor_positions(2, 3, (1, 155, 155), 0.1)
    assert (step_y, step_x) == (139, 139)  # 139.5 truncated
    assert positions == [(i * 139, j * 139) for i in range(2) for j in range(3)]
    assert all(type(v) is int for p in positions for v in p)


def test_the_scale_factor_multiplies_the_truncated_step_and_is_truncated_again():
    _, step_y, step_x = motor.compute_motor_positions(2, 2, (1, 101, 97), 0.15, scale_factor=1.02)
    assert (step_y, step_x) == (int(85 * 1.02), int(82 * 1.02)) == (86, 83)


def test_a_rotation_turns_the_grid_about_the_first_tile_and_truncates_toward_zero():
    positions, step_y, step_x = motor.compute_motor_positions(3, 4, (1, 100, 100), 0.2, rotation_deg=30.0)
    angle = math.radians(30.0)
    for k, position in enumerate(positions):
        i, j = divmod(k, 4)
        assert isinstance(position, np.ndarray) and position.dtype.kind == "i"
        row = math.cos(angle) * i * step_y - math.sin(angle) * j * step_x
        col = math.sin(angle) * i * step_y + math.cos(angle) * j * step_x
        assert position.tolist() == [math.trunc(row), math.trunc(col)]
    assert positions[0].tolist() == [0, 0]
    assert min(p[0] for p in positions) < 0  # not shifted to a zero minimum


# -- compute_registration_refinements --------------------------------------------------------------


def test_refinements_have_upstreams_keys_types_and_order(small_slice):
    volume, truth = small_slice
    result = motor.compute_registration_refinements(volume, SMALL.tile_shape, 3, 4, 0.2)
    assert set(result) == {"horizontal", "vertical", "pairs", "stats"}
    assert set(result["stats"]) == STATS_KEYS
    assert set(result["horizontal"]) == {(i, j) for i in range(3) for j in range(3)}
    assert set(result["vertical"]) == {(i, j) for i in range(2) for j in range(4)}
    assert all(set(r) == {"dx", "dy"} for r in [*result["horizontal"].values(), *result["vertical"].values()])
    assert all(isinstance(p, dict) and set(p) == PAIR_KEYS for p in result["pairs"])
    assert [p["col_delta"] for p in result["pairs"]] == [1] * 9 + [0] * 8  # horizontal pairs first
    assert result["stats"]["total_pairs"] == result["stats"]["valid_pairs"] == 17
    json.dumps(result["pairs"])
    json.dumps(result["stats"])


def test_pairs_are_absolute_and_residuals_are_the_pairs_less_the_nominal_step(small_slice):
    volume, truth = small_slice
    result = motor.compute_registration_refinements(volume, SMALL.tile_shape, 3, 4, 0.2)
    step = 160 * (1 - 0.2)
    pairs = iter(result["pairs"])
    for (i, j), residual in result["horizontal"].items():
        pair = next(pairs)
        true = truth[i * 4 + j + 1] - truth[i * 4 + j]
        assert (pair["measured_dy"], pair["measured_dx"]) == pytest.approx(tuple(true), abs=0.15)
        assert (residual["dy"], residual["dx"]) == pytest.approx((pair["measured_dy"], pair["measured_dx"] - step))
    for (i, j), residual in result["vertical"].items():
        pair = next(pairs)
        true = truth[(i + 1) * 4 + j] - truth[i * 4 + j]
        assert (pair["measured_dy"], pair["measured_dx"]) == pytest.approx(tuple(true), abs=0.15)
        assert (residual["dy"], residual["dx"]) == pytest.approx((pair["measured_dy"] - step, pair["measured_dx"]))
    lengths = [math.hypot(r["dy"], r["dx"]) for r in [*result["horizontal"].values(), *result["vertical"].values()]]
    assert result["stats"]["mean_refinement"] == pytest.approx(np.mean(lengths))
    assert result["stats"]["max_refinement"] == pytest.approx(max(lengths))


def test_a_long_residual_is_scaled_to_the_limit_in_its_direction_and_counted(small_slice):
    volume, _ = small_slice
    free = motor.compute_registration_refinements(volume, SMALL.tile_shape, 3, 4, 0.2)
    limit = 2.0  # the 1.5 degree rotation puts about 3.3 px across each horizontal step
    clamped = motor.compute_registration_refinements(volume, SMALL.tile_shape, 3, 4, 0.2, limit)
    long = 0
    for direction in ("horizontal", "vertical"):
        for key, before in free[direction].items():
            after, length = clamped[direction][key], math.hypot(before["dy"], before["dx"])
            if length > limit:
                long += 1
                assert math.hypot(after["dy"], after["dx"]) == pytest.approx(limit)
                assert after["dy"] * before["dx"] == pytest.approx(after["dx"] * before["dy"])  # same direction
            else:
                assert after == before
    assert long > 0 and clamped["stats"]["clamped_pairs"] == long
    assert clamped["pairs"] == free["pairs"]  # the absolute displacements are not clamped
    assert clamped["stats"]["max_refinement"] == free["stats"]["max_refinement"]


def test_empty_overlaps_are_not_pairs():
    result = motor.compute_registration_refinements(np.zeros((2, 160, 240)), (2, 80, 80), 2, 3, 0.2)
    assert result["pairs"] == [] and result["horizontal"] == {} and result["vertical"] == {}
    assert result["stats"] == {"total_pairs": 0, "valid_pairs": 0, "clamped_pairs": 0, "mean_refinement": 0.0,
                               "max_refinement": 0.0}


@pytest.mark.parametrize("planes", [1, 5])
def test_the_volumes_planes_are_measured_whatever_tile_shape_0_says(small_slice, planes):
    """Upstream's scripts pass one plane with the chunk's depth as tile_shape[0] (8 here)."""
    volume, _ = small_slice
    stack = np.repeat(volume[1:2], planes, axis=0)
    result = motor.compute_registration_refinements(stack, (8, 160, 160), 3, 4, 0.2)
    assert result["stats"]["valid_pairs"] == 17


# -- estimate_affine_from_pairs --------------------------------------------------------------------


def test_no_pairs_is_the_nominal_model_with_upstreams_fallback_diagnostics():
    with pytest.warns(UserWarning, match="no pairs"):
        transform, diagnostics = motor.estimate_affine_from_pairs([], (3, 100, 80), 0.2)
    assert transform.tolist() == [[80.0, 0.0], [0.0, 64.0]]
    assert diagnostics == {"fallback": True, "reason": "no pairs"}


def test_too_few_pairs_are_fitted_by_least_squares_as_upstream_does():
    pairs = [{"row_delta": 0, "col_delta": 1, "measured_dy": 2.0, "measured_dx": 130.0},
             {"row_delta": 1, "col_delta": 0, "measured_dy": 127.0, "measured_dx": -1.5}]
    with pytest.warns(UserWarning, match="least squares"):
        transform, diagnostics = motor.estimate_affine_from_pairs(pairs, (3, 160, 160), 0.2)
    np.testing.assert_allclose(transform, [[127.0, 2.0], [-1.5, 130.0]], atol=1e-9)
    assert diagnostics["fallback"] is False and diagnostics["n_pairs"] == 2
    assert diagnostics["lstsq_residual"] == 0.0
    assert diagnostics[motor.EXTRA_KEY]["method"] == "least squares"
    assert "too few usable pairs" in diagnostics[motor.EXTRA_KEY]["warning"]


def test_one_direction_only_gives_upstreams_singular_minimum_norm_fit():
    pairs = [{"row_delta": 0, "col_delta": 1, "measured_dy": 2.0, "measured_dx": 130.0}] * 4
    with pytest.warns(UserWarning):
        transform, diagnostics = motor.estimate_affine_from_pairs(pairs, (3, 160, 160), 0.2)
    np.testing.assert_allclose(transform, [[0.0, 2.0], [0.0, 130.0]], atol=1e-9)
    assert diagnostics["fallback"] is False


def test_enough_pairs_are_fitted_robustly():
    rng = np.random.default_rng(3)
    pairs = pairs_from_positions(grid_positions(A_TRUE, 6, 7), 6, 7)
    bare = [{key: p[key] for key in PAIR_KEYS} for p in pairs]
    for k in rng.choice(len(bare), 12, replace=False):  # 17 % gross outliers
        bare[k]["measured_dx"] += rng.uniform(5, 30)
    transform, diagnostics = motor.estimate_affine_from_pairs(bare, (3, 160, 160), 0.2)
    assert np.abs(transform - A_TRUE).max() < 1e-6
    plain = np.linalg.lstsq([[p["row_delta"], p["col_delta"]] for p in bare],
                            [[p["measured_dy"], p["measured_dx"]] for p in bare], rcond=None)[0].T
    assert np.abs(plain - A_TRUE).max() > 0.5  # what upstream's least squares would have returned
    assert MODEL_KEYS | {"n_pairs", "lstsq_residual", "fallback", motor.EXTRA_KEY} == set(diagnostics)
    residuals = [(p["measured_dy"], p["measured_dx"]) - transform @ (p["row_delta"], p["col_delta"]) for p in bare]
    assert diagnostics["lstsq_residual"] == pytest.approx(float(np.sum(np.square(residuals))))
    assert diagnostics[motor.EXTRA_KEY]["method"] == "robust"
    assert diagnostics[motor.EXTRA_KEY]["n_outliers"] == 12
    assert json.loads(json.dumps(diagnostics)) == diagnostics


def test_measured_pairs_keep_their_tiles_for_the_fit_copies_do_not(small_slice):
    volume, _ = small_slice
    pairs = motor.compute_registration_refinements(volume, SMALL.tile_shape, 3, 4, 0.2)["pairs"]
    _, measured = motor.estimate_affine_from_pairs(pairs, SMALL.tile_shape, 0.2)
    _, copied = motor.estimate_affine_from_pairs([dict(p) for p in pairs], SMALL.tile_shape, 0.2)
    assert measured[motor.EXTRA_KEY]["position_stage"] is not None  # the tiles' positions were solved
    assert copied[motor.EXTRA_KEY]["position_stage"] is None
    pooled = pairs + pairs  # two slices' pairs in one list: the same tiles twice
    _, twice = motor.estimate_affine_from_pairs(pooled, SMALL.tile_shape, 0.2)
    assert twice[motor.EXTRA_KEY]["position_stage"] is None


def test_displacement_parameters_follow_upstreams_conventions():
    params = motor._extract_displacement_params(np.array([[128.0, -4.0], [2.0, 130.0]]), (3, 160, 170), 0.2)
    assert set(params) == MODEL_KEYS
    assert params["theta_deg"] == pytest.approx(math.degrees(math.atan2(4.0, 130.0)))
    assert params["phi_deg"] == pytest.approx(math.degrees(math.atan2(128.0, 2.0) + math.atan2(4.0, 130.0)))
    assert params["Ox_fraction"] == pytest.approx(1 - math.hypot(4, 130) / 170)
    assert params["Oy_fraction"] == pytest.approx(1 - math.hypot(128, 2) / 160)
    assert params["off_diagonal_px"] == [-4.0, 2.0] and params["transform"] == [[128.0, -4.0], [2.0, 130.0]]
    assert params["expected_overlap"] == 0.2
    flipped = motor._extract_displacement_params(np.array([[-128.0, 0.0], [0.0, 0.0]]), (3, 160, 160), 0.2)
    assert (flipped["theta_deg"], flipped["phi_deg"]) == (0.0, 90.0)  # upstream's reading of zero steps


# -- pool_pairs_and_fit_global_affine --------------------------------------------------------------


def test_the_pooled_fit_has_upstreams_diagnostics(synthetic_dataset_small):
    volumes = [(f"{sid:02d}", path) for sid, path in synthetic_dataset_small.volumes]
    transform, diagnostics = motor.pool_pairs_and_fit_global_affine(volumes, 0.2)
    assert set(diagnostics) == POOL_KEYS | {motor.EXTRA_KEY}
    assert np.abs(transform - synthetic_dataset_small.transform).max() < 0.1
    assert diagnostics["transform"] == transform.tolist()
    assert diagnostics["displacement_model"] == motor._extract_displacement_params(transform, (3, 96, 128), 0.2)
    assert (diagnostics["n_volumes"], diagnostics["tile_shape"], diagnostics["backend"]) == (2, [3, 96, 128], "cpu")
    assert (diagnostics["sampled_n"], diagnostics["seed"], diagnostics["fallback"]) == (None, None, False)
    assert diagnostics["n_pairs_used"] == diagnostics["n_pairs_pooled_total"] == 2 * (3 * 1 + 2 * 2)
    assert [s["slice_id"] for s in diagnostics["per_slice_stats"]] == ["00", "01"]
    assert all(set(s) == STATS_KEYS | {"slice_id", "nx", "ny"} and (s["nx"], s["ny"]) == (3, 2)
               for s in diagnostics["per_slice_stats"])
    assert isinstance(diagnostics["lstsq_residual"], float)
    json.dumps(diagnostics)  # upstream's script writes them with the json module's defaults


def test_the_pooled_sub_sample_is_upstreams_and_reproducible(synthetic_dataset_small):
    volumes = synthetic_dataset_small.volumes
    with pytest.warns(UserWarning):  # 5 pairs are too few for the robust fit
        first, diagnostics = motor.pool_pairs_and_fit_global_affine(volumes, 0.2, n_samples=5, seed=3)
        again, _ = motor.pool_pairs_and_fit_global_affine(volumes, 0.2, n_samples=5, seed=3)
    np.testing.assert_array_equal(first, again)
    assert (diagnostics["n_pairs_used"], diagnostics["sampled_n"], diagnostics["seed"]) == (5, 5, 3)


def test_a_grid_of_another_tile_size_is_skipped_with_a_warning(tmp_path, synthetic_dataset_small):
    odd = tmp_path / "mosaic_grid_3d_z09.ome.zarr"
    ngff.write_image(odd, np.ones((2, 256, 384), np.float32), chunks=(2, 128, 128))
    with pytest.warns(UserWarning, match="skipped"):
        _, diagnostics = motor.pool_pairs_and_fit_global_affine([*synthetic_dataset_small.volumes, (9, odd)], 0.2)
    assert diagnostics["n_volumes"] == 2 and 9 not in [s["slice_id"] for s in diagnostics["per_slice_stats"]]


def test_grids_without_pairs_give_the_nominal_model(tmp_path):
    empty = tmp_path / "mosaic_grid_3d_z17.ome.zarr"
    ngff.write_image(empty, np.zeros((3, 480, 640), np.float32), chunks=(3, 160, 160))
    with pytest.warns(UserWarning, match="no pairs"):
        transform, diagnostics = motor.pool_pairs_and_fit_global_affine([("17", empty)], 0.2)
    assert transform.tolist() == [[128.0, 0.0], [0.0, 128.0]]
    assert (diagnostics["fallback"], diagnostics["lstsq_residual"], diagnostics["n_pairs_pooled_total"]) == \
        (True, None, 0)


def test_a_repeated_slice_id_is_pooled_with_a_warning(synthetic_dataset_small):
    (_, first), (_, second) = synthetic_dataset_small.volumes
    with pytest.warns(UserWarning, match="given twice"):
        _, diagnostics = motor.pool_pairs_and_fit_global_affine([(0, first), (0, second)], 0.2)
    assert [s["slice_id"] for s in diagnostics["per_slice_stats"]] == [0, 0]


def test_no_usable_grid_is_a_value_error():
    with pytest.raises(ValueError):
        motor.pool_pairs_and_fit_global_affine([], 0.2)


def test_a_single_plane_grid_is_pooled(tmp_path, small_slice):
    volume, _ = small_slice
    store = tmp_path / "mosaic_grid_z03.ome.zarr"
    ngff.write_image(store, volume[1:2], chunks=(1, 160, 160))
    transform, diagnostics = motor.pool_pairs_and_fit_global_affine([("03", store)], 0.2)
    assert diagnostics["per_slice_stats"][0]["valid_pairs"] == 17
    assert np.abs(transform - true_transform(SMALL)).max() < 0.2


# -- placing tiles ---------------------------------------------------------------------------------


def test_affine_positions_start_at_tile_0_0_and_round_halves_to_even():
    A = np.array([[100.5, -2.5], [1.5, 99.5]])
    positions = motor.compute_affine_positions(2, 3, A)
    expected = [(round(100.5 * i - 2.5 * j), round(1.5 * i + 99.5 * j)) for i in range(2) for j in range(3)]
    assert positions == expected and positions[0] == (0, 0) and positions[2] == (-5, 199)  # -5.0, 199.0
    assert positions[3] == (100, 2)  # 100.5 -> 100 and 1.5 -> 2, as Python's round
    assert all(type(v) is int for p in positions for v in p)


def test_a_singular_matrix_places_tiles_with_a_warning():
    singular = np.array([[100.0, 200.0], [50.0, 100.0]])
    with pytest.warns(UserWarning, match="singular"):
        positions = motor.compute_affine_positions(2, 2, singular)
    assert positions == [(0, 0), (200, 100), (100, 50), (300, 150)]
    with pytest.warns(UserWarning, match="singular"):
        assert motor.compute_affine_output_shape(2, 2, (3, 40, 40), singular) == (3, 340, 190)


def test_the_output_shape_bounds_the_origin_and_the_corner_tiles():
    assert motor.compute_affine_output_shape(2, 3, (5, 32, 24), np.array([[32.0, 0.0], [0.0, 24.0]])) == (5, 64, 72)
    # rows: corners at 0, -10, 30, 20 -> [-10, 30 + 30.2]; cols: 0, 40, -3, 37 -> [-3, 40 + 20]
    assert motor.compute_affine_output_shape(2, 2, (1, 30.2, 20), np.array([[30.0, -10.0], [-3.0, 40.0]])) == \
        (1, 71, 63)


# -- apply_blend_shift_refinement ------------------------------------------------------------------


def test_a_tile_moves_by_half_the_mean_refinement():
    tile = np.full((2, 40, 50), 0.1, np.float32)
    tile[:, 20, 25] = 10.0
    shifted = motor.apply_blend_shift_refinement(tile, [{"dy": 1.0, "dx": -2.0}, {"dy": 3.0, "dx": -6.0}])
    assert np.argwhere(shifted[0] > 9.9).tolist() == [[21, 23]]  # mean (2, -4), half (1, -2)
    assert shifted.shape == tile.shape


def test_a_missing_component_counts_as_zero_and_small_shifts_are_skipped():
    tile = np.full((1, 20, 20), 0.1, np.float32)
    tile[0, 10, 10] = 10.0
    moved = motor.apply_blend_shift_refinement(tile, [{"dy": 4.0}])
    assert np.argwhere(moved[0] > 9.9).tolist() == [[12, 10]]
    assert motor.apply_blend_shift_refinement(tile, [{"dy": 0.19, "dx": -0.19}]) is tile  # 0.095 px
    assert motor.apply_blend_shift_refinement(tile, []) is tile
    assert motor.apply_blend_shift_refinement(tile, [{"dy": 0.2}]) is not tile  # 0.1 px: applied


def test_what_a_blend_shift_uncovers_is_filled_with_the_first_percentile_of_the_tissue():
    tile = np.arange(1, 1 + 3 * 30 * 30, dtype=np.float32).reshape(3, 30, 30)
    tile[:, :5] = 0.0
    shifted = motor.apply_blend_shift_refinement(tile, [{"dy": 0.0, "dx": 8.0}])  # 4 px right
    fill = np.percentile(tile[tile > 0], 1)
    np.testing.assert_allclose(shifted[:, :, :4], fill, rtol=1e-6)


# -- compare_motor_vs_registration -----------------------------------------------------------------


def test_the_comparison_has_upstreams_statistics():
    motor_positions = [(0, 0), (0, 100), (100, 0), (100, 100)]
    reg = [(1, -2), (3, 98), (101, 2), (99, 98)]
    stats = motor.compare_motor_vs_registration(motor_positions, reg)
    diff = np.subtract(reg, motor_positions)
    assert set(stats) == {"n_tiles", "mean_diff_y", "mean_diff_x", "std_diff_y", "std_diff_x", "max_diff_y",
                          "max_diff_x", "mean_magnitude", "max_magnitude", "systematic_offset"}
    assert stats["n_tiles"] == 4
    assert (stats["mean_diff_y"], stats["mean_diff_x"]) == pytest.approx(tuple(diff.mean(axis=0)))
    assert (stats["std_diff_y"], stats["std_diff_x"]) == pytest.approx(tuple(diff.std(axis=0)))
    assert (stats["max_diff_y"], stats["max_diff_x"]) == (3.0, 2.0)
    assert stats["mean_magnitude"] == pytest.approx(np.hypot(diff[:, 0], diff[:, 1]).mean())
    assert stats["max_magnitude"] == pytest.approx(math.hypot(3, 2))
    assert stats["systematic_offset"] is False


@pytest.mark.parametrize(("offset", "flagged"), [((5.0, 0.0), False), ((0.0, -5.5), True)])
def test_a_systematic_offset_is_beyond_5_px_along_an_axis(offset, flagged):
    stats = motor.compare_motor_vs_registration([(0, 0)] * 3, [offset] * 3)
    assert stats["systematic_offset"] is flagged
    assert ("offset_warning" in stats) is flagged
    if flagged:
        assert stats["offset_warning"] == "Systematic offset detected: (0.0, -5.5) pixels"


def test_the_dilation_indicator_needs_more_than_ten_tiles():
    ten = motor.compare_motor_vs_registration([(i, 0) for i in range(10)], [(1.1 * i, 0) for i in range(10)])
    assert "index_error_correlation" not in ten and "dilation_indicator" not in ten
    eleven = motor.compare_motor_vs_registration([(i, 0) for i in range(11)], [(1.1 * i, 0) for i in range(11)])
    assert eleven["index_error_correlation"] == pytest.approx(1.0)
    assert eleven["dilation_indicator"] is True and "r=1.00" in eleven["dilation_warning"]


def test_the_comparison_is_written_only_when_a_path_is_given(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stats = motor.compare_motor_vs_registration([(0, 0), (0, 9)], [(1, 0), (1, 9)], output_path="")
    assert list(tmp_path.iterdir()) == []
    out = tmp_path / "comparison.json"
    out.write_text("not ours")  # replaced, as upstream replaces it
    assert motor.compare_motor_vs_registration([(0, 0), (0, 9)], [(1, 0), (1, 9)], output_path=str(out)) == stats
    assert json.loads(out.read_text()) == stats


# -- logging ---------------------------------------------------------------------------------------


def test_a_callers_logging_for_linumpy_sees_the_facade(caplog):
    assert motor.logger.name == "linumpy.mosaic.motor"
    with caplog.at_level(logging.WARNING, logger="linumpy"), pytest.warns(UserWarning):
        motor.estimate_affine_from_pairs([], (1, 10, 10), 0.2)
    assert [r.name for r in caplog.records] == ["linumpy.mosaic.motor"]


def test_the_warning_points_at_the_callers_line():
    with pytest.warns(UserWarning) as caught:
        motor.compute_affine_positions(1, 1, np.zeros((2, 2)))
    assert caught[0].filename == __file__

