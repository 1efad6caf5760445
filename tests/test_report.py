"""QC report: status rules, residual outliers, thumbnails, the page and its PNGs, the command line."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import replace
from html import escape as html_escape
from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

import linumpy_motor
from linumpy_motor import synthetic
from linumpy_motor.errors import InputError
from linumpy_motor.io import ngff
from linumpy_motor.io.dataset import discover_slices, slice_id_from_name
from linumpy_motor.io.grid import open_mosaic
from linumpy_motor.io.outputs import write_json
from linumpy_motor.io.records import pair_dicts, pair_table
from linumpy_motor.io.schemas import TileFinding
from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT
from linumpy_motor.qc import compare, outlines, plots
from linumpy_motor.qc.figures import FigureJob, draw_here
from linumpy_motor.qc.report import write_report
from linumpy_motor.qc.thumbnail import read_thumbnail
from linumpy_motor.qc.verdict import (
    MAX_FAILED_FRACTION,
    MAX_RESIDUAL_RMS_PX,
    MIN_MEASURED_FRACTION,
    OVERLAP_TOLERANCE,
    SliceEvidence,
    pair_residuals,
    slice_status,
)
from linumpy_motor.register import fit, geometry, measure

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bin" / "linum_motor_report.py"
TILE = (4, 80, 80)
GRID = (3, 4)
N_GRID_PAIRS = GRID[0] * (GRID[1] - 1) + (GRID[0] - 1) * GRID[1]  # 17
SHEAR_PX = 1.5  # added to dx of slice 1's vertical pairs: its own A[1, 0] departs from the pooled one
DRIFT_TOLERANCE_PX = 0.75
BUMP_PX = 6.0  # a registration position moved this far makes the comparison flag an outlying tile
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _seam_pixels(png: Path) -> int:
    """Pixels drawn in a strong yellow (the seam colour): red and green well above blue."""
    with Image.open(png) as image:
        rgb = np.asarray(image.convert("RGB"), dtype=int)
    return int(np.sum((rgb[..., 0] - rgb[..., 2] > 80) & (rgb[..., 1] - rgb[..., 2] > 80)))


def _script():
    spec = importlib.util.spec_from_file_location("linum_motor_report", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _pairs_file(slice_id: int, source: Path, pairs: list, skipped: list, stats: dict) -> dict:
    return {"version": "0.1.0", "slice_id": slice_id, "source": str(source), "tile_shape": list(TILE),
            "grid": list(GRID), "overlap": 0.2, "z": TILE[0] // 2, "pairs": pairs, "skipped": skipped,
            "stats": stats}


def _stitch(volume: np.ndarray, A: np.ndarray) -> np.ndarray:
    """Tiles placed (rounded) at the motor positions, overwriting: a stand-in stitched slice."""
    nz, h, w = TILE
    out = np.zeros(geometry.output_shape(*GRID, TILE, A), dtype=np.float32)
    for k, (r, c) in enumerate(np.rint(geometry.affine_positions(*GRID, A)).astype(int)):
        i, j = divmod(k, GRID[1])
        out[:, r:r + h, c:c + w] = volume[:, i * h:(i + 1) * h, j * w:(j + 1) * w]
    return out


def _write_pyramid(path: Path, level0: np.ndarray, version: str = "0.5", extra: dict | None = None) -> None:
    """Two-level NGFF image: level "1" is level "0" averaged over 2x2 in (y, x)."""
    nz, height, width = level0.shape
    level1 = level0[:, :height // 2 * 2, :width // 2 * 2].reshape(nz, height // 2, 2, width // 2, 2).mean(axis=(2, 4))
    group = ngff.create_group(path, version)
    for name, data in (("0", level0), ("1", level1.astype(np.float32))):
        ngff.create_level(group, name, data.shape, data.dtype, (1, 64, 64))[...] = data
    scales = [(1.0, 1.0, 1.0), (1.0, 2.0, 2.0)]
    group.attrs.update(ngff.root_attributes(ngff.multiscales(scales, ("millimeter",) * 3, version), version, extra))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict:
    """A real run of the library on small synthetic slices, with one kind of trouble per slice.

    0: clean; 1: its vertical pairs sheared by SHEAR_PX (drift); 2: two bad tiles (named);
    3: only four of slice 0's pairs (too few, its own fit fails); 4: slice 0's pairs, with a
    comparison in which one tile's registration position was moved by BUMP_PX.
    """
    root = tmp_path_factory.mktemp("report_run")
    clean = synthetic.SyntheticSpec(nx=GRID[0], ny=GRID[1], tile_shape=TILE, seed=1)
    bad = replace(clean, seed=2, bad_tiles=2)
    truth = synthetic.write_dataset(root / "clean", clean, n_slices=2, save_scenes=False)["slices"]
    truth |= synthetic.write_dataset(root / "bad", bad, n_slices=1, first_slice=2, save_scenes=False)["slices"]
    pairs, files, volumes = {}, {}, {}
    for folder in ("clean", "bad"):
        for slice_id, path in discover_slices(root / folder):
            grid = open_mosaic(path)
            table, skipped, stats = measure.measure_mosaic(grid, 0.2)
            measured = pair_dicts(table)
            pairs[slice_id], volumes[slice_id] = measured, np.asarray(grid.array[:])
            files[slice_id] = _pairs_file(slice_id, path, measured, skipped, stats)
    for pair in pairs[1]:
        pair["measured_dx"] += SHEAR_PX * pair["row_delta"]
    few = [p for p in pairs[0] if p["col_delta"]][:2] + [p for p in pairs[0] if p["row_delta"]][:2]
    pairs[3], pairs[4] = few, [dict(p) for p in pairs[0]]
    for slice_id in (3, 4):
        files[slice_id] = _pairs_file(slice_id, files[0]["source"], pairs[slice_id], [], files[0]["stats"])
    model, diagnostics = fit.fit_pooled({s: pair_table(p) for s, p in pairs.items()}, {s: GRID for s in pairs},
                                        TILE, 0.2, fit.FitOptions(drift_tolerance_px=DRIFT_TOLERANCE_PX))
    A = model.matrix
    write_json(root / "motor_transform.json", {"transform": A.tolist(), "diagnostics": diagnostics})
    pairs_paths = []
    for slice_id, content in sorted(files.items()):
        pairs_paths.append(root / f"slice_z{slice_id:02d}_pairs.json")
        write_json(pairs_paths[-1], content)
    compare_paths = []
    for slice_id in (0, 4):
        motor = geometry.affine_positions(*GRID, A)
        registration, _ = geometry.registration_positions(pair_table(pairs[slice_id]), *GRID, motor)
        if slice_id == 4:
            registration[5] += (BUMP_PX, 0.0)
        compare_paths.append(root / f"slice_z{slice_id:02d}_compare.json")
        write_json(compare_paths[-1], compare.compare_positions(motor, registration))
    stitched = {s: root / f"slice_z{s:02d}_stitch_3d.ome.zarr" for s in (0, 1, 2, 4)}
    _write_pyramid(stitched[0], _stitch(volumes[0], A),  # with the layout metadata the stitcher records
                   extra={"linumpy_motor": {"transform": A.tolist(), "grid": list(GRID), "tile_shape": list(TILE)}})
    ngff.write_image(stitched[1], _stitch(volumes[1], A), chunks=(1, 64, 64), version="0.4")
    ngff.write_image(stitched[4], _stitch(volumes[0], A), chunks=(1, 64, 64))
    # stitched[2] is never written: a missing store
    out = root / "report"
    page = write_report(out, root / "motor_transform.json", pairs_paths, compare_paths, list(stitched.values()),
                        title="QC <run> & co")
    return {"root": root, "A": A, "diagnostics": diagnostics, "pairs": pairs, "truth": truth, "out": out,
            "page": page, "html": page.read_text(), "status": json.loads((out / "status.json").read_text()),
            "pairs_paths": pairs_paths}


# --- slice_status at its thresholds -------------------------------------------------------------

GOOD = SliceEvidence(slice_id=0, n_usable=17, n_expected=17, in_fit=True, residual_rms_px=0.5, n_tissue_pairs=10,
                     n_failed_pairs=0, drift_px=0.2, drift_flag=False, drift_tolerance_px=1.0,
                     implied_overlap={"x": 0.2, "y": 0.2}, nominal_overlap=0.2)


@pytest.mark.parametrize(("change", "status", "reason"), [
    ({}, "ok", None),
    ({"n_usable": 10, "n_expected": 20}, "ok", None),  # exactly MIN_MEASURED_FRACTION
    ({"n_usable": 9, "n_expected": 20}, "failed", "few valid pairs"),
    ({"fit_error": "too few usable pairs"}, "failed", "own fit failed"),
    ({"residual_rms_px": MAX_RESIDUAL_RMS_PX}, "ok", None),
    ({"residual_rms_px": MAX_RESIDUAL_RMS_PX + 0.01}, "check", "high residuals"),
    ({"n_failed_pairs": round(MAX_FAILED_FRACTION * 10)}, "ok", None),
    ({"n_failed_pairs": round(MAX_FAILED_FRACTION * 10) + 1}, "check", "failed pairs in tissue: 2 of 10 (20 % > 10 %)"),
    ({"tiles": (TileFinding(tile=(2, 3), problem="blank", detail="x"),)}, "check", "tile (2, 3) blank"),
    ({"tiles": (TileFinding(tile=(0, 1), problem="unmatched", detail="x"),
                TileFinding(tile=(4, 2), problem="unmatched", detail="y"))}, "check", "tiles (0, 1), (4, 2) matching"),
    ({"tiles": (TileFinding(tile=(1, 1), problem="saturated", detail="x"),)}, "check", "tile (1, 1) saturated"),
    ({"implied_overlap": {"x": 0.2 + OVERLAP_TOLERANCE, "y": 0.2}}, "ok", None),
    ({"implied_overlap": {"x": 0.2, "y": 0.2 + OVERLAP_TOLERANCE + 0.01}}, "check",
     "the tiles imply an overlap of 0.20 along x and 0.26 along y, the given --overlap is 0.2"),
    ({"fit_flags": False}, "check", "outliers not checked"),
    ({"drift_flag": True, "drift_px": 1.3}, "check", "drifts from the pooled model: 1.30 px"),
    ({"compare_flags": ("outlying_tiles",)}, "check", "outlying_tiles"),
    ({"stitched_problem": "no stitched slice"}, "check", "no stitched slice"),
    ({"n_usable": None, "n_expected": None, "residual_rms_px": None, "n_tissue_pairs": None, "n_failed_pairs": None},
     "check", "no pairs file"),
    ({"in_fit": False}, "check", "per-slice diagnostics"),
])
def test_slice_status_rules(change, status, reason):
    got, reasons = slice_status(replace(GOOD, **change))
    assert got == status
    if reason is None:
        assert reasons == []
    else:
        assert len(reasons) == 1 and reason in reasons[0]


def test_slice_status_failure_outranks_checks_and_lists_every_reason():
    got, reasons = slice_status(replace(GOOD, n_usable=2, fit_error="boom", drift_flag=True,
                                        compare_flags=("systematic_offset",), residual_rms_px=5.0))
    assert got == "failed"
    assert "few valid pairs" in reasons[0] and "own fit failed" in reasons[1]
    assert any("systematic_offset" in r for r in reasons) and any("high residuals" in r for r in reasons)
    assert not any("drift" in r for r in reasons)  # a failed fit has no drift to report
    assert MIN_MEASURED_FRACTION == 0.5


# --- residuals and the fit's verdict on each pair ------------------------------------------------

def test_pair_residuals_recover_planted_errors():
    A = np.array([[64.0, -1.5], [1.2, 63.0]])
    backlash = np.array([0.0, 2.0])
    rng = np.random.default_rng(3)
    pairs = []
    for i in range(4):
        for j in range(5):
            for di, dj in ((0, 1), (1, 0)):
                dy, dx = A @ (di, dj) + backlash * ((i + di) % 2 - i % 2) + rng.normal(0, 0.2, 2)
                pairs.append({"tile": [i, j], "row_delta": di, "col_delta": dj, "measured_dy": dy,
                              "measured_dx": dx, "ncc": 0.9})
    pairs[7]["measured_dx"] += 6.0
    residuals = pair_residuals(pair_table(pairs), A, backlash)
    assert residuals[7, 1] == pytest.approx(6.0, abs=1.0) and abs(residuals[7, 0]) < 1.0
    assert np.abs(np.delete(residuals, 7, axis=0)).max() < 1.0


def test_rejected_pairs_are_the_fits_own_and_touch_the_bad_tiles(run):
    bad = {tuple(t[:2]) for t in run["truth"]["2"]["bad_tiles"]}
    assert len(bad) == 2
    pairs = run["pairs"][2]
    flags = run["diagnostics"]["per_slice"]["2"]["pair_inliers"]
    rejected = np.array([flag is False for flag in flags])
    touching = np.array([tuple(p["tile"]) in bad
                         or (p["tile"][0] + p["row_delta"], p["tile"][1] + p["col_delta"]) in bad
                         for p in pairs])
    assert rejected.sum() >= 2 and not (rejected & ~touching).any()
    assert all(run["diagnostics"]["per_slice"]["0"]["pair_inliers"])
    assert {tuple(t["tile"]) for t in run["status"]["2"]["tiles"]} == bad  # the verdict names them


# --- thumbnails ---------------------------------------------------------------------------------

@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_read_thumbnail_takes_the_smallest_level_and_central_plane(tmp_path, version):
    volume = np.zeros((5, 40, 60), dtype=np.float32)
    volume += np.arange(5, dtype=np.float32)[:, None, None] * 10  # plane z holds 10 z
    volume[:, :20, :30] += 1  # top-left quarter brighter by 1
    _write_pyramid(tmp_path / "s.ome.zarr", volume, version)
    plane, extent, metadata, pixel_um = read_thumbnail(tmp_path / "s.ome.zarr")
    assert plane.shape == (20, 30) and extent == (40, 60) and metadata == {}
    assert pixel_um == 1000.0  # level 0's 1 millimeter
    assert np.allclose(plane[:10, :15], 21) and np.allclose(plane[10:, 15:], 20)


def test_read_thumbnail_subsamples_a_single_large_level(tmp_path):
    volume = np.arange(3 * 40 * 60, dtype=np.float32).reshape(3, 40, 60)
    ngff.write_image(tmp_path / "s.ome.zarr", volume, chunks=(1, 16, 16))
    plane, extent, *_ = read_thumbnail(tmp_path / "s.ome.zarr", max_px=16)
    assert plane.shape == (10, 15) and extent == (40, 60)
    assert np.array_equal(plane, volume[1, ::4, ::4])


def test_read_thumbnail_missing_or_broken_store(tmp_path):
    with pytest.raises(InputError, match="no such"):
        read_thumbnail(tmp_path / "absent.ome.zarr")
    (tmp_path / "empty.ome.zarr").mkdir()
    with pytest.raises(InputError, match="empty.ome.zarr"):
        read_thumbnail(tmp_path / "empty.ome.zarr")
    ngff.write_image(tmp_path / "s.ome.zarr", np.ones((2, 8, 8), np.float32), chunks=(1, 8, 8))
    group = zarr.open_group(str(tmp_path / "s.ome.zarr"), mode="r+")
    del group["0"]
    with pytest.raises(InputError, match="incomplete multiscale"):
        read_thumbnail(tmp_path / "s.ome.zarr")


def test_slice_id_from_name():
    assert slice_id_from_name("slice_z07_stitch_3d.ome.zarr") == 7
    assert slice_id_from_name("out/slice_z12_compare.json") == 12
    assert slice_id_from_name("mosaic_grid_3d_z03.ome.zarr") == 3
    assert slice_id_from_name("tile_5.json") == 5


# --- the report ---------------------------------------------------------------------------------

def test_statuses_and_reasons(run):
    status = run["status"]
    assert status["0"] == {"status": "ok", "reasons": [], "tiles": []}
    assert status["1"]["status"] == "check"
    assert len(status["1"]["reasons"]) == 1 and "drifts from the pooled model" in status["1"]["reasons"][0]
    assert status["2"]["status"] == "check"
    assert any("failed pairs in tissue" in r for r in status["2"]["reasons"])
    assert any("stitched slice unreadable" in r for r in status["2"]["reasons"])
    assert status["3"]["status"] == "failed"
    assert "few valid pairs: 4 of the grid's 17" in status["3"]["reasons"][0]
    assert any("own fit failed" in r for r in status["3"]["reasons"])
    assert status["4"] == {"status": "check", "reasons": ["motor vs registration: outlying_tiles"], "tiles": []}
    for slice_id, entry in status.items():  # the page says the same as status.json
        row = re.search(rf'<tr id="slice-{slice_id}" data-status="(\w+)">(.*?)</tr>', run["html"])
        assert row and row.group(1) == entry["status"] and entry["status"].upper() in row.group(2)
        for tile in entry["tiles"]:  # each tile named in its section, with its problem
            assert f"tile ({tile['tile'][0]}, {tile['tile'][1]}): <b>{tile['problem']}</b>" in run["html"]


def test_page_layout_and_escaping(run):
    page = run["html"]
    assert page.index('data-status="ok"') < page.index("<img")
    assert "<title>QC &lt;run&gt; &amp; co</title>" in page and "<run>" not in page
    for term in ("θ", "Ox", "scale_x", "residual RMS", "inlier pairs", "pair measurement backend", "numpy"):
        assert term in page
    A = run["A"]
    assert f"{A[0, 0]:.4f}" in page and f"{A[1, 1]:.4f}" in page
    assert f"{100 * MIN_MEASURED_FRACTION:.0f} %" in page and f"{MAX_RESIDUAL_RMS_PX:g} px" in page


def test_every_referenced_png_exists_and_has_content(run):
    out = run["out"]
    names = re.findall(r'<img src="([^"]+)"', run["html"])
    expected = {"model_per_slice.png", "residual_histogram.png", *(f"residuals_z{s:02d}.png" for s in range(5)),
                *(f"thumbnail_z{s:02d}.png" for s in (0, 1, 4))}
    assert set(names) == expected
    assert {p.name for p in out.glob("*.png")} == expected
    for name in names:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            pixels = np.asarray(image.convert("L"), dtype=float)
        assert min(pixels.shape) > 200 and pixels.std() > 10, name
    for slice_id in (0, 1, 4):  # seams from the store's layout (0) or from the pairs file and A (1, 4)
        assert _seam_pixels(out / f"thumbnail_z{slice_id:02d}.png") > 500


def test_figures_are_planned_then_drawn_by_the_drawer_given_the_same_in_worker_processes(run, tmp_path):
    """Every figure the page shows goes through ``draw`` (nothing is drawn besides it), each into the folder being
    built; drawn by two worker processes (``linumpy-motor run --workers 2``), each PNG is byte-identical."""
    from linumpy_motor.pipeline.jobs import Workers

    root = run["root"]
    args = (root / "motor_transform.json", run["pairs_paths"], sorted(root.glob("*_compare.json")),
            [root / f"slice_z{s:02d}_stitch_3d.ome.zarr" for s in (0, 1, 2, 4)])
    given: list[FigureJob] = []

    def draw_and_record(figures):
        given.extend(figures)
        draw_here(figures)

    here, there = tmp_path / "here", tmp_path / "workers"
    write_report(here, *args, draw=draw_and_record)
    names = set(re.findall(r'<img src="([^"]+)"', (here / "report.html").read_text()))
    assert len(names) == 10 and sorted(f.path.name for f in given) == sorted(names)  # each figure once
    assert {p.name for p in here.glob("*.png")} == names
    folders = {f.path.parent for f in given}
    assert len(folders) == 1 and folders.pop().name.startswith(".here.tmp-"), "drawn into the folder being built"
    with Workers(2, tmp_path) as workers:
        write_report(there, *args, draw=workers.draw)
    for name in sorted(names):
        assert (there / name).read_bytes() == (here / name).read_bytes(), name


def test_no_leftovers_and_rewrite_replaces_the_folder(run, tmp_path):
    assert not list(run["root"].glob(".report*"))
    transform = tmp_path / "t.json"
    write_json(transform, {"transform": run["A"].tolist(), "diagnostics": {}})
    out = tmp_path / "report"
    write_report(out, transform, [], stitched=[run["root"] / "slice_z00_stitch_3d.ome.zarr"])
    assert (out / "thumbnail_z00.png").exists()
    write_report(out, transform, run["pairs_paths"][:1])
    assert not (out / "thumbnail_z00.png").exists() and (out / "residuals_z00.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report", "t.json"]


def test_report_without_pairs_marks_every_slice_unchecked(run, tmp_path):
    transform = tmp_path / "t.json"
    write_json(transform, {"transform": run["A"].tolist(), "diagnostics": {}})
    page = write_report(tmp_path / "r", transform, [], stitched=[run["root"] / "slice_z01_stitch_3d.ome.zarr"])
    status = json.loads((page.parent / "status.json").read_text())
    assert list(status) == ["1"] and status["1"]["status"] == "check"
    assert any("no pairs file" in r for r in status["1"]["reasons"])
    assert _seam_pixels(page.parent / "thumbnail_z01.png") == 0  # no pairs, no layout in the store: no seams
    assert not (page.parent / "residual_histogram.png").exists()


def test_stitched_with_another_model_is_flagged_and_seams_come_from_the_store(run, tmp_path):
    other = run["A"] + [[0.0, 0.8], [0.0, 0.0]]
    store = tmp_path / "slice_z06_stitch_3d.ome.zarr"
    layout = {"transform": other.tolist(), "grid": list(GRID), "tile_shape": list(TILE)}
    ngff.write_image(store, np.random.default_rng(0).random((3, 220, 280), dtype=np.float32), chunks=(1, 64, 64),
                     extra_attrs={"linumpy_motor": layout})
    transform = tmp_path / "t.json"
    write_json(transform, {"transform": run["A"].tolist(), "diagnostics": {}})
    page = write_report(tmp_path / "r", transform, [], stitched=[store])
    status = json.loads((page.parent / "status.json").read_text())["6"]
    assert any("another motor model" in r for r in status["reasons"])
    assert _seam_pixels(page.parent / "thumbnail_z06.png") > 500  # no pairs: the seams come from the store


def test_text_from_files_is_escaped(tmp_path):
    transform = tmp_path / "t.json"
    error = "<script>alert(1)</script>"
    write_json(transform, {"transform": [[64.0, 0.0], [0.0, 64.0]],
                              "diagnostics": {"per_slice": {"3": {"fit": None, "fit_error": error}}}})
    page = write_report(tmp_path / "r", transform, []).read_text()
    assert 'id="slice-3" data-status="failed"' in page
    assert "<script>" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_slice_with_every_pair_skipped_fails(tmp_path):
    transform, pairs = tmp_path / "t.json", tmp_path / "slice_z05_pairs.json"
    write_json(transform, {"transform": [[64.0, 0.0], [0.0, 64.0]], "diagnostics": {}})
    skipped = [{"tile": [0, j], "row_delta": 0, "col_delta": 1, "reason": "empty overlap"} for j in range(3)]
    write_json(pairs, _pairs_file(5, tmp_path / "s.ome.zarr", [], skipped, {}))
    page = write_report(tmp_path / "r", transform, [pairs])
    status = json.loads((page.parent / "status.json").read_text())["5"]
    assert status["status"] == "failed" and "0 of the grid's 17" in status["reasons"][0]
    assert not list(page.parent.glob("*.png")) and "no pairs for this slice" in page.read_text()


def test_an_upstream_npy_motor_model_is_read_as_every_step_reads_it(tmp_path):
    """The report reads a transform with the one reader (io.schemas.load_transform), .npy included."""
    transform, pairs = tmp_path / "t.npy", tmp_path / "slice_z05_pairs.json"
    np.save(transform, np.array([[64.0, 0.5], [-0.5, 64.0]]))
    skipped = [{"tile": [0, j], "row_delta": 0, "col_delta": 1, "reason": "empty overlap"} for j in range(3)]
    write_json(pairs, _pairs_file(5, tmp_path / "s.ome.zarr", [], skipped, {}))
    page = write_report(tmp_path / "r", transform, [pairs]).read_text()
    assert "<td>64.0000</td><td>0.5000</td>" in page and "<td>-0.5000</td><td>64.0000</td>" in page


def test_two_pairs_files_for_one_slice_is_an_error(run, tmp_path):
    with pytest.raises(InputError, match="more than one pairs file"):
        write_report(tmp_path / "r", run["root"] / "motor_transform.json", [run["pairs_paths"][0]] * 2)
    assert not (tmp_path / "r").exists()


# --- command line -------------------------------------------------------------------------------

def test_cli_writes_the_report(run, tmp_path, capsys):
    root = run["root"]
    argv = ["--transform", str(root / "motor_transform.json"), "--pairs", str(run["pairs_paths"][1]),
            "--compare", str(root / "slice_z00_compare.json"), "--out", str(tmp_path / "report")]
    assert _script().main(argv) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "report" / "report.html")
    page = (tmp_path / "report" / "report.html").read_text()
    assert 'id="slice-1" data-status="check"' in page and 'id="slice-0" data-status="check"' in page
    assert "no pairs file" in page  # slice 0 has a comparison but no pairs here


def test_cli_truncated_transform_exits_2_and_leaves_nothing(run, tmp_path):
    truncated = tmp_path / "motor_transform.json"
    truncated.write_text((run["root"] / "motor_transform.json").read_text()[:200])
    out = tmp_path / "report"
    result = subprocess.run([sys.executable, str(SCRIPT), "--transform", str(truncated), "--pairs",
                             str(run["pairs_paths"][0]), "--out", str(out)], capture_output=True, text=True)
    assert result.returncode == EXIT_BAD_INPUT
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(truncated) in lines[0] and "JSON" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["motor_transform.json"]


# --- what the page says beside the numbers ------------------------------------------------------

def test_a_slice_without_pairs_shows_no_comparison_number(run, tmp_path):
    from linumpy_motor.pipeline import steps

    transform = tmp_path / "motor_transform.json"
    write_json(transform, {"transform": run["A"].tolist(), "diagnostics": run["diagnostics"]})
    pairs = tmp_path / "slice_z07_pairs.json"
    write_json(pairs, _pairs_file(7, Path("mosaic_grid_3d_z07.ome.zarr"), [], [], {}))
    compared = steps.compare(pairs, transform, tmp_path / "slice_z07_compare.json")
    assert compared["rms_diff_px"] < 1e-9  # no pairs: registration repeats the motor positions
    page = write_report(tmp_path / "r", transform, [pairs], [tmp_path / "slice_z07_compare.json"]).read_text()
    row = re.search(r'<tr id="slice-7".*?</tr>', page).group(0)
    assert "FAILED" in row and "n/a (no tiles connected by pairs)" in row
    assert not re.search(r"\de-\d", row)


def test_provenance_physical_units_and_unrounded_scales(run):
    page = run["html"]
    provenance = page[page.index("<h2>Provenance</h2>"):]
    for slice_id in (0, 1, 2):
        source = json.loads(run["pairs_paths"][slice_id].read_text())["source"]
        assert html_escape(source) in provenance
    assert f"<th>linumpy-motor (report)</th><td>{linumpy_motor.__version__}</td>" in provenance
    marked = json.loads(run["pairs_paths"][2].read_text())["stats"]["n_background"]  # the background test, reported
    assert marked > 0 and "<th>pairs no better than chance (background test)</th>" in provenance
    row = re.search(r"<tr><td>2</td>(.*?)</tr>", provenance).group(1)
    assert f"<td>{marked}</td>" in row
    assert re.search(r"<th>report written</th><td>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC</td>", provenance)
    assert "<th>pixel size (level 0, x)</th><td>1000 µm</td>" in page  # scale 1 millimeter
    rms = run["diagnostics"]["residual_rms_px"]
    assert f"{rms:.3g} px ({rms * 1000:.3g} µm)" in page
    for key in ("scale_y", "scale_x"):
        assert re.search(rf"{key} \(step / nominal step\)</th><td>{run['diagnostics'][key]:.6f}</td>", page)


def test_per_slice_panels_keep_a_minimum_range():
    assert plots.at_least((1.502, 1.510), 0.1) == pytest.approx((1.456, 1.556))
    assert plots.at_least((0.0, 3.0), 1.0) == (0.0, 3.0)


def test_corner_marks_leave_the_middle_of_every_seam_free():
    outline = outlines.tile_outlines(1, 1, (100, 200), np.eye(2))  # (1, 5, 2) as (x, y)
    marks = outlines.corner_marks(outline, 0.1)
    assert marks.shape == (8, 2, 2)
    lengths = np.linalg.norm(marks[:, 1] - marks[:, 0], axis=1)
    assert sorted(np.round(lengths, 6)) == [10.0] * 4 + [20.0] * 4  # 10 % of each side, at both ends
    corners = outline[0, :4]
    reach = np.linalg.norm(marks[:, :, None, :] - corners[None, None], axis=-1).min(axis=-1).max(axis=-1)
    assert reach.max() == pytest.approx(20.0)  # every mark stays within 10 % of a side of its corner
    midpoints = (corners + np.roll(corners, -1, axis=0)) / 2
    assert np.linalg.norm(midpoints[:, None] - corners[None], axis=-1).min() >= 50.0  # so the seams' middles stay free


def test_the_status_rules_are_in_words_not_constant_names(run):
    rules = run["html"][run["html"].index("<h2>How the status is decided</h2>"):]
    rules = rules[:rules.index("</ul>")]
    assert not re.search(r"\b[A-Z]+_[A-Z_]+\b", rules)
    assert f"{100 * MIN_MEASURED_FRACTION:.0f} %" in rules and f"{MAX_RESIDUAL_RMS_PX:g} px" in rules
