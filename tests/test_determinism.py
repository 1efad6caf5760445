"""Two runs on the same input give identical outputs (1 worker or 2), and the input is never touched."""

from __future__ import annotations

from pathlib import Path

import pytest
from reliability_helpers import assert_same_outputs, read_levels, stores, temporaries, tree_digest, write_small_dataset

from linumpy_motor.pipeline import runner, steps
from linumpy_motor.pipeline.options import RunOptions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("determinism")
    data = write_small_dataset(root / "data", n_slices=3)
    before = tree_digest(data)
    outs = {}
    for name, workers in (("first", 1), ("second", 1), ("two workers", 2)):
        outs[name] = root / f"out-{name.replace(' ', '-')}-x7q"
        runner.run(data, outs[name], RunOptions(workers=workers), progress=False)
    return {"data": data, "before": before, "after": tree_digest(data), **outs}


def test_two_runs_give_identical_outputs(runs):
    assert_same_outputs(runs["first"], runs["second"])
    stitched = stores(runs["first"])
    assert len(stitched) == 3 and all(len(read_levels(store)[1]) == 2 for store in stitched), \
        "every pyramid level is compared: the data must give more than one"


def test_two_workers_give_the_same_outputs_as_one(runs):
    assert_same_outputs(runs["first"], runs["two workers"])


def test_the_input_stores_are_untouched(runs):
    """Every file's content, size and modification time, and every folder, are as before the runs."""
    assert runs["after"] == runs["before"]
    assert len([k for k in runs["before"] if k.endswith("zarr.json")]) >= 6, "the digest must cover the stores"


def test_no_temporaries_are_left(runs):
    for name in ("first", "second", "two workers"):
        assert not temporaries(runs[name])


def test_a_subsampled_fit_is_reproducible_and_depends_on_its_seed(runs, tmp_path):
    pairs = sorted((runs["first"] / "pairs").glob("*.json"))
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):
        steps.fit_affine(pairs, tmp_path / f"{name}.json", n_samples=20, seed=seed)
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    assert (tmp_path / "a.json").read_bytes() != (tmp_path / "c.json").read_bytes()


def test_outputs_do_not_depend_on_the_output_folder_name(runs):
    """The runs above wrote to differently named folders; nothing of the folder name leaks into the outputs."""
    for path in Path(runs["second"]).rglob("*.json"):
        assert "x7q" not in path.read_text(), f"{path} mentions its output folder"
