"""Tile positions: ideal grid, affine model, canvas size, registration solve, motor-vs-registration."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import grid_positions, pairs_from_positions

from linumpy_motor.io.records import pair_table
from linumpy_motor.mosaic import motor
from linumpy_motor.qc.compare import compare_positions
from linumpy_motor.register import geometry
from linumpy_motor.register.geometry import affine_positions, registration_positions


def test_affine_positions_with_negative_off_diagonal_terms():
    """The stitcher's canvas starts at the smallest position; the façade's at tile (0, 0), as upstream's."""
    A = np.array([[127.6, -3.3], [1.2, 128.4]])
    unshifted = [(127.6 * i - 3.3 * j, 1.2 * i + 128.4 * j) for i in range(6) for j in range(7)]
    np.testing.assert_allclose(affine_positions(6, 7, A), np.add(unshifted, (19.8, 0)), atol=1e-9)
    assert motor.compute_affine_positions(6, 7, A) == [(round(r), round(c)) for r, c in unshifted]
    np.testing.assert_allclose(motor.compute_affine_positions(6, 7, A, subpixel=True), unshifted, atol=1e-9)


@pytest.mark.parametrize(("A", "shape"), [
    # rows 128 i - 5 j span [-30, 640] -> 670 + 160; cols 3 i + 128 j span [0, 783] -> 783 + 160
    ([[128, -5], [3, 128]], (3, 830, 943)),
    # rows 128 i + 5 j span [0, 670]; cols -3 i + 128 j span [-15, 768]
    ([[128, 5], [-3, 128]], (3, 830, 943)),
    # rows span [-19.8, 638] -> ceil(817.8); cols span [0, 776.4] -> ceil(936.4)
    ([[127.6, -3.3], [1.2, 128.4]], (3, 818, 937)),
    ([[128, 0], [0, 128]], (3, 5 * 128 + 160, 6 * 128 + 160)),
])
def test_affine_output_shape(A, shape):
    assert motor.compute_affine_output_shape(6, 7, (3, 160, 160), np.array(A, dtype=float)) == shape


def _rms_up_to_translation(positions, truth):
    difference = np.asarray(positions) - truth
    difference -= difference.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(difference**2, axis=1))))


def test_registration_positions_are_exact_on_exact_pairs():
    rng = np.random.default_rng(0)
    A = np.array([[127.9, -3.4], [1.6, 128.0]])
    truth = grid_positions(A, 5, 6) + rng.normal(0, 0.4, (30, 2))
    pairs = pairs_from_positions(truth, 5, 6)
    pairs[3]["measured_dx"] += 25.0  # a wrong pair, beyond max_deviation_px of the prior: left out
    positions, connected = registration_positions(pair_table(pairs), 5, 6, grid_positions(A, 5, 6))
    assert connected.all()
    assert _rms_up_to_translation(positions, truth) < 1e-3


def test_unreached_tiles_stay_at_the_prior():
    truth = grid_positions(np.diag([128.0, 128.0]), 2, 3)
    prior = truth + np.array([[0, 0]] * 5 + [[1.5, -1.0]])
    touches_last = ({"tile": [1, 1], "col_delta": 1}, {"tile": [0, 2], "row_delta": 1})
    pairs = [p for p in pairs_from_positions(truth, 2, 3)
             if not any(all(p[k] == v for k, v in t.items()) for t in touches_last)]
    assert len(pairs) == 5
    positions, connected = registration_positions(pair_table(pairs), 2, 3, prior)
    assert connected.tolist() == [True] * 5 + [False]
    np.testing.assert_allclose(positions, prior, atol=1e-6)


def _registration_rms(dataset, pairs_by_slice, slice_id, **options):
    prior = grid_positions(dataset.transform, dataset.spec.nx, dataset.spec.ny)
    positions, connected = registration_positions(pairs_by_slice[slice_id], dataset.spec.nx, dataset.spec.ny,
                                                  prior, **options)
    assert connected.mean() >= 0.9  # tiles whose every pair is rejected (background) stay at the prior
    truth = np.asarray(dataset.positions(slice_id))
    return (_rms_up_to_translation(positions[connected], truth[connected]),
            _rms_up_to_translation(prior[connected], truth[connected]))


