"""Never delete or overwrite what this program did not write (the rule of ``linumpy_motor.io.outputs``).

Each test here reproduces a way an earlier version lost a user's data: the report step replacing
whatever folder ``--out`` named, the runner replacing ``OUTDIR/report`` or working in the current
folder for an empty OUTDIR argument, a failed first run removing a parent folder another run had
filled meanwhile, ``synth`` replacing real acquisitions, and clean-up removing any dot-name with
``.tmp-`` or ``.old-`` in it.
"""

from __future__ import annotations

import json
import runpy
import shutil
from pathlib import Path

import numpy as np
import pytest
import zarr
from reliability_helpers import BIN, GRID, TILE, temporaries, tree_digest, write_small_dataset

from linumpy_motor import synthetic
from linumpy_motor.errors import InputError
from linumpy_motor.io import ngff, outputs
from linumpy_motor.pipeline import resume, runner, steps
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.qc.report import write_report
from linumpy_motor.stitch.assemble import stitch_slice

SMALL = synthetic.SyntheticSpec(nx=GRID[0], ny=GRID[1], tile_shape=TILE, seed=1)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return write_small_dataset(tmp_path_factory.mktemp("safety") / "data", n_slices=2)


@pytest.fixture(scope="module")
def finished(dataset, tmp_path_factory) -> Path:
    """A finished run's output folder (read-only for the tests)."""
    out = tmp_path_factory.mktemp("safety-run") / "out"
    runner.run(dataset, out, RunOptions(), progress=False)
    return out


