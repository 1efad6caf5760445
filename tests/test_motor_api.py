"""The façade keeps the reference ``linumpy.mosaic.motor`` API: names, signatures, return types
(behaviour: test_motor_contract.py)."""

from __future__ import annotations

import ast
import inspect
import re
from pathlib import Path

import numpy as np
import pytest
from conftest import SMALL

from linumpy_motor.errors import InputError
from linumpy_motor.mosaic import motor
from linumpy_motor.synthetic import SyntheticSpec, true_transform

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



def test_compute_motor_positions_returns_positions_and_integer_steps():
    positions, step_y, step_x = motor.compute_motor_positions(2, 3, (3, 160, 200), 0.2)
    assert isinstance(positions, list) and len(positions) == 6
    assert all(isinstance(p, tuple) and len(p) == 2 for p in positions)
    assert (type(step_y), type(step_x)) == (int, int) and (step_y, step_x) == (128, 160)


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
