"""The QC verdict from the data (qc/verdict.py), on its own: tiles named from pairs built by hand, then
on mosaics cut here from real photographs (not linumpy_motor.synthetic) with one spoiled tile each,
and on the synthetic demo data, against the truth of what was spoiled."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import skimage.data
from scipy import ndimage
from skimage.color import rgb2gray

from linumpy_motor.io.records import pair_dicts
from linumpy_motor.io.schemas import PairsFile, TransformFile
from linumpy_motor.qc.inputs import ReportInputs
from linumpy_motor.qc.verdict import (
    BLANK_RATIO,
    CHECK,
    OK,
    SATURATED_FRACTION,
    implied_overlap,
    judge,
    overlap_problem,
    status_file,
    tile_findings,
)
from linumpy_motor.register.fit import fit_pooled
from linumpy_motor.register.measure import measure_mosaic, measure_volume

NX, NY = 4, 5


def _grid_pairs(level: float = 1.0) -> list[dict]:
    """Every neighbour pair of an NX x NY grid, both copies of each overlap at ``level``."""
    return [{"tile": [i, j], "row_delta": di, "col_delta": dj, "levels": [level, level]}
            for di, dj in ((0, 1), (1, 0)) for i in range(NX - di) for j in range(NY - dj)]


def _touches(pair: dict, tile: tuple[int, int]) -> int | None:
    """Which copy of the pair is ``tile``'s (0 or 1), or None."""
    first = tuple(pair["tile"])
    second = (first[0] + pair["row_delta"], first[1] + pair["col_delta"])
    return 0 if first == tile else 1 if second == tile else None


def _named(findings) -> dict[tuple[int, int], str]:
    return {tuple(f.tile): f.problem for f in findings}


# --- tiles named from the pairs ------------------------------------------------------------------

def test_a_clean_grid_names_no_tile_and_every_pair_shows_tissue():
    pairs = _grid_pairs()
    findings, tissue = tile_findings(pairs, np.ones(len(pairs), bool))
    assert findings == [] and tissue.all()


def test_a_blank_tile_is_named_and_its_neighbours_are_not():
    pairs = _grid_pairs()
    for p in pairs:
        own = _touches(p, (1, 2))
        if own is not None:
            p["levels"][own] = 0.02  # noise where the neighbours see tissue
    usable = np.array([_touches(p, (1, 2)) is None for p in pairs])
    findings, _ = tile_findings(pairs, usable)
    assert _named(findings) == {(1, 2): "blank"}
    assert "reads 2 % of that tile's copy (4 of 4 overlaps dark)" in findings[0].detail


def test_dark_overlaps_without_tissue_around_are_background_not_blank():
    pairs = _grid_pairs()
    for p in pairs:  # the grid's last column is agarose: both copies of its overlaps read little
        if p["tile"][1] + p["col_delta"] == NY - 1:
            p["levels"] = [0.05 if _touches(p, (p["tile"][0], NY - 1)) == k else p["levels"][k] for k in (0, 1)]
        if p["tile"][1] == NY - 1:
            p["levels"] = [0.05, 0.05]
    usable = np.array([p["tile"][1] + p["col_delta"] < NY - 1 for p in pairs])
    findings, tissue = tile_findings(pairs, usable)
    # the column's tiles are dark only against their left neighbours: 1 of their 1 to 3 overlaps with tissue
    assert set(_named(findings).values()) <= {"blank"}
    vertical_agarose = [k for k, p in enumerate(pairs) if p["tile"][1] == NY - 1 and p["row_delta"]]
    assert not tissue[vertical_agarose].any()  # agarose on both sides: counts for nothing


def test_a_saturated_tile_is_named_from_the_pixels_at_the_maximum():
    pairs = _grid_pairs()
    at_max = np.zeros((NX, NY))
    at_max[2, 3] = SATURATED_FRACTION
    at_max[0, 0] = SATURATED_FRACTION - 0.01
    usable = np.array([_touches(p, (2, 3)) is None for p in pairs])
    assert _named(tile_findings(pairs, usable, at_max.tolist())[0]) == {(2, 3): "saturated"}


def test_a_bright_tile_is_named_and_does_not_make_its_neighbours_blank():
    pairs = _grid_pairs()
    for p in pairs:
        own = _touches(p, (2, 2))
        if own is not None:
            p["levels"][own] = 1.05 / BLANK_RATIO  # re-imaged at another gain
    findings, _ = tile_findings(pairs, np.ones(len(pairs), bool))
    assert _named(findings) == {(2, 2): "bright"}


