"""Reading mosaic grids (NGFF 0.4 / 0.5, every dtype), finding slices, rejecting bad input."""

from __future__ import annotations

import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr

from linumpy_motor.errors import InputError
from linumpy_motor.io import ngff, outputs, schemas
from linumpy_motor.io.dataset import check_consistent, check_unique_ids, discover_slices
from linumpy_motor.io.grid import open_mosaic, read_block
from linumpy_motor.io.outputs import atomic_output, write_json
from linumpy_motor.mosaic import motor
from linumpy_motor.register import measure, planes
from linumpy_motor.register.flatfield import flatfield_file
from linumpy_motor.register.measure import MeasureOptions, measure_mosaic
from linumpy_motor.synthetic import SyntheticSpec

# non-square tiles and grid, so that a swap of rows and columns cannot pass
SMALL_SPEC = SyntheticSpec(nx=3, ny=2, tile_shape=(2, 96, 128), jitter_px=0.0)


def test_ngff_05_sharded_store(synthetic_dataset_v05):
    ds = synthetic_dataset_v05
    path = ds.path(ds.slice_ids[0])
    assert (path / "zarr.json").is_file() and not (path / ".zgroup").exists()
    assert "tile_shape" not in json.dumps(json.loads((path / "zarr.json").read_text())["attributes"])
    grid = open_mosaic(path)
    assert grid.array.shards == (3, 640, 640)  # the fixture really is sharded
    assert (grid.tile_shape, grid.nx, grid.ny) == ((3, 160, 160), 6, 7)
    assert grid.ngff_version == "0.5"
    assert grid.scale == pytest.approx((0.2, 0.003, 0.003))
    assert grid.units == ("millimeter",) * 3
    assert grid.path == path


@pytest.mark.parametrize(("version", "sharded"), [("0.5", False), ("0.4", True)])
def test_unsharded_05_and_04_stores(make_synthetic_dataset, version, sharded):
    ds = make_synthetic_dataset(SMALL_SPEC, n_slices=1, ngff_version=version, sharded=sharded)
    path = ds.path(0)
    grid = open_mosaic(path)
    if version == "0.4":
        assert (path / ".zgroup").is_file() and grid.array.metadata.zarr_format == 2
        assert json.loads((path / ".zattrs").read_text())["tile_shape"] == [2, 96, 128]
    else:
        assert grid.array.metadata.zarr_format == 3 and grid.array.shards is None
    assert (grid.tile_shape, grid.nx, grid.ny) == ((2, 96, 128), 3, 2)
    assert grid.array.shape == (2, 288, 256)
    assert grid.ngff_version == version
    assert grid.scale == pytest.approx((0.2, 0.003, 0.003))
    assert grid.units == ("millimeter",) * 3


def test_tile_shape_attribute_wins_over_chunks(tmp_path):
    path = tmp_path / "big_chunks.ome.zarr"
    ngff.write_image(path, np.zeros((2, 300, 400), np.float32), chunks=(2, 300, 400), version="0.4",
                     scale=(1.0, 0.01, 0.02), units=("micrometer", None, None),
                     extra_attrs={"tile_shape": [2, 100, 80]})
    grid = open_mosaic(path)
    assert (grid.tile_shape, grid.nx, grid.ny) == ((2, 100, 80), 3, 5)
    assert grid.scale == pytest.approx((1.0, 0.01, 0.02))
    assert grid.units == ("micrometer", None, None)


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "float32", "complex64"])
def test_every_dtype_is_measured_correctly(make_synthetic_dataset, dtype):
    spec = SyntheticSpec(nx=3, ny=4, tile_shape=(2, 160, 160), jitter_px=0.0, tissue_fraction=1.0, dtype=dtype)
    ds = make_synthetic_dataset(spec, n_slices=1)
    grid = open_mosaic(ds.path(0))
    assert grid.array.dtype == np.dtype(dtype)
    raw = grid.array[1, :160, :160]
    block = read_block(grid, 1, slice(0, 160), slice(0, 160))
    assert block.dtype == np.float32
    np.testing.assert_allclose(block, np.abs(raw), rtol=1e-6)
    result = motor.compute_registration_refinements(grid.array, grid.tile_shape, grid.nx, grid.ny, spec.overlap)
    assert len(result["pairs"]) == 3 * 3 + 2 * 4
    A, _ = motor.estimate_affine_from_pairs(result["pairs"], grid.tile_shape, spec.overlap)
    assert np.abs(A - ds.transform).max() <= 0.1


