"""Fitting upstream linumpy's files: its transform .npy, its 2-D AIP grids, its writer's layout, and
readers of our stitched output (the NGFF validator ome-zarr-models, ome-zarr-py)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import zarr
from conftest import true_pair_displacement
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr_models.v04.image import Image as ImageV04
from ome_zarr_models.v05.image import Image as ImageV05

from linumpy_motor import synthetic
from linumpy_motor.errors import InputError
from linumpy_motor.io import schemas
from linumpy_motor.io.grid import open_mosaic
from linumpy_motor.pipeline import steps
from linumpy_motor.stitch.assemble import stitch_slice

SPEC = synthetic.SyntheticSpec(nx=3, ny=4, tile_shape=(4, 96, 96), seed=6)
SCALE_MM = (0.2, 0.003, 0.003)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("interop")
    truth = synthetic.write_dataset(root / "ours", SPEC, n_slices=1, save_scenes=False)
    path = root / "ours" / truth["slices"]["0"]["path"]
    volume = np.asarray(open_mosaic(path).array[:])
    return {"root": root, "volume": volume, "A": np.array(truth["transform"]),
            "positions": np.array(truth["slices"]["0"]["positions"])}


def upstream_grid(path: Path, data: np.ndarray, tile_hw: tuple[int, int]) -> Path:
    """A mosaic grid as upstream's acquisition writer lays it out, written with zarr alone: NGFF 0.5
    (zarr v3), one chunk per tile, shards of 2 x 2 tiles, a single level, scale in millimetres.
    ``data`` is (Z, Y, X) or an AIP (Y, X)."""
    axes = ["z", "y", "x"][-data.ndim:]
    chunk = (*data.shape[:-2], *tile_hw)
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", shape=data.shape, dtype=data.dtype, chunks=chunk,
                       shards=(*chunk[:-2], 2 * tile_hw[0], 2 * tile_hw[1]), dimension_names=axes)[...] = data
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "name": path.name, "axes": [{"name": a, "type": "space", "unit": "millimeter"} for a in axes],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale",
                                                                   "scale": list(SCALE_MM[-data.ndim:])}]}],
    }]}
    return path


def _check_pairs(pairs: list[dict], positions: np.ndarray, tolerance_px: float) -> None:
    assert len(pairs) == SPEC.nx * (SPEC.ny - 1) + (SPEC.nx - 1) * SPEC.ny
    errors = [np.abs(np.array([p["measured_dy"], p["measured_dx"]]) - true_pair_displacement(p, positions, SPEC.ny))
              for p in pairs]
    assert np.max(errors) < tolerance_px


def test_a_grid_written_the_upstream_way_is_read_and_measured(data, tmp_path):
    store = upstream_grid(tmp_path / "mosaic_grid_3d_z05.ome.zarr", data["volume"], SPEC.tile_shape[1:])
    grid = open_mosaic(store)
    assert (grid.nx, grid.ny, grid.tile_shape) == (SPEC.nx, SPEC.ny, SPEC.tile_shape)
    assert grid.scale == SCALE_MM and grid.units == ("millimeter",) * 3
    content = steps.measure_pairs(store, tmp_path / "p.json", overlap=SPEC.overlap)
    assert content["slice_id"] == 5
    _check_pairs(content["pairs"], data["positions"], 0.5)


def test_a_2d_aip_grid_is_measured_and_stitched_as_one_plane(data, tmp_path):
    aip = data["volume"].mean(axis=0).astype(np.float32)
    store = upstream_grid(tmp_path / "mosaic_grid_z05_aip.ome.zarr", aip, SPEC.tile_shape[1:])
    grid = open_mosaic(store)
    assert grid.tile_shape == (1, *SPEC.tile_shape[1:]) and grid.scale == (1.0, *SCALE_MM[1:])
    content = steps.measure_pairs(store, tmp_path / "p.json", overlap=SPEC.overlap)
    _check_pairs(content["pairs"], data["positions"], 0.5)

    flat = upstream_grid(tmp_path / "mosaic_grid_3d_z05.ome.zarr", data["volume"], SPEC.tile_shape[1:])
    options = dict(flatfield="none", block_px=64, pyramid_top_px=64)
    summary = stitch_slice(store, tmp_path / "aip.ome.zarr", data["A"], **options)
    stitch_slice(flat, tmp_path / "volume.ome.zarr", data["A"], **options)
    assert summary["shape"][0] == 1  # (1, Y, X): what 3-D readers downstream expect
    stitched_aip = np.asarray(zarr.open_group(str(tmp_path / "aip.ome.zarr"))["0"][0])
    stitched_volume = np.asarray(zarr.open_group(str(tmp_path / "volume.ome.zarr"))["0"][:])
    # stitching is linear in the data: the stitched AIP is the AIP of the stitched volume
    assert np.allclose(stitched_aip, stitched_volume.mean(axis=0), atol=1e-4 * np.abs(stitched_volume).max())


def test_complex_data_are_stitched_as_magnitude_with_one_notice(tmp_path, caplog):
    spec = synthetic.SyntheticSpec(nx=2, ny=3, tile_shape=(2, 64, 64), dtype="complex64", seed=2)
    truth = synthetic.write_dataset(tmp_path / "data", spec, n_slices=1, save_scenes=False)
    store = tmp_path / "data" / truth["slices"]["0"]["path"]
    with caplog.at_level(logging.INFO, logger="linumpy_motor"):
        steps.measure_pairs(store, tmp_path / "p.json", overlap=spec.overlap)
        stitch_slice(store, tmp_path / "s.ome.zarr", np.array(truth["transform"]), block_px=64)
    notices = [r.getMessage() for r in caplog.records if "magnitude" in r.getMessage()]
    assert len(notices) == 1 and "complex64" in notices[0] and str(store) in notices[0]
    assert zarr.open_group(str(tmp_path / "s.ome.zarr"))["0"].dtype == np.float32


def test_upstream_npy_transform_and_a_bare_json_are_accepted(tmp_path):
    A = np.array([[76.4, -1.2], [0.9, 77.1]])
    np.save(tmp_path / "z05_transform_xy.npy", A)
    (tmp_path / "bare.json").write_text(json.dumps({"transform": A.tolist()}))
    for source in (tmp_path / "z05_transform_xy.npy", tmp_path / "bare.json"):
        assert np.array_equal(schemas.read_transform(source), A)
        content = steps.copy_transform(source, tmp_path / "motor_transform.json")
        assert content["transform"] == A.tolist() and content["diagnostics"]["given_transform"] == source.name


@pytest.mark.parametrize(("name", "write", "problem"), [
    ("t.npy", lambda p: np.save(p, np.eye(3)), "expected a 2x2 numeric matrix, got shape [3, 3]"),
    ("t.npy", lambda p: np.save(p, np.zeros((2, 2))), "singular"),
    ("t.npy", lambda p: p.write_text("not numpy"), "not a readable .npy matrix"),
    ("t.json", lambda p: np.save(p.with_suffix(".tmp.npy"), np.eye(2)) or p.write_bytes(
        p.with_suffix(".tmp.npy").read_bytes()), "not a JSON text file"),
    ("t.json", lambda p: p.write_text(json.dumps({"matrix": [[1, 0], [0, 1]]})), "transform"),
])
def test_a_bad_transform_file_is_named_in_the_error(tmp_path, name, write, problem):
    path = tmp_path / name
    write(path)
    with pytest.raises(InputError) as error:
        schemas.read_transform(path)
    assert str(error.value).startswith(str(path)) and problem in str(error.value)


@pytest.fixture(scope="module")
def stitched(data, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("stitched")
    source = upstream_grid(root / "mosaic_grid_3d_z05.ome.zarr", data["volume"], SPEC.tile_shape[1:])
    return {version: Path(stitch_slice(source, root / f"slice_z05_stitch_3d_{version}.ome.zarr", data["A"],
                                       ngff_version=version, block_px=64, pyramid_top_px=64)["output"])
            for version in ("0.4", "0.5")}


def test_ngff_04_output_uses_slash_chunk_keys(stitched):
    store = stitched["0.4"]
    assert json.loads((store / "0" / ".zarray").read_text())["dimension_separator"] == "/"
    assert (store / "0" / "0" / "0" / "0").is_file() and not (store / "0" / "0.0.0").exists()


@pytest.mark.parametrize(("version", "model"), [("0.4", ImageV04), ("0.5", ImageV05)])
def test_stitched_output_passes_the_ngff_validator(stitched, version, model):
    image = model.from_zarr(zarr.open_group(str(stitched[version]), mode="r"))
    multiscale = (image.attributes.multiscales if version == "0.4" else image.attributes.ome.multiscales)[0]
    assert [axis.name for axis in multiscale.axes] == ["z", "y", "x"]
    assert multiscale.datasets[0].coordinateTransformations[0].scale == list(SCALE_MM)


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_py_reads_the_stitched_pyramid(stitched, version):
    node = next(iter(Reader(parse_url(str(stitched[version])))()))
    shapes = [level.shape for level in node.data]
    level0 = zarr.open_group(str(stitched[version]), mode="r")["0"]
    assert shapes[0] == level0.shape and len(shapes) > 1
    assert all(s[1] == -(-shapes[0][1] // 2**k) for k, s in enumerate(shapes))
    assert np.array_equal(np.asarray(node.data[0][1]), level0[1])