def test_a_tile_whose_pairs_fail_is_unmatched_and_a_good_one_between_two_such_is_not():
    pairs = _grid_pairs()
    bad = {(1, 4), (3, 4)}  # (2, 4) sits between them on the grid's edge, with 2 of its 3 pairs failing
    usable = np.array([_touches(p, (1, 4)) is None and _touches(p, (3, 4)) is None for p in pairs])
    findings, _ = tile_findings(pairs, usable)
    assert _named(findings) == {tile: "unmatched" for tile in bad}
    assert findings[0].detail.startswith("3 of its 3 pairs in tissue do not place it")


def test_one_failed_pair_names_no_tile():
    pairs = _grid_pairs()
    usable = np.ones(len(pairs), bool)
    usable[3] = False
    assert tile_findings(pairs, usable)[0] == []


# --- overlap ---------------------------------------------------------------------------------------

def test_the_implied_overlap_is_the_median_over_slices_and_stated_beside_the_given_one():
    stats = [{"implied_overlap": {"horizontal": {"overlap": x}, "vertical": {"overlap": y}}}
             for x, y in ((0.2, 0.21), (0.19, 0.2), (0.21, 0.19))]
    assert implied_overlap(stats) == pytest.approx({"x": 0.2, "y": 0.2})
    assert implied_overlap([{}]) is None
    assert overlap_problem({"x": 0.2, "y": 0.2}, 0.22) is None
    assert overlap_problem({"x": 0.2, "y": 0.2}, 0.4).startswith(
        "the tiles imply an overlap of 0.20 along x and 0.20 along y, the given --overlap is 0.4: check --overlap")


# --- mosaics cut from photographs, with the truth of what was spoiled --------------------------------

TILE = 128
OVERLAP = 0.2


def _photo(name: str) -> np.ndarray:
    """A photograph shipped with scikit-image, grey, upscaled twice (the optics resolve finer than the texture)."""
    image = getattr(skimage.data, name)()
    image = rgb2gray(image) if image.ndim == 3 else image / 255.0
    return ndimage.zoom(image / np.percentile(image, 99.5), 2, order=3)


def _cut(scene: np.ndarray, seed: int) -> np.ndarray:
    """An NX x NY mosaic grid (1, NX*TILE, NY*TILE) of ``scene``: tiles at a rotated, 1 %-scaled stage with
    0.3 px jitter, each with vignetting, its own speckle (decorrelating between acquisitions) and noise."""
    rng = np.random.default_rng(seed)
    step = (1 - OVERLAP) * TILE * 1.01
    theta = np.radians(1.0)
    A = step * np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    u = np.linspace(-1, 1, TILE)
    vignette = 1 - 0.3 * (u[:, None] ** 2 + u[None, :] ** 2) / 2
    coefficients = ndimage.spline_filter(scene, order=3)
    grid = np.zeros((1, NX * TILE, NY * TILE), dtype=np.float32)
    rows, cols = np.mgrid[0:TILE, 0:TILE].astype(float)
    for i in range(NX):
        for j in range(NY):
            y, x = A @ (i, j) + rng.normal(0, 0.3, 2) + 20
            tile = ndimage.map_coordinates(coefficients, [rows + y, cols + x], order=3, prefilter=False)
            speckle = 1 + 0.1 * ndimage.gaussian_filter(rng.standard_normal((TILE, TILE)), 1) / 0.28
            tile = tile * vignette * speckle + rng.normal(0, 0.02, tile.shape)
            grid[0, i * TILE:(i + 1) * TILE, j * TILE:(j + 1) * TILE] = np.abs(tile)
    return grid


def _spoil(grid: np.ndarray, tile: tuple[int, int], kind: str, rng: np.random.Generator) -> np.ndarray:
    grid = grid.copy()
    i, j = tile
    view = grid[:, i * TILE:(i + 1) * TILE, j * TILE:(j + 1) * TILE]
    if kind == "blank":  # the laser off: noise only
        view[...] = np.abs(rng.normal(0, 0.02, view.shape))
    elif kind == "missing":  # a lost chunk reads as zeros
        view[...] = 0
    elif kind == "saturated":  # the gain far too high: clipped at the largest value
        view[...] = np.minimum(view * 20, grid.max())
    else:  # swapped: the content of a tile two rows and three columns away
        a, b = (i + 2) % NX, (j + 3) % NY
        view[...] = grid[:, a * TILE:(a + 1) * TILE, b * TILE:(b + 1) * TILE]
    return grid


