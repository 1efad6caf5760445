"""The robust motor fit: exact on clean pairs, immune to gross outliers, reproducible sub-sampling,
drift flags, and clear errors when the pairs cannot determine the model."""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import grid_positions, pairs_from_positions

from linumpy_motor.errors import FitError
from linumpy_motor.io.records import pair_table
from linumpy_motor.register import fit
from linumpy_motor.register.fit import FitOptions, describe_transform, fit_pairs, fit_pooled, robust_fit, subsample
from linumpy_motor.synthetic import SyntheticSpec, true_transform

TILE = (3, 160, 160)
NX, NY = 6, 7
A_TRUE = true_transform(SyntheticSpec())


def fit_dicts(pairs, **options):
    """:func:`fit_pairs` of pair dicts (converted as the pipeline converts a pairs file): A and the diagnostics."""
    model, diagnostics = fit_pairs(pair_table(pairs), TILE, 0.2, FitOptions(**options))
    return model.matrix, diagnostics


def pool(pairs_by_slice, grids, **options):
    """:func:`fit_pooled` of each slice's pair dicts: the pooled A and the diagnostics."""
    model, diagnostics = fit_pooled({sid: pair_table(pairs) for sid, pairs in pairs_by_slice.items()}, grids,
                                    TILE, 0.2, FitOptions(**options))
    return model.matrix, diagnostics


def noisy_pairs(A, rng, noise=0.05, nx=NX, ny=NY):
    """Pairs of a jitter-free grid at ``A``, each displacement with Gaussian noise of ``noise`` px."""
    pairs = pairs_from_positions(grid_positions(A, nx, ny), nx, ny)
    for pair in pairs:
        pair["measured_dy"] += rng.normal(0, noise)
        pair["measured_dx"] += rng.normal(0, noise)
        pair["ncc"] = float(rng.uniform(0.6, 1.0))
    return pairs


def spoil(pairs, fraction, rng):
    """Give ``fraction`` of the pairs a gross error (3 to 30 px, random direction); return their indices."""
    bad = rng.choice(len(pairs), size=round(fraction * len(pairs)), replace=False)
    for k in bad:
        size, angle = rng.uniform(3, 30), rng.uniform(0, 2 * np.pi)
        pairs[k]["measured_dy"] += size * np.sin(angle)
        pairs[k]["measured_dx"] += size * np.cos(angle)
        pairs[k]["ncc"] = float(rng.uniform(0.3, 0.9))  # wrong pairs can look good
    return set(int(k) for k in bad)


def test_clean_pairs_give_the_exact_matrix():
    pairs = pairs_from_positions(grid_positions(A_TRUE, NX, NY), NX, NY)
    A, diagnostics = fit_dicts(pairs)
    np.testing.assert_allclose(A, A_TRUE, atol=1e-6)
    assert diagnostics["n_pairs"] == 71 and diagnostics["n_outliers"] == 0
    assert diagnostics["residual_rms_px"] < 1e-6
    assert diagnostics["theta_deg"] == pytest.approx(1.5, abs=1e-6)
    assert diagnostics["phi_deg"] == pytest.approx(90.8, abs=1e-6)


def test_gross_outliers_are_rejected_exactly():
    rng = np.random.default_rng(0)
    pairs = pairs_from_positions(grid_positions(A_TRUE, NX, NY), NX, NY)
    bad = spoil(pairs, 0.2, rng)
    X, Y, w = fit.pair_arrays(pair_table(pairs))
    plain = np.linalg.lstsq(X, Y, rcond=None)[0].T
    assert np.abs(plain - A_TRUE).max() > 0.5  # the outliers do matter to a plain fit
    A, inliers, _ = robust_fit(X, Y, w)
    assert np.abs(A - A_TRUE).max() <= 0.01
    assert set(np.flatnonzero(~inliers)) == bad


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_gross_outliers_do_not_move_a_noisy_fit(seed):
    """20 % gross outliers among pairs with 0.05 px noise: within 0.01 px of the fit to the clean pairs."""
    rng = np.random.default_rng(seed)
    pairs = noisy_pairs(A_TRUE, rng)
    bad = spoil(pairs, 0.2, rng)
    A, diagnostics = fit_dicts(pairs)
    A_clean, _ = fit_dicts([p for k, p in enumerate(pairs) if k not in bad])
    assert np.abs(A - A_clean).max() <= 0.01
    assert np.abs(A - A_TRUE).max() <= 0.05
    assert diagnostics["n_outliers"] == len(bad)
    assert diagnostics["residual_rms_px"] == pytest.approx(0.05 * math.sqrt(2), rel=0.35)


