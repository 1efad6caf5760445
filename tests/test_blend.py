"""Blending weight maps, and what each mode gives where constant tiles overlap."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

from linumpy_motor import synthetic
from linumpy_motor.io import ngff
from linumpy_motor.stitch import blend
from linumpy_motor.stitch.assemble import stitch_slice

TILE = 64
STEP = 48  # 16 px overlap


def test_feather_is_the_distance_to_the_nearest_edge():
    weights = blend.weight_map((TILE, 80), "feather")
    assert weights.shape == (TILE, 80) and weights.dtype == np.float32
    assert weights.max() == pytest.approx(1.0)
    row = weights[TILE // 2]
    np.testing.assert_allclose(row[:20] / row[0], 2 * np.arange(20) + 1.0, rtol=1e-5)  # pixel centres 0.5, 1.5, ..
    np.testing.assert_allclose(weights, weights[::-1, ::-1])
    assert weights[0, 0] == weights[0, TILE // 2] == pytest.approx(0.5 / (TILE / 2 - 0.5))


def test_uniform_modes_are_ones():
    for mode in ("none", "average"):
        assert (blend.weight_map((10, 12), mode) == 1).all()


def test_diffusion_ramps_over_the_overlap_only():
    overlap = (16.0, 20.0)
    weights = blend.weight_map((96, 128), "diffusion", overlap)
    assert (weights[20:-20, 24:-24] == 1).all()  # no neighbour overlaps the middle
    row = weights[48]
    ramp = row[:20]
    assert (np.diff(ramp) > 0).all()
    # Laplace's equation across a straight band is a linear ramp from ~0 at the edge to 1
    np.testing.assert_allclose(ramp, (np.arange(20) + 0.5) / 20, atol=0.08)
    assert weights[0, 0] < weights[0, 64] and weights[0, 0] < weights[48, 0]  # corners fade faster
    np.testing.assert_allclose(weights, weights[::-1, ::-1], atol=1e-6)


def test_bad_modes():
    with pytest.raises(ValueError, match="unknown blending"):
        blend.weight_map((8, 8), "median")
    with pytest.raises(ValueError, match="overlap"):
        blend.weight_map((8, 8), "diffusion")


def test_overlap_px_from_the_motor_matrix():
    A = synthetic.true_transform(synthetic.SyntheticSpec(tile_shape=(2, 100, 80), overlap=0.25))
    assert blend.overlap_px(A, (100, 80)) == pytest.approx((25.0, 20.0))


@pytest.fixture(scope="module")
def constant_tiles(tmp_path_factory):
    """A 2 x 3 grid whose tile (i, j) is the constant 1 + 3 i + j."""
    folder = tmp_path_factory.mktemp("constant")
    volume = np.zeros((2, 2 * TILE, 3 * TILE), dtype=np.float32)
    for i in range(2):
        for j in range(3):
            volume[:, i * TILE:(i + 1) * TILE, j * TILE:(j + 1) * TILE] = 1 + 3 * i + j
    ngff.write_image(folder / "grid.ome.zarr", volume, chunks=(2, TILE, TILE))
    return folder


def _stitch(folder, mode, transform=((STEP, 0.0), (0.0, STEP))):
    out = folder / f"{mode}.ome.zarr"
    stitch_slice(folder / "grid.ome.zarr", out, np.asarray(transform, float), blending=mode, flatfield="none",
                 block_px=64)
    return zarr.open_group(str(out), mode="r")["0"][:]


@pytest.mark.parametrize("mode", blend.BLENDING_MODES)
def test_single_coverage_is_the_tile_itself(constant_tiles, mode):
    image = _stitch(constant_tiles, mode)
    assert image.shape == (2, STEP + TILE, 2 * STEP + TILE)
    np.testing.assert_allclose(image[:, :STEP, :STEP], 1.0, rtol=1e-6)
    np.testing.assert_allclose(image[:, TILE:, 2 * TILE:], 6.0, rtol=1e-6)


def test_none_keeps_the_last_tile(constant_tiles):
    image = _stitch(constant_tiles, "none")
    np.testing.assert_allclose(image[:, :STEP, STEP:TILE], 2.0)  # tiles (0,0) and (0,1)
    np.testing.assert_allclose(image[:, STEP:TILE, STEP:TILE], 5.0)  # (0,0) (0,1) (1,0) (1,1)


def test_average_is_the_mean(constant_tiles):
    image = _stitch(constant_tiles, "average")
    np.testing.assert_allclose(image[:, :STEP, STEP:TILE], 1.5, rtol=1e-6)
    np.testing.assert_allclose(image[:, STEP:TILE, STEP:TILE], (1 + 2 + 4 + 5) / 4, rtol=1e-6)


def test_feather_cross_fades_linearly(constant_tiles):
    image = _stitch(constant_tiles, "feather")
    cols = np.arange(STEP, TILE)
    d_left, d_right = TILE - 0.5 - cols, cols - STEP + 0.5  # distances to the edges of (0,0) and (0,1)
    expected = (1 * d_left + 2 * d_right) / (d_left + d_right)
    np.testing.assert_allclose(image[:, 16:32, STEP:TILE], np.broadcast_to(expected, (2, 16, 16)), rtol=1e-5)


def test_diffusion_cross_fades_monotonically(constant_tiles):
    image = _stitch(constant_tiles, "diffusion")
    band = image[0, 24, STEP:TILE]
    assert (band > 1).all() and (band < 2).all() and (np.diff(band) > 0).all()
    assert band[0] < 1.2 and band[-1] > 1.8  # the fade spans the whole overlap


def test_modes_differ_only_in_overlaps(constant_tiles):
    images = {mode: _stitch(constant_tiles, mode) for mode in ("none", "average", "feather")}
    overlap = (slice(None), slice(0, STEP), slice(STEP + 2, TILE - 2))
    for a, b in (("none", "average"), ("none", "feather"), ("average", "feather")):
        assert np.abs(images[a][overlap] - images[b][overlap]).mean() > 0.05, (a, b)


@pytest.mark.parametrize("mode", ("average", "feather", "diffusion"))
def test_sub_pixel_borders_are_renormalised(tmp_path, mode):
    """Constant tiles at sub-pixel, rotated positions stitch to exactly that constant where covered."""
    volume = np.full((1, 2 * TILE, 3 * TILE), 3.0, dtype=np.float32)
    ngff.write_image(tmp_path / "grid.ome.zarr", volume, chunks=(1, TILE, TILE))
    A = synthetic.true_transform(synthetic.SyntheticSpec(tile_shape=(1, TILE, TILE), theta_deg=4.0))
    image = _stitch(tmp_path, mode, A)[0]
    covered = image > 0
    np.testing.assert_allclose(image[covered], 3.0, rtol=1e-5)
    assert covered.mean() > 0.85