def _judge(grids: dict[int, np.ndarray]) -> dict:
    """Measure, fit and judge slices held in memory, as a run does."""
    files = {}
    for slice_id, grid in grids.items():
        measured, skipped, stats = measure_volume(lambda zs, rows, cols, g=grid: g[zs, rows, cols],
                                                  (1, TILE, TILE), NX, NY, OVERLAP)
        files[slice_id] = PairsFile(version="test", slice_id=slice_id, source=f"z{slice_id}",
                                    tile_shape=(1, TILE, TILE), grid=(NX, NY), overlap=OVERLAP, z=0,
                                    pairs=pair_dicts(measured),
                                    skipped=skipped, stats=stats)
    model, diagnostics = fit_pooled({s: f.table() for s, f in files.items()},
                                    {s: (NX, NY) for s in files}, (1, TILE, TILE), OVERLAP)
    transform = TransformFile(transform=model.matrix.tolist(), backlash=model.backlash_px, diagnostics=diagnostics)
    per_slice = {int(s): entry for s, entry in diagnostics["per_slice"].items()}
    return judge(ReportInputs(transform, files, {}, {}, per_slice, Path("motor_transform.json")))


SPOILS = ("blank", "missing", "saturated", "swapped")


@pytest.mark.parametrize("photo", ["gravel", "grass", "immunohistochemistry"])
def test_photograph_mosaics_name_each_spoiled_tile_and_pass_the_clean_slices(photo):
    scene = _photo(photo)
    rng = np.random.default_rng(1)
    clean = {s: _cut(scene[s * 30:], seed=s) for s in range(2)}
    spoiled = {2 + k: _spoil(clean[k % 2], (1 + k % 2, 1 + k), kind, rng) for k, kind in enumerate(SPOILS)}
    verdicts = _judge(clean | spoiled)
    for slice_id in clean:
        assert verdicts[slice_id].status == OK, (slice_id, verdicts[slice_id].reasons)
    for k, kind in enumerate(SPOILS):
        verdict = verdicts[2 + k]
        named = {tuple(t.tile): t.problem for t in verdict.evidence.tiles}
        assert verdict.status == CHECK and list(named) == [(1 + k % 2, 1 + k)], (kind, verdict.reasons)
        assert named[(1 + k % 2, 1 + k)] == {"missing": "blank", "swapped": "unmatched"}.get(kind, kind)
        assert f"({1 + k % 2}, {1 + k})" in verdict.reasons[0]
    entry = status_file(verdicts).model_dump(mode="json")["2"]
    assert entry["status"] == CHECK and entry["tiles"] == [
        {"tile": [1, 1], "problem": "blank", "detail": verdicts[2].evidence.tiles[0].detail}]


def test_the_demo_data_pass_without_a_false_check(synthetic_dataset_v05):
    """Three clean synthetic slices with the demo's defaults (0.3 px jitter, tissue on 70 %): all ok."""
    files = {}
    for slice_id, path in synthetic_dataset_v05.volumes:
        from linumpy_motor.io.grid import open_mosaic

        measured, skipped, stats = measure_mosaic(open_mosaic(path), 0.2)
        files[slice_id] = PairsFile(version="test", slice_id=slice_id, source=path.name,
                                    tile_shape=synthetic_dataset_v05.spec.tile_shape, grid=(6, 7), overlap=0.2,
                                    z=stats["z"], pairs=pair_dicts(measured), skipped=skipped, stats=stats)
    model, diagnostics = fit_pooled({s: f.table() for s, f in files.items()},
                                    {s: (6, 7) for s in files}, synthetic_dataset_v05.spec.tile_shape, 0.2)
    transform = TransformFile(transform=model.matrix.tolist(), backlash=model.backlash_px, diagnostics=diagnostics)
    verdicts = judge(ReportInputs(transform, files, {}, {}, {int(s): e for s, e in diagnostics["per_slice"].items()},
                                  Path("motor_transform.json")))
    assert {s: (v.status, v.reasons) for s, v in verdicts.items()} == {s: (OK, []) for s in files}
