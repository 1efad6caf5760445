"""Atomic outputs (temporary sibling, then rename) and the output folder lock."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from reliability_helpers import CLI, env, read_level0, run, tree_digest, write_small_dataset
from zarr.core.sync import sync

from linumpy_motor.errors import InputError
from linumpy_motor.io import ngff, outputs
from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT


def store(path: Path, value: float) -> Path:
    """A small image; written through ``atomic_output`` when ``path`` is not a temporary (so it is marked)."""
    if outputs.TEMPORARY.match(path.name):
        ngff.write_image(path, np.full((2, 32, 32), value, dtype=np.float32), chunks=(2, 16, 16))
        return path
    with outputs.atomic_output(path, "test") as tmp:
        store(tmp, value)
    return path


def test_an_exception_inside_leaves_neither_temporary_nor_final(tmp_path):
    target = tmp_path / "result.json"
    with pytest.raises(RuntimeError, match="boom"):
        with outputs.atomic_output(target) as tmp:
            assert tmp.parent == tmp_path and tmp.name.startswith(".result.json.tmp-")
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_store_leaves_nothing(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with outputs.atomic_output(tmp_path / "s.ome.zarr") as tmp:
            store(tmp, 1.0)
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_a_zarr_write_still_running_when_the_output_fails_does_not_bring_its_temporary_back(tmp_path):
    """A Ctrl-C stops the wait for a zarr write (run on zarr's own I/O thread), not the write: the temporary is
    removed only once zarr's writes have finished, so none creates it again afterwards."""
    target = tmp_path / "slice.ome.zarr"

    async def late_write(tmp: Path) -> None:
        await asyncio.sleep(0.3)
        await zarr.api.asynchronous.create_array(str(tmp / "late"), shape=(4,), dtype="u1")

    with pytest.raises(KeyboardInterrupt):
        with outputs.atomic_output(target) as tmp:
            store(tmp, 1.0)
            # a write whose caller no longer waits (as an interrupted main thread no longer does)
            threading.Thread(target=sync, args=(late_write(tmp),), daemon=True).start()
            raise KeyboardInterrupt
    time.sleep(0.6)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_rewrite_keeps_the_old_file(tmp_path):
    target = tmp_path / "result.json"
    outputs.write_json(target, {"b": 1, "a": 2})
    before = target.read_bytes()
    with pytest.raises(ValueError):
        with outputs.atomic_output(target) as tmp:
            tmp.write_text("{")
            raise ValueError("stop")
    assert target.read_bytes() == before
    assert json.loads(before) == {"a": 2, "b": 1, "linumpy_motor": outputs.marker("output")}
    assert before.index(b'"a"') < before.index(b'"b"')
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]


def test_a_store_is_replaced_only_once_the_new_one_is_complete(tmp_path):
    target = store(tmp_path / "s.ome.zarr", 1.0)
    with outputs.atomic_output(target, "test") as tmp:
        store(tmp, 2.0)
        assert np.all(read_level0(target) == 1.0), "the old store must stay readable while the new one is written"
    assert np.all(read_level0(target) == 2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["s.ome.zarr"]


def test_a_failed_store_rewrite_keeps_the_old_store(tmp_path):
    target = store(tmp_path / "s.ome.zarr", 1.0)
    with pytest.raises(OSError):
        with outputs.atomic_output(target, "test") as tmp:
            store(tmp, 2.0)
            raise OSError("disk full")
    assert np.all(read_level0(target) == 1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["s.ome.zarr"]


def test_a_failed_final_rename_puts_the_old_store_back(tmp_path, monkeypatch):
    target = store(tmp_path / "s.ome.zarr", 1.0)
    real_rename = Path.rename

    def rename(self, destination):
        if self.name.startswith(".s.ome.zarr.tmp-"):
            raise OSError("rename failed")
        return real_rename(self, destination)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(OSError, match="rename failed"):
        with outputs.atomic_output(target, "test") as tmp:
            store(tmp, 2.0)
    assert np.all(read_level0(target) == 1.0)
    assert [p.name for p in tmp_path.iterdir()] == ["s.ome.zarr"]


def test_an_output_in_a_missing_folder_is_refused_before_writing(tmp_path):
    with pytest.raises(InputError, match="its folder does not exist"):
        with outputs.atomic_output(tmp_path / "missing" / "x.json"):
            pytest.fail("the body must not run")
    assert list(tmp_path.iterdir()) == []


def test_json_is_written_with_sorted_keys_and_the_same_bytes_every_time(tmp_path):
    outputs.write_json(tmp_path / "a.json", {"z": [1.5, 2], "a": {"y": 1, "b": None}})
    outputs.write_json(tmp_path / "b.json", {"a": {"b": None, "y": 1}, "z": [1.5, 2]})
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    expected = {"a": {"b": None, "y": 1}, "z": [1.5, 2], "linumpy_motor": outputs.marker("output")}
    assert (tmp_path / "a.json").read_text() == json.dumps(expected, indent=2, sort_keys=True) + "\n"


HOLD_LOCK = """
import sys, time
from filelock import FileLock
with FileLock(sys.argv[1], timeout=0):
    print("locked", flush=True)
    sys.stdin.read()
"""


@pytest.mark.slow
def test_a_second_run_is_refused_while_another_process_holds_the_folder(tmp_path):
    data = write_small_dataset(tmp_path / "data", n_slices=1)
    out = tmp_path / "out"
    (out / ".linumpy-motor").mkdir(parents=True)
    (out / "pairs").mkdir()
    theirs = out / "pairs" / ".slice_z00_pairs.json.tmp-4242"  # the lock holder's work in progress
    theirs.write_text("partial")
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out / ".linumpy-motor" / "lock")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = tree_digest(out)
        refused = run([CLI, "run", str(data), str(out)])
    finally:
        holder.communicate("", timeout=30)
    assert refused.returncode == EXIT_BAD_INPUT
    assert refused.stderr == f"linumpy-motor: error: {out}: another linumpy-motor run is writing to this folder\n"
    assert tree_digest(out) == before, "a refused run must not touch the folder (not even others' temporaries)"


def test_a_json_write_interrupted_halfway_leaves_the_old_file_whole(tmp_path, monkeypatch):
    target = tmp_path / "motor_transform.json"
    outputs.write_json(target, {"transform": [[1, 0], [0, 1]]}, "fit")
    before = target.read_bytes()
    real_write_text = Path.write_text

    def half_then_killed(self: Path, text: str, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)  # the bytes reach the disk...
        raise KeyboardInterrupt  # ...and the process is stopped before the rest

    monkeypatch.setattr(Path, "write_text", half_then_killed)
    with pytest.raises(KeyboardInterrupt):
        outputs.write_json(target, {"transform": [[2, 0], [0, 2]]}, "fit")
    monkeypatch.undo()
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["motor_transform.json"]