def test_pairs_with_zero_ncc_are_ignored():
    pairs = pairs_from_positions(grid_positions(A_TRUE, NX, NY), NX, NY)
    for pair in pairs[::2]:  # half the pairs wrong, but flagged by their NCC
        pair["measured_dx"] += 40.0
        pair["ncc"] = 0.0
    A, _ = fit_dicts(pairs)
    np.testing.assert_allclose(A, A_TRUE, atol=1e-6)


def test_describe_transform_of_an_ideal_grid():
    d = describe_transform(np.diag([128.0, 136.0]), TILE, 0.2)
    assert d["theta_deg"] == pytest.approx(0) and d["phi_deg"] == pytest.approx(90)
    assert d["perpendicular_deviation_deg"] == pytest.approx(0)
    assert d["Oy_fraction"] == pytest.approx(0.2) and d["Ox_fraction"] == pytest.approx(0.15)
    assert d["scale_y"] == pytest.approx(1.0) and d["scale_x"] == pytest.approx(136 / 128)


@pytest.mark.parametrize(("pairs", "missing"), [
    ([], "0 horizontal and 0 vertical"),
    (pairs_from_positions(grid_positions(A_TRUE, 1, 7), 1, 7), "0 vertical"),
    (pairs_from_positions(grid_positions(A_TRUE, 2, 2), 2, 2), "2 horizontal and 2 vertical"),
    (pairs_from_positions(grid_positions(A_TRUE, 4, 4), 4, 4, ncc=0.0), "0 horizontal and 0 vertical"),
])
def test_too_few_pairs_is_a_clear_error(pairs, missing):
    with pytest.raises(ValueError, match="too few usable pairs") as info:
        fit_dicts(pairs)
    assert isinstance(info.value, FitError)
    assert missing in str(info.value)


def _three_noisy_slices(seed=0):
    rng = np.random.default_rng(seed)
    return {sid: noisy_pairs(A_TRUE, rng, noise=0.1) for sid in (1, 2, 3)}, {sid: (NX, NY) for sid in (1, 2, 3)}


def test_subsampling_is_reproducible():
    pairs_by_slice, grids = _three_noisy_slices()
    np.testing.assert_array_equal(subsample(213, 60, seed=1), subsample(213, 60, seed=1))
    assert not np.array_equal(subsample(213, 60, seed=1), subsample(213, 60, seed=2))
    assert len(set(subsample(213, 60, seed=1))) == 60
    np.testing.assert_array_equal(subsample(213, 500, seed=1), np.arange(213))
    np.testing.assert_array_equal(subsample(213, None, seed=1), np.arange(213))
    A1, d1 = pool(pairs_by_slice, grids, n_samples=60, seed=1)
    A1_again, _ = pool(pairs_by_slice, grids, n_samples=60, seed=1)
    A2, _ = pool(pairs_by_slice, grids, n_samples=60, seed=2)
    A_all, d_all = pool(pairs_by_slice, grids)
    np.testing.assert_array_equal(A1, A1_again)
    assert np.abs(A1 - A2).max() > 1e-6
    assert (d1["n_pooled_pairs"], d1["n_fitted_pairs"], d1["n_samples"], d1["seed"]) == (213, 60, 60, 1)
    assert d_all["n_fitted_pairs"] == 213
    # 60 of 213 pairs leave a fragmented tile graph: about twice the error of the full fit
    for A in (A1, A2):
        assert np.abs(A - A_TRUE).max() < 0.08
    assert np.abs(A_all - A_TRUE).max() < 0.05


def test_a_slice_with_a_different_motor_model_is_flagged():
    rng = np.random.default_rng(4)
    shifted = A_TRUE + [[0, 0], [0, 0.5]]  # 0.5 px more per column: 1.5 px at the grid's corners
    nudged = A_TRUE + [[0, 0], [0, 0.2]]  # 0.6 px at the corners: within the 1 px tolerance
    models = {1: A_TRUE, 2: A_TRUE, 3: shifted, 4: A_TRUE, 5: nudged}
    pairs_by_slice = {sid: noisy_pairs(A, rng, noise=0.02) for sid, A in models.items()}
    A, diagnostics = pool(pairs_by_slice, {sid: (NX, NY) for sid in models}, drift_tolerance_px=1.0)
    assert diagnostics["drifting_slices"] == [3]
    per_slice = diagnostics["per_slice"]
    assert per_slice["3"]["drift_flag"] and not any(per_slice[s]["drift_flag"] for s in "1245")
    assert per_slice["3"]["drift_px"] == pytest.approx(1.5, abs=0.1)
    assert per_slice["5"]["drift_px"] == pytest.approx(0.6, abs=0.1)
    np.testing.assert_allclose(per_slice["3"]["transform"], shifted, atol=0.05)
    assert np.abs(A - A_TRUE).max() < 0.05