class CountingArray:
    """Wraps a zarr array and records every selection made on it."""

    def __init__(self, array) -> None:
        self._array = array
        self.requests: list[tuple] = []
        self.shape, self.ndim, self.dtype, self.chunks = array.shape, array.ndim, array.dtype, array.chunks

    def __getitem__(self, key):
        self.requests.append(key)
        return self._array[key]


def _tile_rows(requests, tile_h: int) -> list[int]:
    rows = [key[1] for key in requests]
    assert all(r.stop - r.start == tile_h and r.start % tile_h == 0 for r in rows)
    return sorted(r.start // tile_h for r in rows)


def _planes(requests) -> set[int]:
    """Planes touched by array requests (an int or a slice on the first axis)."""
    found = set()
    for key in requests:
        z = key[0]
        found |= set(range(*z.indices(10**6))) if isinstance(z, slice) else {int(z)}
    return found


def test_measuring_a_given_plane_reads_only_that_plane_one_tile_row_at_a_time(synthetic_dataset_small):
    grid = open_mosaic(synthetic_dataset_small.path(0))
    counting = CountingArray(grid.array)
    measure_mosaic(dataclasses.replace(grid, array=counting), 0.2, MeasureOptions(z=1, flatfield="none"))
    assert _planes(counting.requests) == {1}
    assert _tile_rows(counting.requests, 96) == [0, 1, 2]  # each tile row read once


def test_the_api_reads_only_the_requested_plane(synthetic_dataset_small):
    grid = open_mosaic(synthetic_dataset_small.path(0))
    for z in (0, 1):
        counting = CountingArray(grid.array)
        motor.compute_registration_refinements(counting, grid.tile_shape, grid.nx, grid.ny, 0.2, z=z,
                                               flatfield="none")
        assert _planes(counting.requests) == {z}
        assert _tile_rows(counting.requests, 96) == [0, 1, 2]
        counting = CountingArray(grid.array)  # the flat-field estimate reads tiles of the same plane
        motor.compute_registration_refinements(counting, grid.tile_shape, grid.nx, grid.ny, 0.2, z=z)
        assert _planes(counting.requests) == {z}


def test_choosing_the_plane_reads_the_depth_of_a_few_tiles_only(synthetic_dataset_small):
    grid = open_mosaic(synthetic_dataset_small.path(0))
    counting = CountingArray(grid.array)
    _, _, stats = measure_mosaic(dataclasses.replace(grid, array=counting), 0.2, MeasureOptions(flatfield="none"))
    deep = [key for key in counting.requests if len(_planes([key])) > 1]
    assert stats["plane_mode"] == "auto" and set(stats["plane_scores"]) == {"0", "1", "2"}
    assert len(deep) <= planes.SCORE_PAIRS  # one read per sampled pair, each two tiles wide
    assert all((key[1].stop - key[1].start) * (key[2].stop - key[2].start) == 2 * 96 * 128 for key in deep)


def test_pooling_measures_the_given_plane(synthetic_dataset_small, monkeypatch):
    seen = []
    original = measure.read_block

    def spy(grid, z, rows, cols):
        seen.append((grid.path, z))
        return original(grid, z, rows, cols)

    monkeypatch.setattr(measure, "read_block", spy)
    volumes = synthetic_dataset_small.volumes
    _, diagnostics = motor.pool_pairs_and_fit_global_affine(volumes, 0.2, z=1)
    assert _planes([(z,) for _, z in seen]) == {1}
    assert {entry["measurement"]["z"] for entry in diagnostics[motor.EXTRA_KEY]["per_slice"]} == {1}


def test_read_block_rejects_non_finite_and_corrupt_data(tmp_path):
    volume = np.ones((2, 64, 64), np.float32)
    volume[1, 40, 40] = np.nan
    path = tmp_path / "nan.ome.zarr"
    ngff.write_image(path, volume, chunks=(2, 32, 32))
    grid = open_mosaic(path)
    assert read_block(grid, 1, slice(0, 32), slice(0, 64)).shape == (32, 64)
    with pytest.raises(InputError, match="NaN") as info:
        read_block(grid, 1, slice(32, 64), slice(0, 64))
    assert info.value.path == path
    chunk = next(p for p in (path / "0").rglob("*") if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(b"not a chunk")
    with pytest.raises(InputError, match="cannot read data") as info:
        read_block(open_mosaic(path), 0, slice(None), slice(None))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("dtype, version", [("float32", "0.5"), ("float32", "0.4"), ("uint16", "0.5"),
                                            ("complex64", "0.5")])
def test_read_block_into_a_view_of_a_larger_buffer(tmp_path, dtype, version):
    """``out`` may be a strided view (the stitcher's padded tile): only it is written, the rest is untouched,
    whatever the stored dtype (float32 decodes straight into it, others are converted), and NaN is still refused."""
    volume = (np.arange(3 * 48 * 40) % 251).reshape(3, 48, 40).astype(dtype)
    path = tmp_path / f"{dtype}.ome.zarr"
    ngff.write_image(path, volume, chunks=(3, 24, 20), version=version)
    grid = open_mosaic(path)
    padded = np.full((3, 26, 22), -7.0, np.float32)
    inner = padded[:, 1:-1, 1:-1]
    assert read_block(grid, slice(0, 3), slice(24, 48), slice(20, 40), out=inner) is inner
    np.testing.assert_array_equal(inner, np.abs(volume[:, 24:48, 20:40]).astype(np.float32))
    assert (padded[:, [0, -1], :] == -7).all() and (padded[:, :, [0, -1]] == -7).all()
    if dtype == "float32":
        volume[1, 30, 30] = np.nan
        ngff.write_image(tmp_path / "nan.ome.zarr", volume, chunks=(3, 24, 20), version=version)
        with pytest.raises(InputError, match="NaN"):
            read_block(open_mosaic(tmp_path / "nan.ome.zarr"), slice(0, 3), slice(24, 48), slice(20, 40), out=inner)


# -- paths that are not a usable mosaic grid -------------------------------------------------------

def _plain_file(path: Path) -> None:
    path.write_text("not a store")


def _group_without_multiscales(path: Path) -> None:
    zarr.open_group(str(path), mode="w", zarr_format=3).attrs["something"] = 1


def _v2_group_without_multiscales(path: Path) -> None:
    zarr.open_group(str(path), mode="w", zarr_format=2)


def _bare_array(path: Path) -> None:
    zarr.create_array(str(path), shape=(2, 64, 64), chunks=(2, 32, 32), dtype="float32")


def _one_dimensional(path: Path) -> None:  # 2-D (y, x) grids are accepted (upstream's AIPs)
    group = ngff.create_group(path, "0.5")
    group.create_array("0", shape=(64,), chunks=(32,), dtype="float32")
    axes = [{"name": "x", "type": "space"}]
    datasets = [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1.0]}]}]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"axes": axes, "datasets": datasets}]}


