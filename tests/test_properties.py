"""Property tests (hypothesis) of the motor fit and the canvas geometry."""

from __future__ import annotations

import math

import numpy as np
from conftest import grid_positions, pairs_from_positions
from hypothesis import given, settings
from hypothesis import strategies as st

from linumpy_motor.io.records import pair_table
from linumpy_motor.mosaic import motor
from linumpy_motor.register.fit import describe_transform, fit_pairs
from linumpy_motor.register.geometry import affine_positions, output_shape
from linumpy_motor.synthetic import SyntheticSpec, true_transform

PROFILE = settings(max_examples=60, deadline=None)


@st.composite
def motor_matrices(draw):
    """A plausible motor matrix: steps of 40-400 px, off-diagonal terms of either sign up to 20 %."""
    step_y, step_x = draw(st.floats(40, 400)), draw(st.floats(40, 400))
    b = draw(st.floats(-0.2, 0.2)) * step_x
    c = draw(st.floats(-0.2, 0.2)) * step_y
    return np.array([[step_y, b], [c, step_x]])


@st.composite
def grids(draw, smallest=2):
    """Grid sizes with at least 3 pairs in each direction."""
    nx, ny = draw(st.integers(smallest, 9)), draw(st.integers(smallest, 9))
    if nx * (ny - 1) < 3 or (nx - 1) * ny < 3:
        nx, ny = nx + 1, ny + 1
    return nx, ny


@PROFILE
@given(A=motor_matrices(), grid=grids(), weights=st.lists(st.floats(0.05, 1.0), min_size=200, max_size=200))
def test_noise_free_pairs_give_the_exact_matrix(A, grid, weights):
    nx, ny = grid
    pairs = pairs_from_positions(grid_positions(A, nx, ny), nx, ny)
    for pair, weight in zip(pairs, weights, strict=False):
        pair["ncc"] = weight
    model, diagnostics = fit_pairs(pair_table(pairs), (1, 200, 200), 0.2)
    np.testing.assert_allclose(model.matrix, A, atol=1e-6 * np.abs(A).max())
    assert diagnostics["n_outliers"] == 0


@PROFILE
@given(A=motor_matrices(), grid=grids(smallest=4), seed=st.integers(0, 2**32 - 1))
def test_a_fifth_of_gross_outliers_changes_nothing(A, grid, seed):
    """Up to 20 % of each direction's pairs off by 3-30 px: the fit is still exact."""
    nx, ny = grid
    rng = np.random.default_rng(seed)
    pairs = pairs_from_positions(grid_positions(A, nx, ny), nx, ny)
    for horizontal in (True, False):
        group = [p for p in pairs if bool(p["col_delta"]) == horizontal]
        for k in rng.choice(len(group), size=len(group) // 5, replace=False):
            size, angle = rng.uniform(3, 30), rng.uniform(0, 2 * np.pi)
            group[k]["measured_dy"] += size * math.sin(angle)
            group[k]["measured_dx"] += size * math.cos(angle)
    model, _ = fit_pairs(pair_table(pairs), (1, 200, 200), 0.2)
    np.testing.assert_allclose(model.matrix, A, atol=1e-6 * np.abs(A).max())


@PROFILE
@given(A=motor_matrices(), nx=st.integers(1, 10), ny=st.integers(1, 10),
       tile=st.tuples(st.integers(1, 4), st.integers(16, 300), st.integers(16, 300)))
def test_tiles_fit_tightly_in_the_canvas(A, nx, ny, tile):
    _, h, w = tile
    nz, height, width = output_shape(nx, ny, tile, A)
    positions = affine_positions(nx, ny, A)
    np.testing.assert_allclose(positions.min(axis=0), [0, 0], atol=1e-9)
    assert np.all(positions >= -1e-9)
    assert np.all(positions[:, 0] + h <= height + 1e-9) and np.all(positions[:, 1] + w <= width + 1e-9)
    assert (positions[:, 0] + h).max() > height - 1 and (positions[:, 1] + w).max() > width - 1  # tight
    expected = grid_positions(A, nx, ny)
    np.testing.assert_allclose(positions, expected - expected.min(axis=0), atol=1e-9)
    rounded = np.array(motor.compute_affine_positions(nx, ny, A))  # upstream's: unshifted, rounded
    np.testing.assert_array_equal(rounded, np.rint(expected))
    upstream_shape = motor.compute_affine_output_shape(nx, ny, tile, A)  # upstream's ceil, without our 1e-9
    assert upstream_shape[0] == nz and 0 <= upstream_shape[1] - height <= 1 and 0 <= upstream_shape[2] - width <= 1


@PROFILE
@given(theta=st.floats(-10, 10), deviation=st.floats(-5, 5), overlap=st.floats(0.05, 0.5), scale=st.floats(0.9, 1.1),
       tile=st.tuples(st.just(1), st.integers(32, 512), st.integers(32, 512)))
def test_describe_transform_recovers_the_acquisition_parameters(theta, deviation, overlap, scale, tile):
    spec = SyntheticSpec(tile_shape=tile, overlap=overlap, theta_deg=theta, perpendicular_deviation_deg=deviation,
                         scale=scale)
    d = describe_transform(true_transform(spec), tile, overlap)
    assert math.isclose(d["theta_deg"], theta, abs_tol=1e-9)
    assert math.isclose(d["phi_deg"], 90 + deviation, abs_tol=1e-9)
    assert math.isclose(d["perpendicular_deviation_deg"], deviation, abs_tol=1e-9)
    assert math.isclose(d["Oy_fraction"], 1 - (1 - overlap) * scale, abs_tol=1e-12)
    assert math.isclose(d["Ox_fraction"], 1 - (1 - overlap) * scale, abs_tol=1e-12)
    assert math.isclose(d["scale_y"], scale) and math.isclose(d["scale_x"], scale)
