"""Flat-field estimation against the synthetic vignetting, and loading a known flat field."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from linumpy_motor import synthetic
from linumpy_motor.errors import InputError
from linumpy_motor.io import ngff
from linumpy_motor.io.grid import open_mosaic
from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT
from linumpy_motor.register import flatfield
from linumpy_motor.register.measure import MeasureOptions, measure_mosaic, measure_volume

BIN = Path(__file__).resolve().parents[1] / "bin"


def _write_slice(folder, spec):
    synthetic.write_dataset(folder, spec, n_slices=1, save_scenes=False)
    return open_mosaic(folder / "mosaic_grid_3d_z00.ome.zarr")


def _normalised(field):
    return field / field.mean()


@pytest.mark.parametrize("strength, seed", [(0.3, 0), (0.45, 2)])
def test_estimate_recovers_the_synthetic_vignetting(tmp_path, strength, seed):
    spec = synthetic.SyntheticSpec(nx=8, ny=8, tile_shape=(3, 64, 64), jitter_px=0.0, vignetting=strength, seed=seed)
    grid = _write_slice(tmp_path, spec)
    truth = _normalised(synthetic.vignetting_field((64, 64), strength))
    estimate = flatfield.estimate_flatfield(grid)
    assert estimate.shape == (64, 64) and estimate.dtype == np.float32
    assert estimate.mean() == pytest.approx(1.0, abs=1e-5)
    error = estimate - truth
    assert np.sqrt(np.mean(error**2)) < 0.015
    assert np.abs(error).max() < 0.035
    # a flat (uncorrected) field is far from the truth, so the tolerance above means something
    assert np.sqrt(np.mean((1 - truth) ** 2)) > 0.05


def test_estimate_reads_only_a_subset_of_central_planes(tmp_path, monkeypatch):
    spec = synthetic.SyntheticSpec(nx=6, ny=6, tile_shape=(9, 48, 48), jitter_px=0.0, seed=1)
    grid = _write_slice(tmp_path, spec)
    reads = []
    real_read = flatfield.read_block

    def counting_read(grid_, z, rows, cols):
        block = real_read(grid_, z, rows, cols)
        reads.append(block.shape)
        return block

    monkeypatch.setattr(flatfield, "read_block", counting_read)
    estimate = flatfield.estimate_flatfield(grid, n_planes=3, max_tiles=20)
    assert estimate is not None
    assert len(reads) == 20
    assert all(shape == (3, 48, 48) for shape in reads)  # one tile, three central planes per read


def test_too_few_tissue_tiles_gives_no_estimate(tmp_path, caplog):
    rng = np.random.default_rng(0)
    volume = rng.normal(0, 0.01, (2, 3 * 32, 3 * 32)).clip(0).astype(np.float32)
    volume[:, :32, :32] += 1.0  # a single tissue tile
    ngff.write_image(tmp_path / "g.ome.zarr", volume, chunks=(2, 32, 32))
    grid = open_mosaic(tmp_path / "g.ome.zarr")
    assert flatfield.estimate_flatfield(grid) is None
    assert "tissue tiles" in caplog.text
    field, description = flatfield.resolve_flatfield(grid, "estimate")
    assert field is None and "none applied" in description
    stats = measure_mosaic(grid, 0.2, MeasureOptions(z=0, background_test=False))[2]
    assert stats["flatfield"] == description and not stats["flatfield_applied"]  # measure says it as stitch does


def test_load_known_flatfield(tmp_path):
    field = synthetic.vignetting_field((32, 40), 0.3) * 5.0
    np.save(tmp_path / "flat2d.npy", field)
    np.save(tmp_path / "flat3d.npy", np.stack([field, 2 * field]))
    loaded = flatfield.load_flatfield(tmp_path / "flat2d.npy", (2, 32, 40))
    np.testing.assert_allclose(loaded, field / field.mean(), rtol=1e-6)
    loaded3 = flatfield.load_flatfield(tmp_path / "flat3d.npy", (2, 32, 40))
    assert loaded3.shape == (2, 32, 40) and loaded3.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(loaded3[1], 2 * loaded3[0], rtol=1e-6)


@pytest.mark.parametrize("content, message", [
    (np.ones((32, 41)), "does not match"),
    (np.ones((3, 32, 40)), "does not match"),
    (np.zeros((32, 40)), "positive"),
    (np.full((32, 40), np.nan), "finite"),
])
def test_bad_known_flatfield(tmp_path, content, message):
    np.save(tmp_path / "flat.npy", content)
    with pytest.raises(InputError, match=message):
        flatfield.load_flatfield(tmp_path / "flat.npy", (2, 32, 40))


def test_resolve_options(tmp_path):
    volume = np.ones((2, 64, 64), dtype=np.float32)
    ngff.write_image(tmp_path / "g.ome.zarr", volume, chunks=(2, 32, 32))
    grid = open_mosaic(tmp_path / "g.ome.zarr")
    assert flatfield.resolve_flatfield(grid, "none") == (None, "none")
    assert flatfield.resolve_flatfield(grid, None) == (None, "none")
    with pytest.raises(InputError, match="estimate"):
        flatfield.resolve_flatfield(grid, "flat.tif")
    with pytest.raises(InputError, match="cannot read"):
        flatfield.resolve_flatfield(grid, tmp_path / "missing.npy")


def test_deep_chunks_read_fewer_tiles_and_still_recover_the_vignetting(tmp_path, monkeypatch):
    """Whole-tile chunks of 9 planes: each read decodes the whole tile, so only 12 of 64 tiles are read."""
    spec = synthetic.SyntheticSpec(nx=8, ny=8, tile_shape=(9, 64, 64), jitter_px=0.0, vignetting=0.3, seed=0)
    grid = _write_slice(tmp_path, spec)
    reads = []
    real_read = flatfield.read_block
    monkeypatch.setattr(flatfield, "read_block", lambda *args: reads.append(args[2]) or real_read(*args))
    estimate = flatfield.estimate_flatfield(grid)
    assert len(reads) == flatfield.DEEP_CHUNK_MIN_TILES
    error = estimate - _normalised(synthetic.vignetting_field((64, 64), 0.3))
    assert np.sqrt(np.mean(error**2)) < 0.02


def test_measure_and_stitch_refuse_a_misspelt_mode_with_the_same_line(tmp_path, capsys):
    """``--flatfield estimat``: measuring tried to read it as a file; now both steps give the one message."""
    store = tmp_path / "mosaic_grid_3d_z00.ome.zarr"
    ngff.write_image(store, np.ones((2, 64, 64), dtype=np.float32), chunks=(2, 32, 32))
    (tmp_path / "t.json").write_text(json.dumps({"transform": [[28.0, 0.0], [0.0, 28.0]]}))
    outputs = {"linum_motor_measure_pairs.py": [tmp_path / "p.json"],
               "linum_motor_stitch.py": [tmp_path / "t.json", tmp_path / "s.ome.zarr"]}
    said = []
    for script, args in outputs.items():
        main = runpy.run_path(str(BIN / script), run_name="tested")["main"]
        assert main([str(store), *map(str, args), "--flatfield", "estimat"]) == EXIT_BAD_INPUT
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith(f"{script}: error: "), err
        said.append(err.removeprefix(f"{script}: error: "))
        assert not args[-1].exists()
    assert said[0] == said[1] == "estimat: flat field must be one of ('estimate', 'none') or a .npy file\n"


@pytest.mark.parametrize("mode", ["Estimate", "flat.tif", "estimate "])
def test_the_library_refuses_a_misspelt_mode_before_reading(mode):
    def read(zs, rows, cols):
        raise AssertionError("nothing may be read for a misspelt mode")

    with pytest.raises(InputError) as measured:
        measure_volume(read, (3, 32, 32), 2, 2, 0.2, MeasureOptions(flatfield=mode))
    with pytest.raises(InputError) as chosen:
        flatfield.choose_flatfield(mode, (3, 32, 32), read)
    assert str(measured.value) == str(chosen.value) and "must be one of ('estimate', 'none')" in str(chosen.value)


def test_choose_flatfield_reads_each_kind_of_option(tmp_path):
    field = synthetic.vignetting_field((32, 40), 0.3)
    np.save(tmp_path / "flat.npy", field)
    estimated = np.full((32, 40), 2.0, dtype=np.float32)
    assert flatfield.choose_flatfield("none", (2, 32, 40), lambda: estimated) == (None, "none")
    assert flatfield.choose_flatfield(None, (2, 32, 40), lambda: estimated) == (None, "none")
    assert flatfield.choose_flatfield("estimate", (2, 32, 40), lambda: estimated) == (estimated, "estimate")
    assert flatfield.choose_flatfield("estimate", (2, 32, 40), lambda: None) == (None, flatfield.ESTIMATE_FAILED)
    assert flatfield.choose_flatfield(field, (2, 32, 40), lambda: estimated) == (field, "given")
    loaded, description = flatfield.choose_flatfield(str(tmp_path / "flat.npy"), (2, 32, 40), lambda: estimated)
    np.testing.assert_allclose(loaded, field / field.mean(), rtol=1e-6)
    assert description == str((tmp_path / "flat.npy").resolve())