def _not_whole_tiles(path: Path) -> None:
    ngff.write_image(path, np.zeros((2, 100, 64), np.float32), chunks=(2, 32, 32))


def _tile_attr_not_dividing(path: Path) -> None:
    ngff.write_image(path, np.zeros((2, 64, 64), np.float32), chunks=(2, 64, 64), version="0.4",
                     extra_attrs={"tile_shape": [2, 30, 32]})


def _unsupported_dtype(path: Path) -> None:
    ngff.write_image(path, np.zeros((2, 64, 64), bool), chunks=(2, 32, 32))


def _missing_level(path: Path) -> None:
    ngff.write_image(path, np.zeros((2, 64, 64), np.float32), chunks=(2, 32, 32))
    shutil.rmtree(path / "0")


def _no_datasets(path: Path) -> None:
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{"name": "image", "axes": []}]}


BAD_STORES = [
    pytest.param(None, "no such file", id="missing"),
    pytest.param(_plain_file, "not a directory", id="plain-file"),
    pytest.param(Path.mkdir, "not a zarr store", id="empty-dir"),
    pytest.param(_group_without_multiscales, "multiscales", id="v3-group-without-multiscales"),
    pytest.param(_v2_group_without_multiscales, "multiscales", id="v2-group-without-multiscales"),
    pytest.param(_bare_array, "not a zarr store", id="bare-array"),
    pytest.param(_one_dimensional, r"3-D \(z, y, x\) or 2-D \(y, x\)", id="1d-array"),
    pytest.param(_not_whole_tiles, "whole number of 32x32 tiles", id="not-whole-tiles"),
    pytest.param(_tile_attr_not_dividing, "whole number of 30x32 tiles", id="tile-attr-not-dividing"),
    pytest.param(_unsupported_dtype, "dtype", id="bool-dtype"),
    pytest.param(_missing_level, "level 0", id="missing-level-0"),
    pytest.param(_no_datasets, "multiscales", id="multiscales-without-datasets"),
]