def test_pooled_too_few_pairs_names_the_empty_slices():
    few = pairs_from_positions(grid_positions(A_TRUE, 2, 2), 2, 2)
    with pytest.raises(FitError, match=r"slices with no usable pair: \[11, 12\]"):
        pool({4: few, 11: [], 12: []}, {4: (2, 2), 11: (6, 7), 12: (6, 7)})


def test_pooled_too_few_pairs_names_the_slices_whose_pairs_all_failed():
    """A slice with pairs, none usable (NCC <= 0), has no usable pair either."""
    few = pairs_from_positions(grid_positions(A_TRUE, 2, 2), 2, 2)
    failed = [{**pair, "ncc": 0.0} for pair in pairs_from_positions(grid_positions(A_TRUE, 2, 2), 2, 2)]
    with pytest.raises(FitError, match=r"slices with no usable pair: \[7\]"):
        pool({4: few, 7: failed}, {4: (2, 2), 7: (2, 2)})


def test_a_slice_without_pairs_does_not_stop_the_pooled_fit():
    rng = np.random.default_rng(5)
    A, diagnostics = pool({1: noisy_pairs(A_TRUE, rng), 2: []}, {1: (NX, NY), 2: (NX, NY)})
    assert np.abs(A - A_TRUE).max() < 0.05
    entry = diagnostics["per_slice"]["2"]
    assert entry["transform"] is None and "too few usable pairs" in entry["fit_error"]
    assert diagnostics["drifting_slices"] == [] and diagnostics["failed_fit_slices"] == [2]  # no fit: no drift measured


def test_position_stage_reaches_the_jitter_floor():
    """With tile jitter, fitting solved positions beats fitting pair displacements (which telescope)."""
    from linumpy_motor.register.geometry import grid_indices

    errors_two_stage, errors_pairs, errors_floor = [], [], []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        index = grid_indices(NX, NY)
        pairs_by_slice, floors = {}, []
        for sid in range(3):
            positions = index @ A_TRUE.T + rng.normal(0, 0.3, (NX * NY, 2))
            floors.append((index - index.mean(0), positions - positions.mean(0)))
            pairs = []
            for i in range(NX):
                for j in range(NY):
                    for di, dj in ((0, 1), (1, 0)):
                        if i + di < NX and j + dj < NY:
                            d = positions[(i + di) * NY + j + dj] - positions[i * NY + j] + rng.normal(0, 0.02, 2)
                            pairs.append({"tile": [i, j], "row_delta": di, "col_delta": dj,
                                          "measured_dy": d[0], "measured_dx": d[1], "ncc": 0.9})
            pairs_by_slice[sid] = pairs
        A, _ = pool(pairs_by_slice, {sid: (NX, NY) for sid in range(3)})
        X, Y, w = fit.pair_arrays(pair_table([p for sid in range(3) for p in pairs_by_slice[sid]]))
        A_pairs, _, _ = robust_fit(X, Y, w)
        Xf = np.concatenate([x for x, _ in floors])
        Yf = np.concatenate([y for _, y in floors])
        A_floor = np.linalg.lstsq(Xf, Yf, rcond=None)[0].T
        errors_two_stage.append(np.abs(A - A_TRUE).max())
        errors_pairs.append(np.abs(A_pairs - A_TRUE).max())
        errors_floor.append(np.abs(A_floor - A_TRUE).max())
    # measured: two-stage 0.026, pairs only 0.033, floor (LSQ of the true positions) 0.026 px
    assert np.mean(errors_two_stage) < 0.9 * np.mean(errors_pairs)
    assert np.mean(errors_two_stage) < 1.1 * np.mean(errors_floor)


