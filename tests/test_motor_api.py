"""The façade keeps the reference ``linumpy.mosaic.motor`` API: names, signatures, return values."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest

from linumpy_motor.errors import FitError, InputError
from linumpy_motor.io import ngff
from linumpy_motor.mosaic import motor
from linumpy_motor.synthetic import SyntheticSpec, make_slice, true_transform

REFERENCE = Path(__file__).resolve().parent / "data" / "linumpy_mosaic_motor_api.txt"  # a copy of shared/spec's
FUNCTIONS = [
    "compute_motor_positions", "compute_registration_refinements", "estimate_affine_from_pairs",
    "pool_pairs_and_fit_global_affine", "compute_affine_positions", "compute_affine_output_shape",
    "apply_blend_shift_refinement", "compare_motor_vs_registration",
]


def reference_signatures() -> dict[str, ast.arguments]:
    """``name -> arguments`` of every ``linumpy.mosaic.motor.NAME(...)[source]#`` line of the reference."""
    found = {}
    for match in re.finditer(r"^linumpy\.mosaic\.motor\.(\w+)\((.*)\)\[source\]#$", REFERENCE.read_text(), re.M):
        name, parameters = match.groups()
        found[name] = ast.parse(f"def {name}({parameters}): pass").body[0].args
    return found


def test_the_reference_lists_the_eight_functions():
    assert sorted(reference_signatures()) == sorted(FUNCTIONS)
    assert sorted(motor.__all__) == sorted(FUNCTIONS)


def _expected_parameters(reference: ast.arguments) -> list[tuple[str, inspect._ParameterKind, object]]:
    positional = reference.posonlyargs + reference.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(reference.defaults))
    defaults += [ast.literal_eval(d) for d in reference.defaults]
    expected = [(a.arg, inspect.Parameter.POSITIONAL_OR_KEYWORD, d) for a, d in zip(positional, defaults, strict=True)]
    expected += [(a.arg, inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.empty if d is None else ast.literal_eval(d))
                 for a, d in zip(reference.kwonlyargs, reference.kw_defaults, strict=True)]
    return expected