@pytest.mark.parametrize(("make", "problem"), BAD_STORES)
def test_a_path_that_is_not_a_mosaic_grid_is_an_input_error_naming_it(tmp_path, make, problem):
    path = tmp_path / "slice_z03.ome.zarr"
    if make is not None:
        make(path)
    with pytest.raises(InputError, match=problem) as info:
        open_mosaic(path)
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: ")


def test_the_api_reports_a_bad_store_by_path(tmp_path, synthetic_dataset_v05):
    bad = tmp_path / "mosaic_grid_3d_z05.ome.zarr"
    _plain_file(bad)
    with pytest.raises(InputError) as info:
        motor.pool_pairs_and_fit_global_affine([(0, synthetic_dataset_v05.path(0)), (5, bad)], 0.2)
    assert info.value.path == bad


# -- datasets: folders and samplesheets ------------------------------------------------------------

def test_discover_a_folder(tmp_path):
    for name in ("mosaic_grid_3d_z07.ome.zarr", "mosaic_grid_3d_z02.ome.zarr", "mosaic_grid_3d_z10.ome.zarr"):
        (tmp_path / name).mkdir()
    (tmp_path / "notes.txt").write_text("ignored")
    (tmp_path / "other").mkdir()
    assert discover_slices(tmp_path) == [
        (2, tmp_path / "mosaic_grid_3d_z02.ome.zarr"),
        (7, tmp_path / "mosaic_grid_3d_z07.ome.zarr"),
        (10, tmp_path / "mosaic_grid_3d_z10.ome.zarr"),
    ]


def test_discover_a_samplesheet_with_relative_and_absolute_paths(tmp_path):
    elsewhere = tmp_path / "elsewhere" / "b.ome.zarr"
    sheet = tmp_path / "sheets" / "samples.csv"
    for folder in (sheet.parent, elsewhere, tmp_path / "data" / "a.ome.zarr"):
        folder.mkdir(parents=True)
    sheet.write_text(f"slice_id,path\n12,../data/a.ome.zarr\n3,{elsewhere}\n")
    assert discover_slices(sheet) == [(3, elsewhere), (12, sheet.parent / "../data/a.ome.zarr")]


def test_duplicate_slice_ids_name_the_two_stores(tmp_path):
    for name in ("a_z03.ome.zarr", "b_z3.ome.zarr", "stores/a.ome.zarr", "stores/b.ome.zarr"):
        (tmp_path / name).mkdir(parents=True)
    with pytest.raises(InputError, match="slice id 3 is in the names of both a_z03.ome.zarr and b_z3.ome.zarr") \
            as info:
        discover_slices(tmp_path)
    assert info.value.path == tmp_path
    tmp_path = tmp_path / "stores"
    sheet = tmp_path / "samples.csv"
    sheet.write_text("slice_id,path\n4,a.ome.zarr\n4,b.ome.zarr\n5,c.ome.zarr\n")
    with pytest.raises(InputError, match=f"line 3: slice id 4 is already given to {tmp_path / 'a.ome.zarr'} "
                                         r"\(line 2\)") as info:
        discover_slices(sheet)
    assert info.value.path == sheet


