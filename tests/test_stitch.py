"""Stitching against the synthetic truth: accuracy, seams, sub-pixel placement, streaming, OME-Zarr output."""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import zarr
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from scipy import ndimage

from linumpy_motor import synthetic
from linumpy_motor.backend import gpu_available
from linumpy_motor.errors import InputError
from linumpy_motor.io import ngff
from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT
from linumpy_motor.register import geometry
from linumpy_motor.stitch import assemble, pyramid, tiles
from linumpy_motor.stitch.assemble import stitch_slice
from linumpy_motor.stitch.plan import CACHE_BYTES, make_layout, plan_stitch
from linumpy_motor.stitch.render import _lerp

SCRIPT = Path(__file__).resolve().parents[1] / "bin" / "linum_motor_stitch.py"
SPEC = synthetic.SyntheticSpec(nx=3, ny=4, tile_shape=(4, 96, 96), jitter_px=0.0, seed=0)


def _dataset(folder: Path, spec=SPEC, **options) -> dict:
    truth = synthetic.write_dataset(folder, spec, n_slices=1, **options)
    entry = truth["slices"]["0"]
    return {"path": folder / entry["path"], "scene": np.load(folder / entry["scene"]),
            "origin": np.array(entry["scene_origin"]), "A": np.array(truth["transform"]), "spec": spec}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return _dataset(tmp_path_factory.mktemp("synthetic"))


def _stitch(data, out, **options):
    options = {"block_px": 64, **options}
    summary = stitch_slice(data["path"], out, options.pop("transform", data["A"]), **options)
    return summary, zarr.open_group(str(out), mode="r")


def _reference(data, shape) -> np.ndarray:
    """The true scene on the canvas grid: canvas (0, 0) is scene pixel origin + min_ij A @ [i, j]."""
    spec = data["spec"]
    corner = (geometry.grid_indices(spec.nx, spec.ny) @ data["A"].T).min(axis=0) + data["origin"]
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    return ndimage.map_coordinates(data["scene"], [yy + corner[0], xx + corner[1]], order=1)


def _coverage(shape, spec) -> tuple[np.ndarray, np.ndarray]:
    """Per canvas pixel: how many tiles cover it, and whether it is in the central half of a tile."""
    _, h, w = spec.tile_shape
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    cover = np.zeros(shape, dtype=int)
    core = np.zeros(shape, dtype=bool)
    for py, px in geometry.affine_positions(spec.nx, spec.ny, synthetic.true_transform(spec)):
        u, v = yy - py, xx - px
        cover += (u >= 0) & (u <= h - 1) & (v >= 0) & (v <= w - 1)
        core |= (u >= h / 4) & (u <= 3 * h / 4) & (v >= w / 4) & (v <= 3 * w / 4)
    return cover, core


def _tissue(reference: np.ndarray, spec) -> np.ndarray:
    """Tissue that some tile covers (the rotated grid leaves uncovered slivers at the canvas border)."""
    covered = ndimage.binary_erosion(_coverage(reference.shape, spec)[0] > 0, iterations=4)
    return covered & (ndimage.gaussian_filter(reference, 4) > 0.3 * np.percentile(reference, 95))


def _ncc(image: np.ndarray, reference: np.ndarray, spec, sigma: float = 1.5) -> float:
    mask = _tissue(reference, spec)
    a = ndimage.gaussian_filter(image, sigma)[mask]
    b = ndimage.gaussian_filter(reference, sigma)[mask]
    a, b = a - a.mean(), b - b.mean()
    return float(a @ b / np.sqrt((a @ a) * (b @ b)))


def _seam_metric(image: np.ndarray, reference: np.ndarray, spec) -> tuple[float, float]:
    """Seam band (pixels covered by >= 2 tiles) against tile cores (the central half of a lone tile).

    Returns
    -------
    brightness : float
        median(stitched / truth) in the band over the same in the cores (1: seams neither brighter
        nor darker), both lightly smoothed.
    sharpness : float
        Gradient energy of stitched over truth in the band, over the same in the cores, divided by
        brightness squared (1: seams not blurrier).
    """
    cover, core = _coverage(image.shape, spec)
    tissue = _tissue(reference, spec)
    band, core = (cover >= 2) & tissue, core & (cover == 1) & tissue
    a, b = ndimage.gaussian_filter(image, 2), ndimage.gaussian_filter(reference, 2)
    brightness = np.median(a[band] / b[band]) / np.median(a[core] / b[core])
    ga = sum(g**2 for g in np.gradient(ndimage.gaussian_filter(image, 1)))
    gb = sum(g**2 for g in np.gradient(ndimage.gaussian_filter(reference, 1)))
    sharpness = (ga[band].mean() / gb[band].mean()) / (ga[core].mean() / gb[core].mean()) / brightness**2
    return float(brightness), float(sharpness)


