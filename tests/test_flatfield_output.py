"""The flat field is estimated once per slice, by the measurement, written as an output, and reused.

Ground truth: the synthetic slices are vignetted by a known field (:func:`synthetic.vignetting_field`),
so the written flat field is checked against it, and the stitch it feeds against the stitch that
estimates the flat field itself.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from linumpy_motor import synthetic
from linumpy_motor.pipeline import runner, steps
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.register import flatfield as ff
from linumpy_motor.stitch.assemble import stitch_slice
from linumpy_motor.synthetic import SyntheticSpec

ROOT = Path(__file__).resolve().parent.parent
SPEC = SyntheticSpec(nx=5, ny=5, tile_shape=(3, 128, 128), tissue_fraction=0.9)


@pytest.fixture(scope="module")
def dataset(make_synthetic_dataset):
    return make_synthetic_dataset(SPEC, n_slices=2)


@pytest.fixture(scope="module")
def run_counted(dataset, tmp_path_factory):
    """One embedded run, counting the flat-field estimates made (any estimator goes through
    ``flatfield_from_tiles``)."""
    calls = []
    real = ff.flatfield_from_tiles

    def counting(*args, **kwargs):
        calls.append(kwargs.get("label"))
        return real(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(ff, "flatfield_from_tiles", counting)
        patch.setattr("linumpy_motor.register.measure.flatfield_from_tiles", counting)
        out = tmp_path_factory.mktemp("run") / "out"
        result = runner.run(dataset.root, out, RunOptions(workers=1), progress=False)
    return out, result, calls


def _truth(h: int, w: int) -> np.ndarray:
    field = synthetic.vignetting_field((h, w), SPEC.vignetting)
    return field / field.mean()


def test_each_slice_flat_field_is_estimated_once_and_written(run_counted, dataset):
    out, _, calls = run_counted
    assert len(calls) == len(dataset.slice_ids)  # the stitch no longer estimates it again
    _, h, w = SPEC.tile_shape
    for sid in dataset.slice_ids:
        path = out / "flatfield" / f"slice_z{sid:02d}_flatfield" / ff.FLATFIELD_FILE
        field = np.load(path)
        assert field.shape == (h, w) and field.dtype == np.float32
        assert np.sqrt(np.mean((field / _truth(h, w) - 1) ** 2)) < 0.03  # the true vignetting, within 3 %


def test_the_stitch_uses_the_written_flat_field(run_counted, dataset, tmp_path):
    """The run's stitched slice is the stitch of that file, passed back with --flatfield FILE, bit for bit, and
    says the flat field was estimated (as the pairs do); it differs from no correction."""
    out, _, _ = run_counted
    sid = dataset.slice_ids[0]
    flat = out / "flatfield" / f"slice_z{sid:02d}_flatfield" / ff.FLATFIELD_FILE
    stitched = zarr.open_group(str(out / "stitched" / f"slice_z{sid:02d}_stitch_3d.ome.zarr"), mode="r")
    assert stitched.attrs["linumpy_motor"]["flatfield"] == "estimate"
    A = np.array(stitched.attrs["linumpy_motor"]["transform"])
    positions = np.array(stitched.attrs["linumpy_motor"]["positions"])
    again = stitch_slice(dataset.path(sid), tmp_path / "again.ome.zarr", A, positions=positions, flatfield=flat)
    assert again["flatfield"] == "estimate"  # as its folder's note says
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "again.ome.zarr"), mode="r")["0"][:],
                                  stitched["0"][:])
    stitch_slice(dataset.path(sid), tmp_path / "none.ome.zarr", A, positions=positions, flatfield="none")
    assert not np.array_equal(zarr.open_group(str(tmp_path / "none.ome.zarr"), mode="r")["0"][:], stitched["0"][:])


def test_a_rerun_remakes_a_missing_flat_field_and_nothing_downstream(run_counted, dataset):
    out, _, _ = run_counted
    folder = out / "flatfield" / f"slice_z{dataset.slice_ids[0]:02d}_flatfield"
    before = (folder / ff.FLATFIELD_FILE).read_bytes()
    for path in sorted(folder.iterdir()):
        path.unlink()
    folder.rmdir()
    result = runner.run(dataset.root, out, RunOptions(workers=1), progress=False)
    assert result["ran"]["measure"] == 1 and result["ran"]["stitch"] == 0  # the same flat field, bit for bit
    assert (folder / ff.FLATFIELD_FILE).read_bytes() == before


def test_none_writes_ones_that_stitch_as_no_correction(dataset, tmp_path):
    sid = dataset.slice_ids[0]
    steps.measure_pairs(dataset.path(sid), tmp_path / "p.json", overlap=SPEC.overlap, flatfield="none",
                        flatfield_output=tmp_path / "flat")
    ones = np.load(tmp_path / "flat" / ff.FLATFIELD_FILE)
    assert ones.shape == SPEC.tile_shape[1:] and (ones == 1).all()
    assert ff.describe_flatfield_file(tmp_path / "flat" / ff.FLATFIELD_FILE) == "none"
    kwargs = dict(transform=dataset.transform, blending="feather")
    stitch_slice(dataset.path(sid), tmp_path / "a.ome.zarr", flatfield=tmp_path / "flat" / ff.FLATFIELD_FILE,
                 **kwargs)
    stitch_slice(dataset.path(sid), tmp_path / "b.ome.zarr", flatfield="none", **kwargs)
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "a.ome.zarr"), mode="r")["0"][:],
                                  zarr.open_group(str(tmp_path / "b.ome.zarr"), mode="r")["0"][:])


def test_a_given_flat_field_is_written_as_given(dataset, tmp_path):
    _, h, w = SPEC.tile_shape
    given = tmp_path / "given.npy"
    np.save(given, (2.0 * _truth(h, w)).astype(np.float64))
    sid = dataset.slice_ids[0]
    steps.measure_pairs(dataset.path(sid), tmp_path / "p.json", overlap=SPEC.overlap, flatfield=given,
                        flatfield_output=tmp_path / "flat")
    written = tmp_path / "flat" / ff.FLATFIELD_FILE
    np.testing.assert_array_equal(np.load(written), np.load(given))
    np.testing.assert_array_equal(ff.load_flatfield(written, SPEC.tile_shape),
                                  ff.load_flatfield(given, SPEC.tile_shape))
    assert ff.describe_flatfield_file(written) == str(given.resolve())  # the file given, not its copy


def test_an_estimate_that_could_not_be_made_is_written_as_ones_and_named_so():
    field, description = ff.slice_flatfield("estimate", None, (2, 8, 10))
    assert field.shape == (8, 10) and (field == 1).all() and description == ff.ESTIMATE_FAILED


def test_the_measure_script_writes_the_flat_field_for_the_stitch_script(dataset, tmp_path):
    sid = dataset.slice_ids[0]
    measure = subprocess.run([sys.executable, str(ROOT / "bin" / "linum_motor_measure_pairs.py"),
                              str(dataset.path(sid)), str(tmp_path / "p.json"), "--overlap", str(SPEC.overlap),
                              "--flatfield-out", str(tmp_path / "slice_flatfield")], capture_output=True, text=True)
    assert measure.returncode == 0, measure.stderr
    flat = tmp_path / "slice_flatfield" / ff.FLATFIELD_FILE
    transform = tmp_path / "A.json"
    steps.fit_affine([tmp_path / "p.json"], transform)
    (tmp_path / "task").mkdir()  # Nextflow stages the file into the stitch's work folder as a link
    (tmp_path / "task" / ff.FLATFIELD_FILE).symlink_to(flat)
    for name, given in (("staged", tmp_path / "task" / ff.FLATFIELD_FILE), ("direct", flat)):
        stitch = subprocess.run([sys.executable, str(ROOT / "bin" / "linum_motor_stitch.py"), str(dataset.path(sid)),
                                 str(transform), str(tmp_path / f"{name}.ome.zarr"), "--flatfield", str(given)],
                                capture_output=True, text=True)
        assert stitch.returncode == 0, stitch.stderr
        meta = zarr.open_group(str(tmp_path / f"{name}.ome.zarr"), mode="r").attrs["linumpy_motor"]
        assert meta["flatfield"] == "estimate", name  # as the runner names it, not by a work folder's path


def test_a_flat_field_file_away_from_its_folder_is_named_by_its_path(run_counted, dataset, tmp_path):
    out, _, _ = run_counted
    sid = dataset.slice_ids[0]
    copy = tmp_path / ff.FLATFIELD_FILE
    copy.write_bytes((out / "flatfield" / f"slice_z{sid:02d}_flatfield" / ff.FLATFIELD_FILE).read_bytes())
    assert ff.describe_flatfield_file(copy) == str(copy.resolve())
    (tmp_path / ff.FLATFIELD_NOTE).write_text('{"flatfield": 3}')  # not a note this program writes
    assert ff.describe_flatfield_file(copy) == str(copy.resolve())


def test_a_run_with_a_given_flat_field_stitches_with_it_and_names_it(dataset, tmp_path):
    _, h, w = SPEC.tile_shape
    given = tmp_path / "given.npy"
    np.save(given, _truth(h, w).astype(np.float32))
    out = tmp_path / "out"
    runner.run(dataset.root, out, RunOptions(flatfield=str(given)), progress=False)
    sid = dataset.slice_ids[0]
    written = out / "flatfield" / f"slice_z{sid:02d}_flatfield" / ff.FLATFIELD_FILE
    np.testing.assert_array_equal(np.load(written), np.load(given))
    stitched = zarr.open_group(str(out / "stitched" / f"slice_z{sid:02d}_stitch_3d.ome.zarr"), mode="r")
    assert stitched.attrs["linumpy_motor"]["flatfield"] == str(given.resolve())


def test_no_gain_is_handed_back_for_db_data(dataset):
    """The measurement estimates its flat field on values it shifted to [0, 1]; for dB data (mostly negative)
    that is no gain of the data, so none is handed to the stitch (which would refuse to estimate one too)."""
    from linumpy_motor.io.grid import open_mosaic
    from linumpy_motor.register.measure import measure_volume

    grid = open_mosaic(dataset.path(dataset.slice_ids[0]))
    volume = np.asarray(grid.array[:], dtype=np.float64)
    for values, expect_gain in ((volume, True), (10 * np.log10(volume + 1e-3), False)):
        data = values.astype(np.float32)
        handed: list = []
        _, _, stats = measure_volume(lambda zs, rows, cols, data=data: data[zs, rows, cols], grid.tile_shape,
                                     grid.nx, grid.ny, SPEC.overlap, on_flatfield=handed.append)
        assert stats["flatfield"] == "estimate"  # the measurement corrected its shifted values either way
        assert len(handed) == 1 and (handed[0] is not None) == expect_gain
        if expect_gain:
            _, h, w = SPEC.tile_shape
            assert np.sqrt(np.mean((handed[0] / _truth(h, w) - 1) ** 2)) < 0.03