def test_a_samplesheet_row_whose_store_is_missing_is_named_by_its_line(tmp_path):
    (tmp_path / "a.ome.zarr").mkdir()
    sheet = tmp_path / "samples.csv"
    sheet.write_text("slice_id,path\n4,a.ome.zarr\n\n5,c.ome.zarr\n")
    with pytest.raises(InputError, match=f"line 4: {tmp_path / 'c.ome.zarr'}: no such file or directory") as info:
        discover_slices(sheet)
    assert info.value.path == sheet


@pytest.mark.parametrize(("content", "problem"), [
    ("id,file\n1,a.ome.zarr\n", "slice_id,path"),
    ("slice_id,path\n", "no slices"),
    ("slice_id,path\n1,a.ome.zarr\nseven,b.ome.zarr\n", "line 3"),
])
def test_bad_samplesheets(tmp_path, content, problem):
    (tmp_path / "a.ome.zarr").mkdir()
    sheet = tmp_path / "samples.csv"
    sheet.write_text(content)
    with pytest.raises(InputError, match=problem):
        discover_slices(sheet)


def test_bad_dataset_folders(tmp_path):
    with pytest.raises(InputError, match="no such"):
        discover_slices(tmp_path / "missing")
    with pytest.raises(InputError, match=r"no \*\.ome\.zarr"):
        discover_slices(tmp_path)
    (tmp_path / "single_z01.ome.zarr").mkdir()
    with pytest.raises(InputError, match="single slice"):
        discover_slices(tmp_path / "single_z01.ome.zarr")
    (tmp_path / "no_number.ome.zarr").mkdir()
    with pytest.raises(InputError, match="no slice number"):
        discover_slices(tmp_path)


# -- atomic writes ---------------------------------------------------------------------------------

