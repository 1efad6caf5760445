"""The rules that a plausible one-character bug would silently change: which pairs count as empty,
which way ``max_empty_fraction`` cuts, that histogram matching acts, how pairs are weighted, and
what makes the runner redo a step. Each test fails if its rule is dropped, inverted or moved."""

from __future__ import annotations

import importlib
import typing
from pathlib import Path

import numpy as np
import pytest
from skimage import data

from linumpy_motor import synthetic
from linumpy_motor.io.records import pair_table
from linumpy_motor.pipeline import resume, runner
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.register.fit import error_model, pair_arrays
from linumpy_motor.register.measure import MeasureOptions, measure_grid_pairs

TILE = 64
OVERLAP = 0.25
STEP = int(TILE * (1 - OVERLAP))  # 48: the overlap strip is 16 px wide


def _two_tiles(scene: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Two horizontally neighbouring tiles cut from a photograph at exactly the nominal step."""
    if scene is None:
        scene = data.camera()[100:100 + TILE, 100:100 + STEP + TILE].astype(np.float32) + 1.0
    return scene[:, :TILE].copy(), scene[:, STEP:STEP + TILE].copy()


def _measure(left: np.ndarray, right: np.ndarray, **options) -> tuple[np.ndarray, list[dict]]:
    plane = np.concatenate([left, right], axis=1)
    measured, skipped, _ = measure_grid_pairs(lambda i: plane, (TILE, TILE), 1, 2, OVERLAP,
                                              MeasureOptions(max_shift_px=4, background_test=False, **options))
    return measured, skipped


def _blank_overlap_rows(left: np.ndarray, right: np.ndarray, kept_rows: int, value: float = 0.0) -> None:
    """Set every row of the overlap strip but the first ``kept_rows`` to ``value`` in both tiles."""
    left[kept_rows:, STEP:] = value
    right[kept_rows:, :TILE - STEP] = value


@pytest.mark.parametrize(("kept_rows", "skipped"), [(10, False), (3, True)])  # 15.6 % and 4.7 % non-zero
def test_the_default_empty_rule_skips_overlaps_under_a_tenth_non_zero(kept_rows, skipped):
    left, right = _two_tiles()
    _blank_overlap_rows(left, right, kept_rows)
    measured, skipped_pairs = _measure(left, right)
    assert [p["reason"] for p in skipped_pairs] == (["empty overlap"] if skipped else [])
    assert len(measured) == (0 if skipped else 1)


@pytest.mark.parametrize(("max_empty_fraction", "skipped"), [(0.5, True), (0.95, False)])
def test_max_empty_fraction_skips_overlaps_with_more_background_than_it(max_empty_fraction, skipped):
    left, right = (tile + 200 for tile in _two_tiles())  # tissue well above the background
    _blank_overlap_rows(left, right, kept_rows=13, value=0.01)  # 80 % agarose-like background, never 0
    measured, skipped_pairs = _measure(left, right, max_empty_fraction=max_empty_fraction)
    assert len(skipped_pairs) == (1 if skipped else 0)
    assert len(measured) == (0 if skipped else 1)
    pair = (skipped_pairs or measured)[0]
    assert pair["empty_fraction"] == pytest.approx(0.8, abs=0.03)


def test_histogram_matching_undoes_a_nonlinear_gain_before_correlating():
    left, right = _two_tiles()
    right = (right / right.max()) ** 4 * 1000 + 1  # the same structure under a strongly nonlinear gain
    plain, _ = _measure(left, right)
    matched, _ = _measure(left, right, histogram_match=True)
    assert matched[0]["ncc"] > 0.98
    assert matched[0]["ncc"] > plain[0]["ncc"] + 0.03
    assert matched[0]["measured_dx"] == pytest.approx(STEP, abs=0.1)


def test_a_pair_weighs_its_ncc_clipped_to_0_1():
    pairs = [{"row_delta": 0, "col_delta": 1, "measured_dy": 0.0, "measured_dx": 48.0, "ncc": ncc}
             for ncc in (0.5, 0.9, -0.2, 1.3)]
    pairs.append({"row_delta": 1, "col_delta": 0, "measured_dy": 48.0, "measured_dx": 0.0})
    X, Y, w = pair_arrays(pair_table(pairs))
    np.testing.assert_allclose(w, [0.5, 0.9, 0.0, 1.0, 1.0])
    np.testing.assert_array_equal(X[-1], [1, 0])
    np.testing.assert_array_equal(Y[0], [0.0, 48.0])


def test_the_error_model_recovers_the_jitter_floor_and_the_measurement_error():
    rng = np.random.default_rng(7)
    floor, at_ncc_1 = 0.3, 0.05
    ncc = rng.uniform(0.1, 1.0, 4000)
    info = ncc**2
    sd = np.sqrt(floor**2 + at_ncc_1**2 / info)
    residuals = rng.normal(0, 1, (len(info), 2)) * sd[:, None]
    model = error_model(residuals, info)
    assert model["floor_px"] == pytest.approx(floor, rel=0.1)
    assert model["at_ncc_1_px"] == pytest.approx(at_ncc_1, rel=0.25)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("rules") / "input"
    synthetic.write_dataset(folder, synthetic.SyntheticSpec(nx=3, ny=3, tile_shape=(2, 96, 96), seed=2), n_slices=2)
    out = folder.parent / "out"
    runner.run(folder, out, RunOptions(), progress=False)
    return folder, out


def _a_chunk_file(store: Path) -> Path:
    """A data file of the store (not its metadata)."""
    return next(p for p in sorted(store.rglob("*")) if p.is_file() and p.name not in ("zarr.json", ".zattrs",
                                                                                       ".zarray", ".zgroup"))


@pytest.mark.slow
def test_a_changed_input_store_reruns_its_slice_only(small_run):
    folder, out = small_run
    store = sorted(folder.glob("*.ome.zarr"))[0]
    chunk = _a_chunk_file(store)
    chunk.write_bytes(chunk.read_bytes())  # the same bytes, rewritten: its slice must be looked at again
    result = runner.run(folder, out, RunOptions(), progress=False)
    assert result["ran"]["measure"] == 1 and result["ran"]["stitch"] == 1


@pytest.mark.slow
def test_another_package_version_reruns_every_step(small_run, monkeypatch):
    folder, out = small_run
    monkeypatch.setattr(resume, "__version__", "999.0")  # every step key holds the version
    result = runner.run(folder, out, RunOptions(), progress=False)
    assert result["ran"] == {"measure": 2, "fit": 1, "stitch": 2, "compare": 2, "report": 1}


@pytest.mark.parametrize(("field", "vocabulary"), [
    ("plane", "linumpy_motor.register.planes.PLANE_MODES"), ("backlash", "linumpy_motor.register.fit.BACKLASH_MODES"),
    ("placement", "linumpy_motor.pipeline.steps.PLACEMENTS"), ("blending", "linumpy_motor.stitch.blend.BLENDING_MODES"),
    ("ngff_version", "linumpy_motor.io.ngff.NGFF_VERSIONS"),
])
def test_the_runner_options_take_the_library_vocabularies(field, vocabulary):
    """The runner's typed options (which the CLI's choices and the Nextflow schema are checked against)
    take exactly the values the library module that owns each option accepts."""
    module, name = vocabulary.rsplit(".", 1)
    owned = getattr(importlib.import_module(module), name)
    assert set(typing.get_args(RunOptions.model_fields[field].annotation)) == set(owned)