def check_signature(function, reference: ast.arguments) -> None:
    """Same positional parameters (names, order, defaults), the same keyword-only ones, and
    nothing else but extra keyword-only parameters with defaults."""
    expected = _expected_parameters(reference)
    actual = {p.name: p for p in inspect.signature(function).parameters.values()}
    positional = [e for e in expected if e[1] is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert [(p.name, p.kind, p.default) for p in actual.values()][:len(positional)] == positional
    for name, kind, default in expected:
        assert name in actual, f"parameter {name!r} of the reference is missing"
        assert (actual[name].kind, actual[name].default) == (kind, default), name
        assert type(actual[name].default) is type(default), f"default of {name!r}: {default!r} in the reference"
    extra = [p for name, p in actual.items() if name not in {e[0] for e in expected}]
    for p in extra:
        assert p.kind is inspect.Parameter.KEYWORD_ONLY and p.default is not inspect.Parameter.empty, p.name


@pytest.mark.parametrize("name", FUNCTIONS)
def test_signature_matches_the_reference(name):
    check_signature(getattr(motor, name), reference_signatures()[name])


def _renamed(nx, ny, tile_shape, overlap, scale_factor=1.0, rotation_deg=0.0): ...
def _reordered(ny, nx, tile_shape, overlap_fraction, scale_factor=1.0, rotation_deg=0.0): ...
def _new_default(nx, ny, tile_shape, overlap_fraction, scale_factor=1, rotation_deg=0.0): ...
def _extra_positional(nx, ny, tile_shape, overlap_fraction, scale_factor=1.0, rotation_deg=0.0, z=0): ...
def _dropped(nx, ny, tile_shape, overlap_fraction, scale_factor=1.0): ...
def _extra_keyword(nx, ny, tile_shape, overlap_fraction, scale_factor=1.0, rotation_deg=0.0, *, z=0): ...


@pytest.mark.parametrize("function", [_renamed, _reordered, _new_default, _extra_positional, _dropped])
def test_the_signature_check_catches_changes(function):
    with pytest.raises(AssertionError):
        check_signature(function, reference_signatures()["compute_motor_positions"])


def test_the_signature_check_allows_extra_keyword_only_parameters():
    check_signature(_extra_keyword, reference_signatures()["compute_motor_positions"])


# -- return values ---------------------------------------------------------------------------------

SMALL = SyntheticSpec(nx=3, ny=4, tile_shape=(3, 160, 160), tissue_fraction=1.0)


@pytest.fixture(scope="module")
def small_slice():
    volume, truth, _ = make_slice(SMALL, seed=5)
    return volume, np.array(truth["positions"])


def test_compute_motor_positions_returns_positions_and_integer_steps():
    positions, step_y, step_x = motor.compute_motor_positions(2, 3, (3, 160, 200), 0.2)
    assert isinstance(positions, list) and len(positions) == 6
    assert all(isinstance(p, tuple) and len(p) == 2 for p in positions)
    assert (type(step_y), type(step_x)) == (int, int) and (step_y, step_x) == (128, 160)


def test_compute_registration_refinements_returns_the_reference_keys(small_slice):
    volume, truth = small_slice
    result = motor.compute_registration_refinements(volume, SMALL.tile_shape, 3, 4, 0.2, 0.5)
    assert {"horizontal", "vertical", "pairs", "stats"} <= set(result)
    assert len(result["pairs"]) == 3 * 3 + 2 * 4
    assert len(result["horizontal"]) == 9 and len(result["vertical"]) == 8
    for pair in result["pairs"]:
        assert {"row_delta", "col_delta", "measured_dy", "measured_dx"} <= set(pair)
        i, j = pair["tile"]
        second = (i + pair["row_delta"]) * 4 + j + pair["col_delta"]
        true = truth[second] - truth[i * 4 + j]
        assert pair["measured_dy"] == pytest.approx(true[0], abs=0.15)  # absolute, not clamped
        assert pair["measured_dx"] == pytest.approx(true[1], abs=0.15)
    # residuals for blending are clamped to max_refinement_px; horizontal pairs have dy ≈ b ≈ -3.3 px
    for residual in result["horizontal"] + result["vertical"]:
        assert abs(residual["dy"]) <= 0.5 and abs(residual["dx"]) <= 0.5
    assert all(r["dy"] == -0.5 for r in result["horizontal"])
    assert result["stats"]["backend"] == "numpy"


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_a_volume_in_memory_with_nan_is_refused_as_a_store_is(small_slice, value):
    """One read rule for stores and arrays: a NaN would spoil every pair of its batch."""
    volume = small_slice[0].copy()
    volume[1, 5, 7] = value
    with pytest.raises(InputError, match="data contains NaN or Inf"):
        motor.compute_registration_refinements(volume, SMALL.tile_shape, 3, 4, 0.2)


def test_a_single_plane_is_accepted(small_slice):
    volume, _ = small_slice
    from_volume = motor.compute_registration_refinements(volume, SMALL.tile_shape, 3, 4, 0.2, z=1)
    from_plane = motor.compute_registration_refinements(volume[1], SMALL.tile_shape, 3, 4, 0.2)
    assert [p["measured_dx"] for p in from_plane["pairs"]] == [p["measured_dx"] for p in from_volume["pairs"]]


def test_estimate_and_positions_return_types():
    A = true_transform(SyntheticSpec())
    pairs = [{"row_delta": 0, "col_delta": 1, "measured_dy": A[0, 1], "measured_dx": A[1, 1]}] * 3 + [
        {"row_delta": 1, "col_delta": 0, "measured_dy": A[0, 0], "measured_dx": A[1, 0]}] * 3
    transform, diagnostics = motor.estimate_affine_from_pairs(pairs, (3, 160, 160), 0.2)
    assert isinstance(transform, np.ndarray) and transform.shape == (2, 2)
    assert {"theta_deg", "phi_deg", "Ox_fraction", "Oy_fraction"} <= set(diagnostics)
    positions = motor.compute_affine_positions(2, 3, transform)
    assert isinstance(positions, list) and len(positions) == 6
    assert all(type(r) is int and type(c) is int for r, c in positions)
    shape = motor.compute_affine_output_shape(2, 3, (3, 160, 160), transform)
    assert isinstance(shape, tuple) and len(shape) == 3 and all(type(s) is int for s in shape)


def test_apply_blend_shift_refinement_moves_the_content_by_the_mean_refinement():
    tile = np.zeros((2, 40, 50), np.float32)
    tile[:, 20, 25] = 1.0
    refinements = [{"dy": 1.0, "dx": -2.0}, {"dy": 3.0, "dx": -2.0}]  # mean (2, -2)
    shifted = motor.apply_blend_shift_refinement(tile, refinements)
    assert shifted.shape == tile.shape
    assert np.argwhere(shifted[0] > 0.99).tolist() == [[22, 23]]
    half = motor.apply_blend_shift_refinement(tile, [{"dy": 0.5, "dx": 0.0}])
    assert half[0, 20, 25] == pytest.approx(0.5) and half[0, 21, 25] == pytest.approx(0.5)
    assert motor.apply_blend_shift_refinement(tile, [{"dy": 0.01, "dx": 0.0}]) is tile  # negligible
    assert motor.apply_blend_shift_refinement(tile, []) is tile


# -- errors ----------------------------------------------------------------------------------------

def test_mixed_tile_shapes_are_an_input_error_naming_the_file(tmp_path):
    first, odd = tmp_path / "a_z01.ome.zarr", tmp_path / "b_z02.ome.zarr"
    ngff.write_image(first, np.ones((2, 320, 480), np.float32), chunks=(2, 160, 160))
    ngff.write_image(odd, np.ones((2, 256, 384), np.float32), chunks=(2, 128, 128))
    with pytest.raises(InputError, match="tile shape") as info:
        motor.pool_pairs_and_fit_global_affine([(1, first), (2, odd)], 0.2)
    assert info.value.path == odd
    assert str(odd) in str(info.value)


def test_pooling_without_usable_pairs_names_the_slice(tmp_path):
    empty = tmp_path / "mosaic_grid_3d_z17.ome.zarr"
    ngff.write_image(empty, np.zeros((3, 480, 640), np.float32), chunks=(3, 160, 160))
    with pytest.raises(FitError, match=r"no usable pair: \[17\]"):
        motor.pool_pairs_and_fit_global_affine([(17, empty)], 0.2)


def test_pooling_rejects_repeated_slice_ids(synthetic_dataset_small):
    (_, first), (_, second) = synthetic_dataset_small.volumes
    with pytest.raises(InputError):
        motor.pool_pairs_and_fit_global_affine([(0, first), (0, second)], 0.2)