def test_matches_the_true_scene(data, tmp_path):
    summary, group = _stitch(data, tmp_path / "s.ome.zarr")
    spec = data["spec"]
    assert summary["shape"] == list(geometry.output_shape(spec.nx, spec.ny, spec.tile_shape, data["A"]))
    assert summary["backend"] == "numpy" and summary["flatfield"] == "estimate" and summary["dtype"] == "float32"
    image = group["0"][spec.tile_shape[0] // 2]
    assert image.dtype == np.float32
    with_flat = _ncc(image, _reference(data, image.shape), spec)
    _, plain = _stitch(data, tmp_path / "plain.ome.zarr", flatfield="none")
    without_flat = _ncc(plain["0"][spec.tile_shape[0] // 2], _reference(data, image.shape), spec)
    assert with_flat >= 0.99  # 0.9986 measured; 0.9767 without the flat field
    assert with_flat > without_flat + 0.01
    # canvas registration: a half-pixel shift of the reference lowers the match
    shifted = ndimage.shift(_reference(data, image.shape), (0.5, 0.5), order=1)
    assert _ncc(image, shifted, spec) < with_flat - 0.005


def test_seams_vanish_with_the_flat_field(data, tmp_path):
    mid = data["spec"].tile_shape[0] // 2
    _, group = _stitch(data, tmp_path / "s.ome.zarr")
    image = group["0"][mid]
    reference = _reference(data, image.shape)
    brightness, sharpness = _seam_metric(image, reference, data["spec"])
    assert abs(brightness - 1) < 0.03 and abs(sharpness - 1) < 0.05
    _, group = _stitch(data, tmp_path / "none.ome.zarr", flatfield="none")
    brightness, _ = _seam_metric(group["0"][mid], reference, data["spec"])
    assert brightness < 0.95  # vignetted tile edges make every seam darker
    wrong = data["A"] + np.diag([2.0, 2.0])  # tiles 2 px off per step: seams double and blur
    _, group = _stitch(data, tmp_path / "wrong.ome.zarr", transform=wrong)
    _, sharpness = _seam_metric(group["0"][mid, :image.shape[0], :image.shape[1]], reference, data["spec"])
    assert sharpness < 0.9


def test_sub_pixel_placement(tmp_path):
    """Linear ramps are reproduced exactly by linear interpolation at the true sub-pixel offset."""
    h, w = 40, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    volume = np.concatenate([10 + 2 * yy + 3 * xx, 500 - 4 * yy + xx], axis=1)[None]
    ngff.write_image(tmp_path / "ramp.ome.zarr", volume, chunks=(1, h, w))
    A = np.array([[36.0, 0.37], [0.0, 40.25]])  # tile (0, 1) sits at (0.37, 40.25)
    stitch_slice(tmp_path / "ramp.ome.zarr", tmp_path / "out.ome.zarr", A, blending="none", flatfield="none",
                 block_px=32)
    image = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")["0"][0]
    assert image.shape == (41, 89)
    Y, X = np.mgrid[2:38, 44:86].astype(float)  # inside tile (0, 1) only, away from its border
    np.testing.assert_allclose(image[2:38, 44:86], 500 - 4 * (Y - 0.37) + (X - 40.25), rtol=1e-5)
    Y, X = np.mgrid[0:40, 0:40].astype(float)  # tile (0, 0) at the origin, before tile (0, 1) starts
    np.testing.assert_allclose(image[0:40, 0:40], 10 + 2 * Y + 3 * X, rtol=1e-5)


@pytest.mark.parametrize("blending", ["none", "average"])
def test_a_tile_a_hair_above_a_whole_pixel_keeps_its_values_on_the_outer_row(tmp_path, blending):
    """Canvas row 0 holds only tile (0, 1)'s first row, weighted 1e-6 (the tile sits at y = 1 - 1e-6): the sample,
    computed from the zero padding's side, lost most of its digits in float32 (5 % off)."""
    h, w = 40, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    volume = np.concatenate([10 + 2 * yy + 3 * xx, 500 - 4 * yy + xx], axis=1)[None]
    ngff.write_image(tmp_path / "ramp.ome.zarr", volume, chunks=(1, h, w))
    positions = np.array([[0.0, 0.0], [1 - 1e-6, 40.0]])
    stitch_slice(tmp_path / "ramp.ome.zarr", tmp_path / "out.ome.zarr", np.array([[36.0, 0.0], [0.0, 40.0]]),
                 blending=blending, flatfield="none", block_px=32, positions=positions)
    image = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")["0"][0]
    X = np.arange(49, 87, dtype=float)  # right of tile (0, 0)
    np.testing.assert_allclose(image[0, 49:87], 500 + (X - 40), rtol=1e-5)


def test_per_tile_positions_override_the_model(tmp_path):
    """``positions`` (the model with its backlash term, or registered placement) places each tile."""
    h, w = 40, 48
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    volume = np.concatenate([10 + 2 * yy + 3 * xx, 500 - 4 * yy + xx], axis=1)[None]
    ngff.write_image(tmp_path / "ramp.ome.zarr", volume, chunks=(1, h, w))
    A = np.array([[36.0, 0.37], [0.0, 40.25]])
    positions = np.array([[5.0, 7.0], [6.25, 47.5]])  # any origin: the canvas starts at the first tile
    summary = stitch_slice(tmp_path / "ramp.ome.zarr", tmp_path / "out.ome.zarr", A, blending="none",
                           flatfield="none", block_px=32, positions=positions)
    group = zarr.open_group(str(tmp_path / "out.ome.zarr"), mode="r")
    image = group["0"][0]
    assert summary["shape"] == [1, 42, 89] and image.shape == (42, 89)
    Y, X = np.mgrid[3:38, 44:86].astype(float)
    np.testing.assert_allclose(image[3:38, 44:86], 500 - 4 * (Y - 1.25) + (X - 40.5), rtol=1e-5)
    assert group.attrs["linumpy_motor"]["positions"] == positions.tolist()
    with pytest.raises(InputError, match="one \\(row, col\\) per tile"):
        stitch_slice(tmp_path / "ramp.ome.zarr", tmp_path / "bad.ome.zarr", A, positions=positions[:1])


def test_blocks_and_z_chunks_do_not_change_the_result(data, tmp_path):
    _, small = _stitch(data, tmp_path / "small.ome.zarr", block_px=32, z_chunk=2, blending="diffusion")
    _, large = _stitch(data, tmp_path / "large.ome.zarr", block_px=512, blending="diffusion", threads=1)
    assert small["0"].chunks == (2, 16, 16) and large["0"].chunks == (4, 256, 256)
    np.testing.assert_allclose(small["0"][:], large["0"][:], rtol=1e-5, atol=1e-6)


def _count_reads(monkeypatch) -> list:
    """Record ``(first plane, last plane + 1, tile row, tile column)`` of every tile the stitcher decodes."""
    reads = []
    real_read = tiles.read_block

    def counting_read(grid, z, rows, cols, out=None):
        reads.extend((z.start, z.stop, i, j) for i in range(rows.start // 96, rows.stop // 96)
                     for j in range(cols.start // 96, cols.stop // 96))
        return real_read(grid, z, rows, cols, out=out)

    monkeypatch.setattr(tiles, "read_block", counting_read)
    return reads


@pytest.mark.parametrize("threads", [1, 2])
def test_each_whole_tile_chunk_is_decoded_once_whatever_the_z_chunk(data, tmp_path, monkeypatch, threads):
    """Whole-tile input chunks (all 4 planes), output Z chunks of 1 plane: still one read per tile."""
    reads = _count_reads(monkeypatch)
    summary = stitch_slice(data["path"], tmp_path / "s.ome.zarr", data["A"], flatfield="none", block_px=64,
                           z_chunk=1, threads=threads)
    assert sorted(reads) == sorted((0, 4, i, j) for i in range(3) for j in range(4))
    assert summary["decode_factor"] == 1.0 and summary["threads"] == threads


def test_a_small_cache_cuts_strips_and_keeps_the_output(data, tmp_path, monkeypatch):
    """A cache too small for the whole slice re-decodes tiles at strip boundaries, bit for bit the same."""
    _, whole = _stitch(data, tmp_path / "whole.ome.zarr", flatfield="none", z_chunk=1)
    reads = _count_reads(monkeypatch)
    summary, strips = _stitch(data, tmp_path / "strips.ome.zarr", flatfield="none", z_chunk=1, cache_bytes=1)
    assert summary["decode_factor"] == pytest.approx(len(reads) / 12, rel=1e-3)
    assert len(reads) > 3 * 4 and set(reads) == {(0, 4, i, j) for i in range(3) for j in range(4)}
    np.testing.assert_array_equal(whole["0"][:], strips["0"][:])


def test_tiles_read_one_at_a_time_into_reused_buffers_give_the_same_output(data, tmp_path, monkeypatch):
    """Large tiles are decoded one per zarr call straight into their padded buffer, and a dropped load's buffers
    are decoded into again: with a cache of one load at a time, bit for bit the output of two-row reads."""
    _, pairs = _stitch(data, tmp_path / "pairs.ome.zarr", z_chunk=1)
    monkeypatch.setattr("linumpy_motor.stitch.plan.READ_RUN_BYTES", 1)  # every tile is "large": read alone
    calls, reused = [], []
    real_read, real_buffer = tiles.read_block, tiles.TileReader._buffer
    monkeypatch.setattr(tiles, "read_block", lambda grid, z, rows, cols, out=None: calls.append(
        (rows.stop - rows.start, out is not None)) or real_read(grid, z, rows, cols, out=out))
    monkeypatch.setattr(tiles.TileReader, "_buffer",
                        lambda self, shape: reused.append(bool(self.free)) or real_buffer(self, shape))
    summary, single = _stitch(data, tmp_path / "single.ome.zarr", z_chunk=1, cache_bytes=1)
    assert set(calls) == {(96, True)} and len(calls) > 12  # one tile per call, into its buffer; strips re-read
    assert any(reused), "no load was decoded into a recycled buffer"
    for level in range(len(summary["levels"])):
        np.testing.assert_array_equal(pairs[str(level)][:], single[str(level)][:])


def test_buffers_of_another_z_load_are_let_go(tmp_path, monkeypatch):
    """With a last Z load shallower than the others, its loads get new buffers and the deeper ones kept for
    reuse are dropped, not held beside them (the cache's planned peak); the output does not depend on the loads."""
    spec = synthetic.SyntheticSpec(nx=3, ny=3, tile_shape=(5, 64, 64), jitter_px=0.0, seed=4)
    data = _dataset(tmp_path / "in", spec)
    volume = zarr.open_group(str(data["path"]), mode="r")["0"][:]
    ngff.write_image(tmp_path / "z3.ome.zarr", volume, chunks=(3, 64, 64))
    stitch_slice(data["path"], tmp_path / "whole.ome.zarr", data["A"], flatfield="none", block_px=64)
    monkeypatch.setattr("linumpy_motor.stitch.plan.READ_RUN_BYTES", 1)
    shapes_held = []
    real_buffer = tiles.TileReader._buffer

    def buffer(self, shape):
        made = real_buffer(self, shape)
        shapes_held.append({tile.shape for tile in self.free} | {shape})
        return made

    monkeypatch.setattr(tiles.TileReader, "_buffer", buffer)
    stitch_slice(tmp_path / "z3.ome.zarr", tmp_path / "z3_out.ome.zarr", data["A"], flatfield="none", block_px=64,
                 z_chunk=1, cache_bytes=1)
    assert {(3, 66, 66), (2, 66, 66)} <= set().union(*shapes_held)
    assert all(len(shapes) == 1 for shapes in shapes_held)
    np.testing.assert_array_equal(zarr.open_group(str(tmp_path / "whole.ome.zarr"), mode="r")["0"][:],
                                  zarr.open_group(str(tmp_path / "z3_out.ome.zarr"), mode="r")["0"][:])


@pytest.mark.parametrize("blending", ["feather", "none"])
def test_resampling_a_plane_at_a_time_changes_nothing(data, tmp_path, monkeypatch, blending):
    _, whole = _stitch(data, tmp_path / "whole.ome.zarr", blending=blending, z_chunk=4)
    monkeypatch.setattr("linumpy_motor.stitch.render.LERP_BYTES", 1)
    _, planes = _stitch(data, tmp_path / "planes.ome.zarr", blending=blending, z_chunk=4)
    np.testing.assert_array_equal(whole["0"][:], planes["0"][:])


def test_a_stitch_imports_no_fft(data, tmp_path):
    """SciPy's FFT (and scipy.special under it) is a sixth of a second of imports the stitch does not use."""
    script = ("import sys, json, numpy as np\nfrom linumpy_motor.stitch.assemble import stitch_slice\n"
              f"stitch_slice({str(data['path'])!r}, {str(tmp_path / 's.ome.zarr')!r}, np.array({data['A'].tolist()}))\n"
              "print(json.dumps(sorted(m for m in sys.modules if m in ('scipy.fft', 'scipy.special'))))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


@pytest.mark.parametrize("chunk_z, expected", [(4, 16), (64, 16), (100, 10), (97, 16), (1, 16), (3, 15)])
def test_default_z_chunk_never_straddles_a_deep_input_chunk(chunk_z, expected):
    grid = SimpleNamespace(tile_shape=(300, 256, 256), array=SimpleNamespace(chunks=(chunk_z, 256, 256)))
    assert assemble.default_z_chunk(grid, 512) == expected  # 16 planes of 512 x 512 float32 = BLOCK_BYTES


def test_progress_callback_counts_every_block(data, tmp_path):
    calls = []
    summary, group = _stitch(data, tmp_path / "s.ome.zarr", flatfield="none", pyramid_top_px=64,
                             progress=lambda done, total: calls.append((done, total)))
    total = sum(len(list(pyramid.iter_blocks(group[str(k)].shape, (4, 64, 64))))
                for k in [0, *range(2, len(summary["levels"]))])
    assert calls == [(k, total) for k in range(total + 1)]


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_pyramid_opens_in_ome_zarr(data, tmp_path, version):
    out = tmp_path / "s.ome.zarr"
    summary, group = _stitch(data, out, ngff_version=version, pyramid_top_px=64, blending="average")
    nodes = list(Reader(parse_url(str(out)))())
    image = nodes[0]
    assert parse_url(str(out)).fmt.version == version
    assert [a["name"] for a in image.metadata["axes"]] == ["z", "y", "x"]
    assert all(a.get("unit") == "millimeter" for a in image.metadata["axes"])
    shapes = [tuple(d.shape) for d in image.data]
    nz, height, width = shapes[0]
    assert len(shapes) == 4 and max(shapes[-1][1:]) <= 64 < max(shapes[-2][1:])
    for k, shape in enumerate(shapes):
        assert shape == (nz, -(-height // 2**k), -(-width // 2**k))
        scale = image.metadata["coordinateTransformations"][k][0]["scale"]
        np.testing.assert_allclose(scale, [0.2, 0.003 * 2**k, 0.003 * 2**k])
    for k in range(1, len(shapes)):
        finer = np.asarray(image.data[k - 1])
        coarser = np.asarray(image.data[k])
        h2, w2 = finer.shape[1] // 2, finer.shape[2] // 2
        means = finer[:, :2 * h2, :2 * w2].reshape(nz, h2, 2, w2, 2).mean(axis=(2, 4))
        np.testing.assert_allclose(coarser[:, :h2, :w2], means, rtol=1e-5, atol=1e-6)
    meta = group.attrs["linumpy_motor"]
    np.testing.assert_allclose(meta["transform"], data["A"])
    assert meta["blending"] == "average" and meta["flatfield"] == "estimate"
    assert group["0"].metadata.zarr_format == (2 if version == "0.4" else 3)
    if version == "0.5":
        assert group["0"].shards == (nz, 64, 64)
    assert summary["levels"] == [list(s) for s in shapes]


def test_pyramid_levels_and_odd_edges():
    assert pyramid.level_shapes((3, 1100, 700), 512) == [(3, 1100, 700), (3, 550, 350), (3, 275, 175)]
    assert pyramid.level_shapes((3, 512, 80), 512) == [(3, 512, 80)]
    block = np.arange(2 * 5 * 3, dtype=np.float32).reshape(2, 5, 3)
    small = pyramid.downsample_mean(block)
    assert small.shape == (2, 3, 2)
    np.testing.assert_allclose(small[:, 0, 0], block[:, :2, :2].mean(axis=(1, 2)))
    np.testing.assert_allclose(small[:, 0, 1], block[:, :2, 2].mean(axis=1))  # odd column: its own pixels
    np.testing.assert_allclose(small[:, 2, 0], block[:, 4, :2].mean(axis=1))
    np.testing.assert_allclose(small[:, 2, 1], block[:, 4, 2])


@pytest.mark.parametrize("variant", [
    {"spec": {"dtype": "uint16"}},
    {"spec": {"dtype": "complex64"}},
    {"options": {"ngff_version": "0.4"}},
    {"options": {"sharded": False}},
])
def test_input_variants(tmp_path, variant):
    spec = synthetic.SyntheticSpec(**{**SPEC.__dict__, **variant.get("spec", {}), "extra": {}})
    data = _dataset(tmp_path / "in", spec, **variant.get("options", {}))
    _, group = _stitch(data, tmp_path / "s.ome.zarr")
    image = group["0"][spec.tile_shape[0] // 2]
    assert _ncc(image, _reference(data, image.shape), spec) >= 0.99


def test_known_flatfield(data, tmp_path):
    _, h, w = data["spec"].tile_shape
    field = synthetic.vignetting_field((h, w), data["spec"].vignetting)
    np.save(tmp_path / "flat.npy", field)
    np.save(tmp_path / "flat3d.npy", np.repeat(field[None], data["spec"].tile_shape[0], axis=0))
    summary, flat2d = _stitch(data, tmp_path / "a.ome.zarr", flatfield=tmp_path / "flat.npy")
    assert summary["flatfield"].endswith("flat.npy")
    _, flat3d = _stitch(data, tmp_path / "b.ome.zarr", flatfield=tmp_path / "flat3d.npy")
    image = flat2d["0"][2]
    assert _ncc(image, _reference(data, image.shape), data["spec"]) >= 0.99
    np.testing.assert_allclose(flat3d["0"][:], flat2d["0"][:], rtol=1e-5, atol=1e-6)


def _leftovers(folder: Path, name: str) -> list[Path]:
    return [p for p in folder.iterdir() if name in p.name]


def test_a_transform_singular_by_the_file_rule_is_refused(data, tmp_path):
    """|det| = 1e-9 is singular for a transform file, so the stitcher refuses it too (it used det < 1e-9)."""
    with pytest.raises(InputError, match="singular"):
        stitch_slice(data["path"], tmp_path / "s.ome.zarr", [[1e-9, 0.0], [0.0, 1.0]], flatfield="none")
    assert _leftovers(tmp_path, "s.ome.zarr") == []


def test_refuses_to_overwrite_the_input(data, tmp_path):
    for out in (data["path"], data["path"] / "stitched.ome.zarr", data["path"].parent):
        with pytest.raises(InputError, match="the input"):
            stitch_slice(data["path"], out, data["A"])
    assert not (data["path"] / "stitched.ome.zarr").exists()
    (tmp_path / "notes").mkdir()
    other_input = tmp_path / "mosaic_grid_3d_z01.ome.zarr"
    ngff.write_image(other_input, np.ones((1, 64, 64), dtype=np.float32), chunks=(1, 32, 32))
    for existing in (tmp_path / "notes", other_input):
        with pytest.raises(InputError, match="not written by linumpy-motor"):
            stitch_slice(data["path"], existing, data["A"])
    assert (other_input / "zarr.json").exists()
    again = tmp_path / "again.ome.zarr"  # a previous stitched slice is replaced
    for mode in ("none", "average"):
        stitch_slice(data["path"], again, data["A"], blending=mode, flatfield="none", block_px=64)
    assert zarr.open_group(str(again), mode="r").attrs["linumpy_motor"]["blending"] == "average"
    with pytest.raises(InputError, match="invertible"):
        stitch_slice(data["path"], tmp_path / "s.ome.zarr", np.ones((2, 2)))
    with pytest.raises(ValueError, match="blending"):
        stitch_slice(data["path"], tmp_path / "s.ome.zarr", data["A"], blending="max")
    assert _leftovers(tmp_path, "s.ome.zarr") == []


def test_corrupt_input_leaves_nothing_behind(tmp_path):
    volume = np.ones((2, 64, 96), dtype=np.float32)
    volume[1, 40, 70] = np.nan
    ngff.write_image(tmp_path / "bad.ome.zarr", volume, chunks=(2, 32, 32))
    with pytest.raises(InputError, match="NaN"):
        stitch_slice(tmp_path / "bad.ome.zarr", tmp_path / "s.ome.zarr", np.diag([28.0, 28.0]), flatfield="none",
                     block_px=32)
    assert _leftovers(tmp_path, "s.ome.zarr") == []


def _bin():
    spec = importlib.util.spec_from_file_location("linum_motor_stitch", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bin_stitches(data, tmp_path, capsys):
    (tmp_path / "t.json").write_text(json.dumps({"transform": data["A"].tolist(), "diagnostics": {}}))
    out = tmp_path / "slice_z00_stitch_3d.ome.zarr"
    assert _bin().main([str(data["path"]), str(tmp_path / "t.json"), str(out), "--blending", "average",
                        "--ngff-version", "0.4", "--z-chunk", "2"]) == 0
    group = zarr.open_group(str(out), mode="r")
    assert group["0"].chunks[0] == 2 and group.attrs["linumpy_motor"]["blending"] == "average"
    assert "multiscales" in group.attrs
    assert str(out) in capsys.readouterr().err


@pytest.mark.parametrize("problem", ["missing transform", "truncated transform", "output inside input",
                                     "singular transform", "missing slice", "bad flat field",
                                     "registered placement without pairs"])
def test_bin_bad_input(data, tmp_path, capsys, problem):
    transform = tmp_path / "t.json"
    text = json.dumps({"transform": data["A"].tolist(), "diagnostics": {}})
    source, out, extra = data["path"], tmp_path / "s.ome.zarr", []
    if problem == "truncated transform":
        transform.write_text(text[: len(text) // 2])
    elif problem == "singular transform":
        transform.write_text(json.dumps({"transform": [[1, 2], [2, 4]], "diagnostics": {}}))
    elif problem != "missing transform":
        transform.write_text(text)
    if problem == "output inside input":
        out = data["path"] / "s.ome.zarr"
    if problem == "missing slice":
        source = tmp_path / "nope.ome.zarr"
    if problem == "bad flat field":
        extra = ["--flatfield", str(tmp_path / "flat.npy")]
        np.save(tmp_path / "flat.npy", np.ones((5, 5)))
    if problem == "registered placement without pairs":
        extra = ["--placement", "registered"]
    assert _bin().main([str(source), str(transform), str(out), *extra]) == EXIT_BAD_INPUT
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("linum_motor_stitch.py: error:")
    assert not out.exists() and _leftovers(out.parent, "s.ome.zarr") == []


@pytest.mark.slow
def test_bin_runs_as_a_program(data, tmp_path):
    (tmp_path / "t.json").write_text(json.dumps({"transform": data["A"].tolist(), "diagnostics": {}}))
    result = subprocess.run([sys.executable, str(SCRIPT), str(data["path"]), str(tmp_path / "t.json"),
                             str(tmp_path / "s.ome.zarr"), "--blending", "diffusion"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert list(Reader(parse_url(str(tmp_path / "s.ome.zarr")))())[0].data[0].shape[0] == 4


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs CuPy and a CUDA device")
@pytest.mark.parametrize("blending, cache_bytes", [("feather", CACHE_BYTES), ("none", 1), ("diffusion", 1)])
def test_gpu_matches_cpu(data, tmp_path, blending, cache_bytes):
    """Resampling, blending and level 1 on CuPy, whole slice in one strip or cut into strips."""
    options = dict(blending=blending, cache_bytes=cache_bytes, z_chunk=1, pyramid_top_px=64)
    summary, gpu = _stitch(data, tmp_path / "gpu.ome.zarr", use_gpu=True, **options)
    assert summary["backend"] == "cupy"
    _, cpu = _stitch(data, tmp_path / "cpu.ome.zarr", **options)
    assert list(gpu.array_keys()) == list(cpu.array_keys())
    for level in cpu.array_keys():
        np.testing.assert_allclose(gpu[level][:], cpu[level][:], rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(gpu_available(), reason="this machine has a usable GPU")
def test_use_gpu_without_a_gpu_stitches_the_same_on_the_cpu(data, tmp_path, caplog):
    with caplog.at_level("WARNING", logger="linumpy_motor.backend"):
        summary, fallback = _stitch(data, tmp_path / "fallback.ome.zarr", use_gpu=True, blending="average")
    assert summary["backend"] == "numpy" and "GPU requested" in caplog.text
    _, cpu = _stitch(data, tmp_path / "cpu.ome.zarr", blending="average")
    np.testing.assert_array_equal(fallback["0"][:], cpu["0"][:])


@pytest.mark.parametrize("grid_size", [(6, 6), (24, 24)])
def test_planned_tile_memory_stays_within_the_cache_whatever_the_slice(grid_size):
    """The planner's decoded tiles alive at once stay under the budget from a small to a 16x larger
    slice; the small slice fits as one strip (each chunk decoded once), the large one is cut."""
    nx, ny = grid_size
    tile = (16, 128, 128)  # one whole-tile chunk each: 1 MiB padded
    A = np.diag(geometry.nominal_step(tile, 0.2))
    positions = geometry.affine_positions(nx, ny, A)
    layout = make_layout(nx, ny, tile, tile[0], positions)
    shape = geometry.output_shape(nx, ny, tile, A)
    budget = 40 * 2**20  # the 24x24 slice as one strip would hold 50 MiB, a one-block strip 33
    plan = plan_stitch(layout, shape, (16, 256, 256), cache_bytes=budget, lookahead=2)
    order, peak, decoded = [b.region for b in plan.blocks], plan.peak_load_bytes, plan.decoded_bytes
    once = nx * ny * 16 * 130 * 130 * 4
    assert peak <= budget
    assert sorted(order, key=lambda r: (r[0].start, r[1].start, r[2].start)) == list(
        pyramid.iter_blocks(shape, (16, 256, 256)))  # every block once
    if nx == 6:
        assert decoded == once
    else:
        assert once < decoded < 1.5 * once


def _small_layout(nx: int = 5, ny: int = 4, tile=(8, 64, 64)):
    A = np.array([[52.3, 1.4], [-0.9, 51.7]])
    positions = geometry.affine_positions(nx, ny, A)
    positions = positions - positions.min(axis=0)
    return make_layout(nx, ny, tile, tile[0], positions), geometry.output_shape(nx, ny, tile, A), positions


def test_the_plan_is_a_value_that_planning_does_not_change():
    """The same inputs give equal plans; planning leaves its inputs as they were; the plan cannot be changed."""
    layout, shape, positions = _small_layout()
    kept = positions.copy()
    before = copy.deepcopy(layout)
    first = plan_stitch(layout, shape, (4, 64, 64), cache_bytes=2**20, lookahead=3)
    second = plan_stitch(make_layout(5, 4, (8, 64, 64), 8, positions), shape, (4, 64, 64),
                                  cache_bytes=2**20, lookahead=3)
    assert first == second and first is not second
    assert layout == before and np.array_equal(positions, kept)
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.strip_px = 1  # type: ignore[misc]
    # a different budget is a different plan; the first one is untouched by making it
    whole = plan_stitch(layout, shape, (4, 64, 64), cache_bytes=2**30, lookahead=3)
    assert whole.decode_factor == 1.0 and first.decode_factor > 1.0 and first == second


def test_every_block_of_the_plan_names_the_tiles_meeting_it_and_their_loads():
    """Each block once; its tiles are exactly those whose footprint meets it; each load is used as counted."""
    layout, shape, _ = _small_layout()
    plan = plan_stitch(layout, shape, (4, 64, 64), cache_bytes=2**20, lookahead=2)
    assert sorted((b.region for b in plan.blocks), key=lambda r: (r[0].start, r[1].start, r[2].start)) == list(
        pyramid.iter_blocks(shape, (4, 64, 64)))
    _, h, w = layout.tile_shape
    counts: dict = {}
    for block in plan.blocks:
        _, ys, xs = block.region
        meeting = [t for t, (oy, ox) in enumerate(layout.origins)
                   if oy < ys.stop and oy + h + 1 > ys.start and ox < xs.stop and ox + w + 1 > xs.start]
        assert list(block.tiles) == meeting
        for t, key in zip(block.tiles, block.keys, strict=True):
            assert key[0] == layout.run_of(t) and key[1:3] == layout.load_planes(block.region[0])
            counts[key] = counts.get(key, 0) + 1
    assert counts == dict(plan.uses)


@pytest.mark.parametrize("fy, fx", [(0.0, 0.0), (0.25, 0.7), (0.5, 0.5), (0.9, 0.1), (1 - 1e-6, 1e-6)])
def test_the_resampling_is_the_bilinear_formula_and_a_window_of_it_is_the_windows_resampling(fy, fx):
    """``_lerp`` against the bilinear formula written out in float64 (its column pass runs over the row pass's
    result as one flat run, so a pair straddling two rows must land only in the column it drops), and the
    footprint's columns of a whole-rows result equal the resampling of the column window alone."""
    rng = np.random.default_rng(7)
    padded = rng.random((3, 9, 12), dtype=np.float32)
    a = padded.astype(np.float64)
    expected = ((1 - fy) * (1 - fx) * a[:, 1:, 1:] + fy * (1 - fx) * a[:, :-1, 1:]
                + (1 - fy) * fx * a[:, 1:, :-1] + fy * fx * a[:, :-1, :-1])
    result = _lerp(padded, fy, fx)
    assert result.shape == (3, 8, 11) and result.dtype == np.float32
    np.testing.assert_allclose(result, expected, rtol=0, atol=2e-6)
    window = _lerp(np.ascontiguousarray(padded[:, 2:7, 3:10]), fy, fx)
    np.testing.assert_array_equal(result[:, 2:6, 3:9], window)