def _stage_pairs(rng, backlash=(0.0, 0.0), jitter=0.3, noise=0.03, n_slices=3):
    """Pairs of ``n_slices`` slices of tiles at ``A_TRUE @ [i, j] + (i mod 2) backlash + jitter``,
    and the least-squares A of the true positions with (``floor_b``) and without (``floor``) the term."""
    from linumpy_motor.register.geometry import grid_indices

    index = grid_indices(NX, NY)
    pairs, blocks = {}, []
    for sid in range(n_slices):
        positions = index @ A_TRUE.T + (index[:, :1] % 2) * np.asarray(backlash) + rng.normal(0, jitter, (NX * NY, 2))
        pairs[sid] = pairs_from_positions(positions, NX, NY, ncc=0.9)
        for pair in pairs[sid]:
            pair["measured_dy"] += rng.normal(0, noise)
            pair["measured_dx"] += rng.normal(0, noise)
        blocks.append((np.column_stack([index, index[:, 0] % 2]), positions))
    X = np.concatenate([x - x.mean(0) for x, _ in blocks])
    Y = np.concatenate([y - y.mean(0) for _, y in blocks])
    floor_b = np.linalg.lstsq(X, Y, rcond=None)[0].T[:, :2]
    floor = np.linalg.lstsq(X[:, :2], Y, rcond=None)[0].T
    return pairs, floor, floor_b


@pytest.mark.parametrize("backlash", [(0.0, 1.0), (0.0, -3.0), (0.4, 0.6)])
def test_serpentine_backlash_is_detected_and_not_absorbed_by_A(backlash):
    pairs, floor, floor_b = _stage_pairs(np.random.default_rng(7), backlash)
    A, diagnostics = pool(pairs, {sid: (NX, NY) for sid in pairs})
    test = diagnostics["position_stage"]["backlash"]
    assert test["detected"] and test["p_value"] < fit.BACKLASH_P_VALUE
    np.testing.assert_allclose(diagnostics["backlash_px"], backlash, atol=0.1)
    assert np.abs(A - A_TRUE).max() <= np.abs(floor_b - A_TRUE).max() + 0.01
    assert diagnostics["n_outliers"] == 0  # the even->odd and odd->even vertical pairs all fit
    if max(map(abs, backlash)) >= 1:
        plain, _ = pool(pairs, {sid: (NX, NY) for sid in pairs}, backlash="off")
        assert np.abs(plain - A_TRUE).max() > 3 * np.abs(A - A_TRUE).max()  # without the term, A bends


def test_no_backlash_term_when_the_stage_has_none():
    false_alarms, errors, floors = 0, [], []
    for seed in range(6):
        pairs, floor, _ = _stage_pairs(np.random.default_rng(100 + seed))
        A, diagnostics = pool(pairs, {sid: (NX, NY) for sid in pairs})
        false_alarms += diagnostics["position_stage"]["backlash"]["detected"]
        assert diagnostics["backlash_px"] == [0.0, 0.0]
        errors.append(np.abs(A - A_TRUE).max())
        floors.append(np.abs(floor - A_TRUE).max())
    assert false_alarms == 0
    assert np.mean(errors) <= 1.1 * np.mean(floors)


def test_backlash_needs_vertical_pairs_from_both_row_parities():
    pairs, _, _ = _stage_pairs(np.random.default_rng(3), (0.0, 2.0))
    two_rows = {sid: [p for p in slice_pairs if p["tile"][0] + p["row_delta"] <= 1]
                for sid, slice_pairs in pairs.items()}
    _, diagnostics = pool(two_rows, {sid: (2, NY) for sid in pairs})
    assert not diagnostics["position_stage"]["backlash"]["identifiable"]
    assert diagnostics["backlash_px"] == [0.0, 0.0]


def test_faint_pairs_do_not_bend_the_matrix():
    """Agarose-like pairs (NCC 0.1, 0.5 px errors) on half the grid: the error model weighs them down."""
    ours, naive, models = [], [], []
    for seed in range(3):
        rng = np.random.default_rng(11 + seed)
        pairs, _, _ = _stage_pairs(rng, jitter=0.1, noise=0.02)
        for slice_pairs in pairs.values():
            for pair in slice_pairs:
                if pair["tile"][1] >= NY // 2:
                    pair["ncc"] = 0.1
                    pair["measured_dy"] += rng.normal(0, 0.5)
                    pair["measured_dx"] += rng.normal(0, 0.5)
        A, diagnostics = pool(pairs, {sid: (NX, NY) for sid in pairs})
        ours.append(np.abs(A - A_TRUE).max())
        models.append(diagnostics["pair_error_model"]["at_ncc_1_px"])
        alike = {sid: [{**p, "ncc": 0.9} for p in slice_pairs] for sid, slice_pairs in pairs.items()}
        A_alike, _ = pool(alike, {sid: (NX, NY) for sid in pairs})
        naive.append(np.abs(A_alike - A_TRUE).max())
    assert np.mean(ours) < 0.6 * np.mean(naive)
    assert np.mean(models) == pytest.approx(0.05, abs=0.025)  # 0.5 px at NCC 0.1
