"""What the command lines say about themselves: help texts that are true and read as words, and one-line
answers to bad values a person can act on."""

from __future__ import annotations

import re

import pytest

from linumpy_motor import synthetic
from linumpy_motor.errors import InputError
from linumpy_motor.pipeline import cli


def _help(*command: str) -> str:
    parser = cli.build_parser()
    for action in parser._subparsers._group_actions if command else ():  # the sub-command's own parser
        parser = action.choices[command[0]]
    return " ".join(parser.format_help().split())


def test_the_description_has_no_markup():
    assert "``" not in _help() and "linumpy-motor: synthesise a dataset" in _help()


def test_a_flag_says_what_it_does_and_no_default():
    text = _help("run")
    flag = text[text.index("--no-background-test "):text.index("--max-shift MAX_SHIFT ")]
    assert "on unless --no-background-test: it marks" in flag and "every pair goes to the robust fit" in flag
    assert "default" not in flag
    assert not re.search(r"\(default: (True|False)\)", text + _help("synth"))


def test_every_synth_option_has_help_and_several_values_show_as_typed():
    text = _help("synth")
    assert "--grid NX NY tile rows and columns (default: 6 7)" in text
    assert "--tile Z H W tile shape (default: 8 160 160)" in text
    assert re.search(r"--dtype \{[^}]*\} sample type", text)
    assert re.search(r"--ngff-version \{[^}]*\} store format", text)


@pytest.mark.parametrize(("argv", "problem"), [
    (["--workers", "0"], "argument --workers: must be at least 1, got 0"),
    (["--threads", "two"], "argument --threads: must be a whole number, got 'two'"),
    (["--max-empty-fraction", "2"], "argument --max-empty-fraction: must be at most 1, got 2"),
    (["--drift-tolerance", "0"], "argument --drift-tolerance: must be more than 0, got 0"),
])
def test_a_bad_number_is_answered_in_words(argv, problem, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["run", "in", "out", *argv])
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == f"linumpy-motor run: error: {problem} (see --help)"


def test_synth_refuses_to_write_into_a_store(tmp_path):
    store = tmp_path / "mosaic_grid_3d_z00.ome.zarr"
    store.mkdir()
    with pytest.raises(InputError, match="is a zarr store; give the folder to write the slices into"):
        synthetic.write_dataset(store, synthetic.SyntheticSpec(nx=2, ny=2, tile_shape=(1, 16, 16)), n_slices=1)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "zarr.json").write_text("{}")
    spec = synthetic.SyntheticSpec(nx=2, ny=2, tile_shape=(1, 16, 16))
    with pytest.raises(InputError, match=f"lies inside the zarr store {tmp_path / 'plain'}"):
        synthetic.write_dataset(tmp_path / "plain" / "data", spec)
    assert sorted(p.name for p in store.iterdir()) == [] and not (tmp_path / "plain" / "data").exists()