@pytest.mark.parametrize("slice_id", [0, 1, 2])
def test_registration_recovers_the_true_jittered_positions(synthetic_dataset_v05, synthetic_pairs_v05, slice_id):
    """With pairs far from the motor model left out (2 px), every slice is within 0.3 px rms."""
    rms, prior_rms = _registration_rms(synthetic_dataset_v05, synthetic_pairs_v05, slice_id, max_deviation_px=2.0)
    assert rms < 0.3
    assert rms < 0.5 * prior_rms  # the motor model alone misses the 0.3 px jitter


def test_registration_with_default_options_is_robust_to_wrong_pairs(synthetic_dataset_v05, synthetic_pairs_v05):
    for slice_id in synthetic_dataset_v05.slice_ids:
        rms, prior_rms = _registration_rms(synthetic_dataset_v05, synthetic_pairs_v05, slice_id)
        assert rms < min(0.3, prior_rms)


MOTOR = [(i * 128.0, j * 128.0) for i in range(6) for j in range(7)]


def test_compare_flags_a_systematic_offset():
    stats = compare_positions(MOTOR, np.add(MOTOR, [3.0, -2.0]))
    assert stats["mean_diff_px"] == pytest.approx([3.0, -2.0])
    assert stats["flags"] == {"systematic_offset": True, "scale_mismatch": False, "outlying_tiles": False}
    assert stats["n_tiles"] == 42 and stats["rms_diff_px"] == pytest.approx(np.hypot(3, 2))


def test_compare_flags_a_scale_error():
    centre = np.mean(MOTOR, axis=0)
    reg = centre + (np.asarray(MOTOR) - centre) * [1.01, 0.995]
    stats = compare_positions(MOTOR, reg)
    assert stats["scale_y"] == pytest.approx(1.01) and stats["scale_x"] == pytest.approx(0.995)
    assert stats["mean_diff_px"] == pytest.approx([0, 0], abs=1e-9)
    assert stats["flags"]["scale_mismatch"] and not stats["flags"]["systematic_offset"]


def test_compare_flags_an_outlying_tile_and_nothing_on_small_noise():
    rng = np.random.default_rng(0)
    reg = np.asarray(MOTOR) + rng.normal(0, 0.1, (42, 2))
    assert not any(compare_positions(MOTOR, reg)["flags"].values())
    reg[17] += [6.0, -5.0]
    stats = compare_positions(MOTOR, reg)
    assert stats["flags"]["outlying_tiles"] and not stats["flags"]["systematic_offset"]
    assert stats["max_diff_px"] == pytest.approx(np.hypot(6, 5), abs=0.5)
    with pytest.raises(ValueError, match="differ in length"):
        compare_positions(MOTOR, reg[:-1])


def test_model_positions_carry_the_backlash_of_odd_rows():
    from linumpy_motor.register.geometry import model_positions

    A = np.array([[100.0, 2.0], [-1.0, 120.0]])
    plain = model_positions(3, 2, A)
    shifted = model_positions(3, 2, A, backlash=(0.5, -3.0))
    np.testing.assert_allclose(shifted - plain, [[0, 0], [0, 0], [0.5, -3], [0.5, -3], [0, 0], [0, 0]])


def test_registered_placement_follows_a_bumped_tile_and_keeps_the_model_elsewhere():
    from linumpy_motor.register.geometry import model_positions, registered_positions

    A = np.array([[100.0, 2.0], [-1.0, 120.0]])
    model = model_positions(4, 5, A)
    rng = np.random.default_rng(0)
    true = model + rng.normal(0, 0.3, model.shape)
    true[7] += (4.0, -3.0)  # a knocked tile
    placed = registered_positions(pair_table(pairs_from_positions(true, 4, 5, ncc=0.9)), 4, 5, model)
    offset = (placed - true).mean(axis=0)
    assert np.abs(placed - true - offset).max() < 0.01  # exact pairs: the tiles where they really are
    assert np.abs(model - true - (model - true).mean(axis=0)).max() > 3  # the model alone misses the bump
    lone = registered_positions(pair_table([]), 4, 5, model)  # no pairs: the model
    np.testing.assert_allclose(lone, model)
    clipped = registered_positions(pair_table(pairs_from_positions(true, 4, 5)), 4, 5, model, max_refinement_px=1.0)
    assert np.abs(clipped - model).max() <= 1.0 + 1e-9