def test_write_json_is_atomic_and_sorted(tmp_path, monkeypatch):
    path = tmp_path / "out.json"
    write_json(path, {"b": 1, "a": [1.5, None]})
    written = {"a": [1.5, None], "b": 1, "linumpy_motor": outputs.marker("output")}
    assert path.read_text() == json.dumps(written, indent=2) + "\n"

    def fail(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(outputs.json, "dumps", fail)
    with pytest.raises(RuntimeError, match="disk full"):
        write_json(path, {"c": 3})
    monkeypatch.undo()
    assert json.loads(path.read_text()) == written
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


def test_atomic_output_replaces_a_store_only_when_complete(tmp_path):
    store = tmp_path / "x.ome.zarr"
    with atomic_output(store) as tmp:
        tmp.mkdir()
        (tmp / "old").write_text("old")

    def interrupted_write():
        with atomic_output(store) as tmp:
            tmp.mkdir()
            (tmp / "new").write_text("half")
            raise ValueError("interrupted")

    with pytest.raises(ValueError, match="interrupted"):
        interrupted_write()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.zarr"]
    assert (store / "old").read_text() == "old"
    with atomic_output(store) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("new")
    assert sorted(p.name for p in store.iterdir()) == [outputs.MARKER_FILE, "new"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.ome.zarr"]


@pytest.mark.parametrize(("determinant", "singular"), [(0.0, True), (1e-9, True), (-1e-9, True), (1.5e-9, False),
                                                      (-2e-9, False)])
def test_every_reader_of_a_transform_draws_the_singular_line_at_the_same_determinant(tmp_path, determinant,
                                                                                    singular):
    """A JSON file, an upstream .npy and a matrix passed in are one rule: singular when |det| <= 1e-9."""

    A = [[determinant, 0.0], [0.0, 1.0]]
    (tmp_path / "t.json").write_text(json.dumps({"transform": A}))
    np.save(tmp_path / "t.npy", np.array(A))
    readers = [lambda: schemas.load(tmp_path / "t.json", schemas.TransformFile),
               lambda: schemas.load_transform(tmp_path / "t.npy"), lambda: schemas.check_transform(A)]
    assert schemas.is_singular(A) is singular
    for read in readers:
        if singular:
            with pytest.raises(InputError, match="singular"):
                read()
        else:
            read()


@pytest.mark.parametrize(("matrix", "problem"), [
    (np.eye(3), "expected a 2x2 numeric matrix, got shape [3, 3]"),
    ([[1, 0], [0]], "expected a 2x2 numeric matrix"),
    (np.array([["a", "b"], ["c", "d"]]), "expected a 2x2 numeric matrix"),
    ([[np.nan, 0], [0, 1]], "not finite"),
    ([[np.inf, 0], [0, 1]], "not finite"),
])
def test_check_transform_names_the_problem(tmp_path, matrix, problem):
    with pytest.raises(InputError) as info:
        schemas.check_transform(matrix, tmp_path / "t.npy")
    assert info.value.path == tmp_path / "t.npy" and problem in info.value.problem


def test_inputs_that_disagree_are_refused_naming_the_odd_one():
    check_consistent("tile shape", [("a", (4, 64, 64)), ("b", (4, 64, 64))])
    with pytest.raises(InputError, match=r"^c: tile shape \(4, 32, 64\) differs from \(4, 64, 64\) of a$"):
        check_consistent("tile shape", [("a", (4, 64, 64)), ("b", (4, 64, 64)), ("c", (4, 32, 64))])
    check_unique_ids([1, 2, 3], "sheet.csv")
    with pytest.raises(InputError, match=r"sheet.csv: slice id\(s\) \[2\] appear more than once"):
        check_unique_ids([1, 2, 3, 2], "sheet.csv")


def test_a_npy_file_is_known_by_its_suffix_in_any_case(tmp_path):
    A = np.array([[64.0, 1.0], [-1.0, 64.0]])
    np.save(tmp_path / "t.npy", A)
    (tmp_path / "t.npy").rename(tmp_path / "T.NPY")
    assert np.array_equal(schemas.read_transform(tmp_path / "T.NPY"), A)
    assert flatfield_file(tmp_path / "FLAT.NPY") == tmp_path / "FLAT.NPY"
    with pytest.raises(InputError, match="flat field must be one of"):
        flatfield_file(tmp_path / "flat.tif")


def test_a_file_that_is_no_csv_is_refused_as_input(tmp_path):
    (tmp_path / "slices.tsv").write_text("slice_id\tpath\n")
    with pytest.raises(InputError, match="slices.tsv: neither a folder of slices nor a .csv samplesheet"):
        discover_slices(tmp_path / "slices.tsv")


def _pairs_content(**changes) -> dict:
    pair = {"tile": [0, 0], "row_delta": 0, "col_delta": 1, "measured_dy": 0.0, "measured_dx": 48.0}
    content = {"version": "x", "slice_id": 1, "source": "s.ome.zarr", "tile_shape": [2, 64, 64], "grid": [2, 3],
               "overlap": 0.2, "z": None, "pairs": [pair], "skipped": [], "stats": {}}
    return {**content, **changes}


@pytest.mark.parametrize("changes, problem", [
    ({"tile_shape": [2, 0, 64]}, "tile_shape.1: Input should be greater than 0"),
    ({"grid": [0, 3]}, "grid.0: Input should be greater than 0"),
    ({"pairs": [{"tile": [1, 2], "row_delta": 0, "col_delta": 1, "measured_dy": 0, "measured_dx": 48}]},
     "pairs.0: tile [1, 2] and its neighbour are not both in the grid [2, 3]"),
    ({"pairs": [{"tile": [2, 0], "row_delta": 0, "col_delta": 1, "measured_dy": 0, "measured_dx": 48}]},
     "pairs.0: tile [2, 0] and its neighbour are not both in the grid [2, 3]"),
    ({"pairs": [{"tile": [0, 1], "row_delta": 0, "col_delta": -1, "measured_dy": 0, "measured_dx": -48}]},
     "pairs.0: step [0, -1] is not to a right or lower neighbour"),
])
def test_a_pairs_file_whose_pairs_leave_the_grid_is_refused(tmp_path, changes, problem):
    """A pair off the grid would index another tile (the last column's right neighbour is the next row's first)."""
    path = tmp_path / "slice_z01_pairs.json"
    path.write_text(json.dumps(_pairs_content(**changes)))
    with pytest.raises(InputError, match=re.escape(f"{path}: invalid PairsFile: {problem}")):
        schemas.load(path, schemas.PairsFile)
    schemas.validate(_pairs_content(), schemas.PairsFile, path)