def user_folder(path: Path) -> Path:
    """A folder of a user's own files (notes and a fake acquisition)."""
    (path / "raw.ome.zarr").mkdir(parents=True)
    (path / "raw.ome.zarr" / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group"}')
    (path / "notes.txt").write_text("irreplaceable")
    return path


def bin_main(script: str):
    return runpy.run_path(str(BIN / script), run_name="tested")["main"]


# -- 1. the report step ------------------------------------------------------------------------------

def test_report_out_naming_a_user_folder_is_refused_and_left_untouched(finished, tmp_path, capsys):
    folder = user_folder(tmp_path / "mine")
    before = tree_digest(folder)
    code = bin_main("linum_motor_report.py")(
        ["--transform", str(finished / "motor_transform.json"), "--pairs",
         *map(str, sorted((finished / "pairs").glob("*.json"))), "--out", str(folder)])
    err = capsys.readouterr().err
    assert code == 2
    assert err == (f"linum_motor_report.py: error: {folder}: exists and was not written by linumpy-motor; "
                   "refusing to replace it\n")
    assert tree_digest(folder) == before


def test_report_out_holding_its_own_inputs_is_refused(finished, tmp_path):
    work = tmp_path / "results"
    shutil.copytree(finished, work)
    before = tree_digest(work)
    with pytest.raises(InputError, match="output would hold the input"):
        write_report(work, work / "motor_transform.json", sorted((work / "pairs").glob("*.json")))
    assert tree_digest(work) == before


def test_a_report_this_program_wrote_is_replaced_but_not_once_a_user_adds_to_it(finished, tmp_path):
    pairs = sorted((finished / "pairs").glob("*.json"))
    out = tmp_path / "report"
    write_report(out, finished / "motor_transform.json", pairs)
    assert outputs.is_ours(out)
    write_report(out, finished / "motor_transform.json", pairs[:1])  # ours: replaced
    assert json.loads((out / "status.json").read_text()).keys() == {"0"}
    (out / "my_notes.txt").write_text("mine")
    assert not outputs.is_ours(out)
    with pytest.raises(InputError, match="not written by linumpy-motor"):
        write_report(out, finished / "motor_transform.json", pairs)
    assert (out / "my_notes.txt").read_text() == "mine"


# -- 2. the runner's OUTDIR ---------------------------------------------------------------------------

def test_an_input_folder_inside_outdir_is_refused(dataset, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(dataset, out / "report")  # the slices sit in OUTDIR/report
    before = tree_digest(out)
    with pytest.raises(InputError, match="output would hold the input"):
        runner.run(out / "report", out, RunOptions(), progress=False)
    assert tree_digest(out) == before


def test_a_user_report_folder_in_outdir_is_refused_before_any_work(dataset, tmp_path):
    out = user_folder(tmp_path / "shared")
    user_folder(out / "report")
    before = tree_digest(out)
    with pytest.raises(InputError, match="report: exists and was not written by linumpy-motor"):
        runner.run(dataset, out, RunOptions(), progress=False)
    assert tree_digest(out) == before, "refused before any work: nothing added, nothing removed"


@pytest.mark.parametrize("argument", ["", "  "])
def test_an_empty_outdir_argument_is_refused(dataset, tmp_path, monkeypatch, argument):
    monkeypatch.chdir(user_folder(tmp_path / "cwd"))
    user_folder(tmp_path / "cwd" / "report")
    before = tree_digest(tmp_path / "cwd")
    with pytest.raises(InputError, match="empty"):
        runner.run(dataset, argument, RunOptions(), progress=False)
    assert tree_digest(tmp_path / "cwd") == before


# -- 3. clean-up after a failed first run -------------------------------------------------------------

def test_a_failed_run_removes_only_the_folders_it_created(tmp_path, monkeypatch):
    data = tmp_path / "data"
    synthetic.write_dataset(data, SMALL, n_slices=1, save_scenes=False)

    def another_run_finishes_then_this_one_fails(**kwargs):
        (tmp_path / "results" / "A").mkdir()  # the other run of `for b in A B; do ... & done`
        (tmp_path / "results" / "A" / "motor_transform.json").write_text("A's result")
        raise InputError(kwargs["source"], "data contains NaN or Inf")

    monkeypatch.setattr(steps, "measure_pairs", another_run_finishes_then_this_one_fails)
    with pytest.raises(InputError, match="NaN"):
        runner.run(data, tmp_path / "results" / "B", RunOptions(), progress=False)
    assert (tmp_path / "results" / "A" / "motor_transform.json").read_text() == "A's result"
    assert not (tmp_path / "results" / "B").exists(), "what this run created and left empty is removed"


def test_a_failed_run_in_an_existing_folder_leaves_it_as_it_was(tmp_path, monkeypatch):
    data = tmp_path / "data"
    synthetic.write_dataset(data, SMALL, n_slices=1, save_scenes=False)
    out = user_folder(tmp_path / "shared")
    before = tree_digest(out)

    def fails(**kwargs):
        raise InputError(kwargs["source"], "data contains NaN or Inf")

    monkeypatch.setattr(steps, "measure_pairs", fails)
    with pytest.raises(InputError):
        runner.run(data, out, RunOptions(), progress=False)
    assert tree_digest(out) == before


# -- 4. synth -----------------------------------------------------------------------------------------

def test_synth_never_replaces_a_real_acquisition(tmp_path):
    real = tmp_path / "mosaic_grid_3d_z00.ome.zarr"
    ngff_store = real / "0"
    ngff_store.mkdir(parents=True)
    (real / "zarr.json").write_text('{"zarr_format": 3, "node_type": "group", "attributes": {}}')
    (ngff_store / "zarr.json").write_text('{"zarr_format": 3, "node_type": "array"}')
    before = tree_digest(tmp_path)
    with pytest.raises(InputError, match="mosaic_grid_3d_z00.ome.zarr: exists and was not written"):
        synthetic.write_dataset(tmp_path, SMALL, n_slices=2)
    assert tree_digest(tmp_path) == before, "refused before writing anything"


def test_synth_replaces_its_own_dataset(tmp_path):
    synthetic.write_dataset(tmp_path, SMALL, n_slices=1)
    first = json.loads((tmp_path / "truth.json").read_text())
    synthetic.write_dataset(tmp_path, synthetic.SyntheticSpec(**{**SMALL.__dict__, "seed": 2}), n_slices=1)
    assert json.loads((tmp_path / "truth.json").read_text())["slices"] != first["slices"]
    assert outputs.is_ours(tmp_path / "mosaic_grid_3d_z00.ome.zarr")
    assert outputs.is_ours(tmp_path / "truth_scenes")


# -- 5. temporaries -----------------------------------------------------------------------------------

def test_clean_up_removes_only_this_programs_exact_temporaries(dataset, finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    theirs = [out / ".data.old-backup", out / "pairs" / ".notes.txt.tmp-123", out / ".archive.tmp-7"]
    for path in theirs:
        path.mkdir()
        (path / "keep").write_text("user data")
    ours = [out / ".motor_transform.json.tmp-99999", out / "stitched" / ".slice_z00_stitch_3d.ome.zarr.old-4242"]
    for path in ours:
        path.mkdir()
    result = runner.run(dataset, out, RunOptions(), progress=False)
    assert set(result["ran"].values()) == {0}
    assert all((path / "keep").read_text() == "user data" for path in theirs)
    assert not any(path.exists() for path in ours)


def test_temporary_names_follow_one_exact_pattern(tmp_path):
    target = tmp_path / "x.json"
    assert outputs.TEMPORARY.match(outputs.temporary_name(target).name)["name"] == "x.json"
    for name in (".data.old-backup", ".x.json.tmp-12a", "x.json.tmp-1", ".x.json.tmp-"):
        assert not outputs.TEMPORARY.match(name), name


def test_a_link_is_never_replaced(tmp_path):
    (tmp_path / "elsewhere.json").write_text("{}")
    outputs.write_json(tmp_path / "mine.json", {"a": 1})
    (tmp_path / "link.json").symlink_to(tmp_path / "mine.json")
    with pytest.raises(InputError, match="not written by linumpy-motor"):
        outputs.write_json(tmp_path / "link.json", {"a": 2})
    assert json.loads((tmp_path / "mine.json").read_text())["a"] == 1


# -- stale results ------------------------------------------------------------------------------------

def test_a_rerun_with_a_given_transform_removes_the_measured_runs_outputs(dataset, finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    (out / "compare" / "my_notes.json").write_text('{"mine": true}')
    given = tmp_path / "given.json"
    given.write_text((finished / "motor_transform.json").read_text())
    result = runner.run(dataset, out, RunOptions(transform=given), progress=False)
    assert result["ran"] == {"transform": 1, "stitch": 2}
    assert not (out / "report").exists(), "the old report would describe another model"
    assert sorted(p.name for p in (out / "compare").iterdir()) == ["my_notes.json"], "a user's file stays"
    assert not (out / "pairs").exists() and not (out / "flatfield").exists(), "folders left empty are removed"


def test_a_rerun_after_a_slice_was_removed_drops_its_outputs(dataset, finished, tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    shutil.copytree(finished, out)
    shutil.copytree(dataset, data)
    shutil.rmtree(data / "mosaic_grid_3d_z01.ome.zarr")
    result = runner.run(data, out, RunOptions(), progress=False)
    assert result["ran"]["measure"] == 0 and result["ran"]["report"] == 1
    for folder in ("pairs", "stitched", "compare"):
        assert [p.name.split("_")[1] for p in sorted((out / folder).iterdir())] == ["z00"], folder
    assert set(json.loads((out / "report" / "status.json").read_text())) == {"0"}


def test_symlinked_levels_are_fingerprinted_by_their_targets(dataset, tmp_path):
    store = tmp_path / "mosaic_grid_3d_z00.ome.zarr"
    store.mkdir()
    shutil.copy(dataset / "mosaic_grid_3d_z00.ome.zarr" / "zarr.json", store / "zarr.json")
    first, second = tmp_path / "level_a", tmp_path / "level_b"
    shutil.copytree(dataset / "mosaic_grid_3d_z00.ome.zarr" / "0", first)
    shutil.copytree(dataset / "mosaic_grid_3d_z01.ome.zarr" / "0", second)
    (store / "0").symlink_to(first, target_is_directory=True)
    before = resume.store_fingerprint(store)
    chunk = next(p for p in sorted(first.rglob("*")) if p.is_file() and p.name != "zarr.json")
    chunk.write_bytes(chunk.read_bytes() + b"\0")
    assert resume.store_fingerprint(store) != before, "a changed file behind the link is a changed input"
    changed = resume.store_fingerprint(store)
    (store / "0").unlink()
    (store / "0").symlink_to(second, target_is_directory=True)
    assert resume.store_fingerprint(store) != changed, "a link pointed elsewhere is another input"


def test_nothing_is_left_under_a_temporary_name(finished):
    assert not temporaries(finished)


def test_every_output_carries_the_marker(finished):
    made = [finished / "motor_transform.json", finished / "report",
            *(finished / "pairs").iterdir(), *(finished / "stitched").iterdir(), *(finished / "compare").iterdir()]
    assert all(outputs.is_ours(path) for path in made), [p for p in made if not outputs.is_ours(p)]
    assert np.isfinite(json.loads((finished / "motor_transform.json").read_text())["transform"]).all()


# -- user content inside an output, at any depth (issue 19, item 1) ----------------------------------

STORE = "slice_z00_stitch_3d.ome.zarr"


def add_labels(store: Path) -> Path:
    """A ``labels/cells`` image inside a stitched store, as napari and ome-zarr add one."""
    labels = zarr.open_group(str(store), mode="r+").create_group("labels")
    labels.attrs["labels"] = ["cells"]
    labels.create_array("cells", shape=(2, 8, 8), dtype="uint8")[...] = 1
    return store / "labels"


def test_a_rerun_refuses_a_stitched_store_holding_a_users_labels_and_deletes_nothing(dataset, finished, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(finished, out)
    labels = add_labels(out / "stitched" / STORE)
    notes = out / "stitched" / "slice_z01_stitch_3d.ome.zarr" / "0" / "NOTES.txt"
    notes.write_text("mine")
    before = tree_digest(out)
    with pytest.raises(InputError) as info:
        runner.run(dataset, out, RunOptions(blending="average"), progress=False)
    assert info.value.path == labels and "refusing to replace" in info.value.problem
    assert tree_digest(out) == before, "refused before any work"
    shutil.rmtree(labels)
    with pytest.raises(InputError) as info:
        runner.run(dataset, out, RunOptions(blending="average"), progress=False)
    assert info.value.path == notes
    assert notes.read_text() == "mine"


def test_a_dropped_slices_store_holding_a_users_array_is_refused_not_deleted(dataset, finished, tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    shutil.copytree(finished, out)
    shutil.copytree(dataset, data)
    shutil.rmtree(data / "mosaic_grid_3d_z01.ome.zarr")
    labels = add_labels(out / "stitched" / "slice_z01_stitch_3d.ome.zarr")
    before = tree_digest(out)
    with pytest.raises(InputError) as info:
        runner.run(data, out, RunOptions(), progress=False)
    assert info.value.path == labels
    assert tree_digest(out) == before, "nothing removed, nothing redone"


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_only_what_this_program_writes_inside_a_store_is_ours(tmp_path, version):
    store = tmp_path / "s.ome.zarr"
    with outputs.atomic_output(store, "stitch") as tmp:
        ngff.write_image(tmp, np.ones((2, 16, 16), np.float32), chunks=(1, 8, 8), version=version)
    assert outputs.is_ours(store)
    chunk = next(p for p in sorted((store / "0").rglob("*")) if p.is_file() and p.name not in outputs.ZARR_METADATA)
    extras = [store / "0" / "NOTES.txt",  # a note beside a level's chunks
              chunk.parent / "0.bak",  # a chunk-like name that is no chunk key
              chunk.parent.parent / "9",  # a file where the chunk keys have a folder
              store / "1"]  # a level the multiscales does not list
    for extra in extras:
        extra.write_text("mine")
        assert not outputs.is_ours(store), extra
        assert outputs.foreign_path(store) == extra
        extra.unlink()
    (store / "0" / "link").symlink_to(chunk)
    assert outputs.foreign_path(store) == store / "0" / "link"


def test_a_report_folder_is_ours_only_with_nothing_but_its_listed_files(finished, tmp_path):
    report = tmp_path / "report"
    shutil.copytree(finished / "report", report)
    assert outputs.is_ours(report)
    listed = report / "report.html"
    listed.unlink()
    listed.mkdir()  # a listed name that is now a folder of the user's
    (listed / "mine.txt").write_text("mine")
    assert not outputs.is_ours(report)
    assert outputs.foreign_path(report) == listed


def test_no_stage_replaces_another_kind_of_output(dataset, finished, tmp_path):
    given = tmp_path / "data"
    shutil.copytree(dataset, given)
    before = tree_digest(given)
    with pytest.raises(InputError, match="synthetic input slice or truth, not its pairs file"):
        steps.measure_pairs(given / "mosaic_grid_3d_z00.ome.zarr", given / "truth.json", overlap=0.2)
    A = json.loads((finished / "motor_transform.json").read_text())["transform"]
    with pytest.raises(InputError, match="not its stitched slice"):
        stitch_slice(given / "mosaic_grid_3d_z00.ome.zarr", given / "mosaic_grid_3d_z01.ome.zarr", A)
    assert tree_digest(given) == before


# -- outputs through links, and folders that are files (issue 19, items 2 and 8) --------------------

@pytest.mark.parametrize("link, target", [("stitched", "."), ("pairs", "mosaic_grid_3d_z00.ome.zarr"),
                                          (".linumpy-motor", "."), ("motor_transform.json", "truth.json")])
def test_a_linked_output_path_leading_into_the_input_is_refused_before_any_work(dataset, tmp_path, link, target):
    data, out = tmp_path / "data", tmp_path / "out"
    shutil.copytree(dataset, data)
    out.mkdir()
    (out / link).symlink_to(data / target)
    before = tree_digest(data), tree_digest(out)
    with pytest.raises(InputError) as info:
        runner.run(data, out, RunOptions(), progress=False)
    assert info.value.path == out / link and "output would be" in info.value.problem
    assert "through a link" in info.value.problem
    assert (tree_digest(data), tree_digest(out)) == before


def test_a_file_where_an_output_folder_goes_is_refused_before_measuring(dataset, tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "stitched").write_text("mine")
    measured = []
    monkeypatch.setattr(steps, "measure_pairs", lambda **kwargs: measured.append(kwargs))
    with pytest.raises(InputError) as info:
        runner.run(dataset, out, RunOptions(), progress=False)
    assert info.value.path == out / "stitched" and "is a file" in info.value.problem
    assert measured == [] and sorted(p.name for p in out.iterdir()) == ["stitched"]


def test_a_script_given_one_of_its_inputs_as_output_names_it_not_a_temporary(dataset, finished, tmp_path, capsys):
    transform = tmp_path / "motor_transform.json"
    shutil.copy(finished / "motor_transform.json", transform)
    before = transform.read_bytes()
    source = dataset / "mosaic_grid_3d_z00.ome.zarr"
    code = bin_main("linum_motor_stitch.py")([str(source), str(transform), str(transform)])
    assert code == 2
    assert capsys.readouterr().err == f"linum_motor_stitch.py: error: {transform}: output would be the input itself\n"
    assert transform.read_bytes() == before and sorted(tmp_path.iterdir()) == [transform]