@pytest.mark.parametrize(("nx", "ny"), [(1, 1), (1, 5), (4, 1), (3, 4), (6, 7)])
def test_neighbour_pairs_are_every_adjacent_tile_pair_once(nx, ny):
    """Against brute force: every two tiles one step apart along a row or a column, counted once."""
    tiles = [(i, j) for i in range(nx) for j in range(ny)]
    truth = {(a, b) for a in tiles for b in tiles if (b[0] - a[0], b[1] - a[1]) in ((0, 1), (1, 0))}
    pairs = geometry.neighbour_pairs(nx, ny)
    found = [((i, j), (i, j + 1) if horizontal else (i + 1, j)) for i, j, horizontal in pairs]
    assert len(found) == len(set(found)) and set(found) == truth
    assert [p[2] for p in pairs] == sorted((p[2] for p in pairs), reverse=True)  # horizontal ones first
    assert geometry.n_neighbour_pairs(nx, ny) == len(truth)
    for horizontal in (True, False):
        assert geometry.n_neighbour_pairs(nx, ny, horizontal) == sum(
            (b[0] == a[0]) == horizontal for a, b in truth)
        assert geometry.neighbour_pairs(nx, ny, horizontal) == [p for p in pairs if p[2] == horizontal]


def test_pair_tiles_are_row_major_indices_of_both_tiles():
    pairs = pair_table([{"tile": [2, 3], "row_delta": 0, "col_delta": 1, "measured_dy": 0, "measured_dx": 9},
                        {"tile": (1, 0), "row_delta": 1, "col_delta": 0, "measured_dy": 9, "measured_dx": 0}])
    t1, t2 = geometry.pair_tiles(pairs, ny=5)
    assert t1.tolist() == [2 * 5 + 3, 5] and t2.tolist() == [2 * 5 + 4, 2 * 5]


@pytest.mark.parametrize("A", [[[128, -5], [3, 128]], [[127.6, -3.3], [1.2, 128.4]], [[-90, 2], [1, -95]],
                               [[0.5, 130], [128, 0.2]]])
@pytest.mark.parametrize(("nx", "ny"), [(1, 1), (2, 5), (6, 7)])
def test_the_span_from_the_corners_is_the_span_over_every_tile(A, nx, ny):
    """The canvas check and the thumbnail's layout check see the same extent as the stitcher's canvas."""
    A = np.asarray(A, dtype=float)
    every_tile = geometry.span(geometry.model_positions(nx, ny, A), (160, 150))
    np.testing.assert_array_equal(geometry.model_span(nx, ny, (160, 150), A), every_tile)
    nz, height, width = geometry.output_shape(nx, ny, (3, 160, 150), A)
    assert (height, width) == tuple(int(np.ceil(v - 1e-9)) for v in every_tile)


@pytest.mark.parametrize(("overlap", "rotation"), [(0.2, 0.0), (0.15, 3.0), (0.35, -7.5)])
def test_steps_and_overlap_of_an_ideal_grid(overlap, rotation):
    """A rotated regular grid keeps its nominal steps, so its effective overlap is the nominal one."""
    tile = (4, 160, 96)
    angle = np.radians(rotation)
    turn = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    A = turn @ np.diag(geometry.nominal_step(tile, overlap))
    np.testing.assert_allclose(geometry.step_lengths(A), ((1 - overlap) * 160, (1 - overlap) * 96), rtol=1e-12)
    np.testing.assert_allclose(geometry.effective_overlap(A, tile), (overlap, overlap), rtol=1e-9)
    np.testing.assert_allclose(geometry.effective_overlap_px(A, tile), (overlap * 160, overlap * 96), rtol=1e-9)
    assert geometry.integer_step(tile, overlap) == (round((1 - overlap) * 160), round((1 - overlap) * 96))
    scaled = np.diag(geometry.nominal_step(tile, overlap, scale_factor=1.05))
    np.testing.assert_allclose(geometry.step_lengths(scaled), np.multiply(geometry.nominal_step(tile, overlap), 1.05))


def test_a_pair_weighs_its_ncc_clipped_to_one_in_every_solve():
    """One weight rule: an NCC above 1 (a hand-edited file) counts as 1, none or <= 0 leaves the pair out."""
    given = [{"ncc": 50.0}, {"ncc": 0.4}, {"ncc": -0.2}, {}]
    pairs = pair_table({"row_delta": 0, "col_delta": 1, "measured_dy": 0.0, "measured_dx": 9.0, **p} for p in given)
    assert geometry.pair_weights(pairs).tolist() == [1.0, 0.4, 0.0, 1.0]
