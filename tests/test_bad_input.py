"""Bad input is refused cleanly by `linumpy-motor run` and by every bin/ script.

Each case runs the real command in a process of its own (forked from one driver subprocess that
imports the package once; see ``reliability_helpers.run_forked``) and must give: exit code EXIT_BAD_INPUT,
exactly one line on stderr naming the file at fault and the problem, no traceback (one appears
with --debug), nothing written (no output at all for errors found before work starts; for errors
found later only the outputs of completed steps), no temporary names anywhere, and the input
untouched. All cases are built first and run two at a time in one module fixture, to keep the
module fast; one case per command is run again with ``--debug`` as a plain subprocess of the
installed entry point.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import zarr
from filelock import FileLock
from reliability_helpers import (
    CLI,
    GRID,
    REPO,
    TILE,
    bin_command,
    error_lines,
    json_of,
    output_files,
    read_level0,
    run,
    run_forked,
    temporaries,
    tree_digest,
    write_small_dataset,
    write_store,
)

from linumpy_motor.io import ngff
from linumpy_motor.pipeline import runner, steps
from linumpy_motor.pipeline.entry import EXIT_BAD_INPUT
from linumpy_motor.pipeline.logs import LOG_FILE
from linumpy_motor.pipeline.options import RunOptions
from linumpy_motor.qc.report import write_report

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Context:
    """What the cases share: a good dataset, one slice as an array, its pairs and a fitted transform."""

    root: Path
    dataset: Path
    volume: np.ndarray
    pairs: list[Path]
    transform: Path


@dataclass
class Invocation:
    """One bad-input command and what its error must say.

    ``named``: the path the error line must name (None for a bad parameter). ``output``: what the
    command would write; it must not exist afterwards unless ``leaves`` lists the files that the
    completed steps of a run keep (relative to ``output``). ``held``: a lock held while it runs.
    ``skip``: why the case cannot be set up here (e.g. permissions when running as root).
    """

    command: list[str]
    prog: str
    named: Path | None
    problems: tuple[str, ...]
    output: Path | None = None
    leaves: frozenset[str] = field(default_factory=frozenset)
    held: FileLock | None = None
    skip: str | None = None


def slice_store(folder: Path, volume: np.ndarray, slice_id: int = 0, **kwargs) -> Path:
    """Write one slice ``mosaic_grid_3d_zNN.ome.zarr`` into ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    return write_store(folder / f"mosaic_grid_3d_z{slice_id:02d}.ome.zarr", volume, **kwargs)


def with_value(c: Context, z: int, value: float) -> np.ndarray:
    """The context's slice with one pixel of plane ``z`` set to ``value`` (NaN or Inf)."""
    volume = c.volume.copy()
    volume[z, TILE[1] + 40, TILE[2] + 50] = value  # inside tile (1, 1)
    return volume


def corrupt_one_chunk(store: Path) -> Path:
    """Overwrite one chunk (or shard) file of level 0 with garbage bytes; return it."""
    chunks = sorted(p for p in (store / "0").rglob("*")
                    if p.is_file() and p.name not in ("zarr.json", ".zarray", ".zattrs"))
    target = chunks[len(chunks) // 2]
    target.write_bytes(np.random.default_rng(0).integers(0, 256, 333, dtype=np.uint8).tobytes())
    return target


def four_d_store(path: Path) -> Path:
    """An NGFF 0.5 image whose level 0 is 4-D (2-D and 3-D grids are accepted)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", shape=(2, 4, 288, 640), chunks=(1, *TILE), dtype="float32", fill_value=0)
    multiscale = ngff.multiscales([(1.0, 1.0, 1.0)], (None, None, None), "0.5")
    group.attrs.update(ngff.root_attributes(multiscale, "0.5"))
    return path


def truncated(source: Path, target: Path) -> Path:
    """The first half of ``source`` written to ``target``."""
    text = source.read_text()
    target.write_text(text[: len(text) // 2])
    return target


def edited(source: Path, target: Path, edit: Callable[[dict], None]) -> Path:
    """``source``'s JSON changed in place by ``edit``, written to ``target``."""
    content = json_of(source)
    edit(content)
    target.write_text(json.dumps(content))
    return target


def cli_run(data: Path, out: Path, *options) -> list[str]:
    """``linumpy-motor run DATA OUT [options]`` (progress bars are off: stderr is not a terminal)."""
    return [CLI, "run", str(data), str(out), *map(str, options)]


RUN = "linumpy-motor"
MEASURE, FIT, COMPARE = "linum_motor_measure_pairs.py", "linum_motor_fit_affine.py", "linum_motor_compare.py"
STITCH, REPORT, SYNTH = "linum_motor_stitch.py", "linum_motor_report.py", "linum_motor_synth.py"


CASES: dict[str, Callable[[Path, Context], Invocation]] = {}


def case(build: Callable[[Path, Context], Invocation]) -> Callable[[Path, Context], Invocation]:
    """Register a bad-input case: ``build(folder, context)`` makes the bad input under ``folder``."""
    CASES[build.__name__.replace("_", "-")] = build
    return build


@case
def run_missing_input(f: Path, c: Context) -> Invocation:
    return Invocation(cli_run(f / "nope", f / "out"), RUN, f / "nope", ("no such file or directory",), f / "out")


@case
def run_empty_folder(f: Path, c: Context) -> Invocation:
    (f / "empty").mkdir()
    return Invocation(cli_run(f / "empty", f / "out"), RUN, f / "empty", ("no *.ome.zarr slices",), f / "out")


@case
def run_folder_not_a_zarr_store(f: Path, c: Context) -> Invocation:
    store = f / "data" / "mosaic_grid_3d_z00.ome.zarr"
    store.mkdir(parents=True)
    (store / "notes.txt").write_text("not zarr")
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("not a zarr store",), f / "out")


@case
def run_zarr_without_ome_metadata(f: Path, c: Context) -> Invocation:
    store = f / "data" / "mosaic_grid_3d_z00.ome.zarr"
    zarr.open_group(str(store), mode="w").create_array("0", shape=(4, 96, 96), dtype="float32")
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("not an OME-Zarr image",), f / "out")


@case
def run_truncated_array_metadata(f: Path, c: Context) -> Invocation:
    store = slice_store(f / "data", c.volume)
    truncated(store / "0" / "zarr.json", store / "0" / "zarr.json")
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("level 0 array '0' cannot be opened",), f / "out")


@case
def run_multiscales_without_datasets(f: Path, c: Context) -> Invocation:
    store = slice_store(f / "data", c.volume)
    edited(store / "zarr.json", store / "zarr.json", lambda j: j["attributes"]["ome"]["multiscales"][0].pop("datasets"))
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("malformed 'multiscales' metadata",), f / "out")


@case
def run_4d_array(f: Path, c: Context) -> Invocation:
    (f / "data").mkdir()
    store = four_d_store(f / "data" / "mosaic_grid_3d_z00.ome.zarr")
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("expected a 3-D (z, y, x) or 2-D (y, x) array",),
                      f / "out")


@case
def run_not_a_whole_number_of_tiles(f: Path, c: Context) -> Invocation:
    store = slice_store(f / "data", np.ascontiguousarray(c.volume[:, :, :-10]))
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("not a whole number of 96x128 tiles",),
                      f / "out")


@case
def run_nan_in_the_measured_plane(f: Path, c: Context) -> Invocation:
    store = slice_store(f / "data", with_value(c, 2, np.nan))
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("data contains NaN or Inf",), f / "out")


@case
def run_store_name_with_a_newline(f: Path, c: Context) -> Invocation:  # the name is written escaped, on one line
    (f / "data").mkdir()
    write_store(f / "data" / "mosaic_grid_3d_z00\nevil.ome.zarr", with_value(c, 2, np.nan))
    return Invocation(cli_run(f / "data", f / "out"), RUN, None,
                      (f"{f / 'data'}/mosaic_grid_3d_z00\\nevil.ome.zarr: data contains NaN or Inf",), f / "out")


@case
def run_tiles_one_pixel_high(f: Path, c: Context) -> Invocation:  # a store chunked by pixel row, no tile_shape
    store = slice_store(f / "data", c.volume[:, :24], tile_hw=(1, TILE[2]))
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("overlap by 0 px along y",
                                                                    "is the tile shape right?"), f / "out")


@case
def run_huge_declared_grid_over_a_few_tiles(f: Path, c: Context) -> Invocation:
    store = f / "data" / "mosaic_grid_3d_z00.ome.zarr"
    group = ngff.create_group(store, "0.5")
    nz = c.volume.shape[0]
    level = ngff.create_level(group, "0", (nz, 4000 * TILE[1], 4000 * TILE[2]), "float32", (nz, *TILE[1:]),
                              shards=(nz, 4 * TILE[1], 4 * TILE[2]))
    group.attrs.update(ngff.root_attributes(ngff.multiscales([(1.0, 1.0, 1.0)], (None, None, None), "0.5"), "0.5"))
    level[:, :c.volume.shape[1], :c.volume.shape[2]] = c.volume  # a dozen real tiles
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("declares a grid of 4000x4000 tiles",
                                                                    "is the array's shape right?"), f / "out")


def measured(slice_id: int) -> set[str]:
    """What a finished measure job leaves: the slice's pairs and its flat-field folder."""
    name = f"slice_z{slice_id:02d}"
    return {f"pairs/{name}_pairs.json", f"flatfield/{name}_flatfield/flatfield.npy",
            f"flatfield/{name}_flatfield/flatfield.json", f"flatfield/{name}_flatfield/.linumpy-motor.json"}


@case
def run_inf_in_another_plane(f: Path, c: Context) -> Invocation:  # measuring reads plane 2 only: found when stitching
    store = slice_store(f / "data", with_value(c, 0, np.inf))
    return Invocation(cli_run(f / "data", f / "out", "--plane", "central"), RUN, store, ("data contains NaN or Inf",),
                      f / "out", frozenset({*measured(0), "motor_transform.json"}))


@case
def run_inf_in_a_plane_scored_for_the_choice(f: Path, c: Context) -> Invocation:  # choosing the plane reads it
    store = slice_store(f / "data", with_value(c, 0, np.inf))
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("data contains NaN or Inf",), f / "out")


@case
def run_nan_in_the_third_slice(f: Path, c: Context) -> Invocation:
    write_small_dataset(f / "data", n_slices=2)
    store = slice_store(f / "data", with_value(c, 2, np.nan), slice_id=2)
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("data contains NaN or Inf",), f / "out",
                      frozenset({*measured(0), *measured(1)}))


@case
def run_tile_shapes_differ(f: Path, c: Context) -> Invocation:
    slice_store(f / "data", c.volume)
    other = slice_store(f / "data", np.ascontiguousarray(c.volume[:, :192, :256]), 1, tile_hw=(64, 64))
    return Invocation(cli_run(f / "data", f / "out"), RUN, other,
                      ("tile shape (4, 64, 64) differs from (4, 96, 128)",), f / "out")


@case
def run_overlap_over_half(f: Path, c: Context) -> Invocation:
    return Invocation(cli_run(c.dataset, f / "out", "--overlap", "0.51"), RUN, None,
                      ("overlap must be in (0, 0.5], got 0.51",), f / "out")


@case
def run_overlap_zero(f: Path, c: Context) -> Invocation:
    return Invocation(cli_run(c.dataset, f / "out", "--overlap", "0"), RUN, None,
                      ("overlap must be in (0, 0.5]",), f / "out")


@case
def run_only_slice_has_no_tissue(f: Path, c: Context) -> Invocation:
    slice_store(f / "data", np.zeros_like(c.volume), slice_id=5)
    return Invocation(cli_run(f / "data", f / "out"), RUN, f / "out" / "pairs" / "slice_z05_pairs.json",
                      ("too few usable pairs", "slices with no usable pair: [5]"), f / "out",
                      frozenset(measured(5)))


@case
def run_corrupt_shard(f: Path, c: Context) -> Invocation:
    store = slice_store(f / "data", c.volume, sharded=True)
    corrupt_one_chunk(store)
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("cannot read data",), f / "out")


@case
def run_corrupt_chunk_zarr_v3(f: Path, c: Context) -> Invocation:
    store = slice_store(f / "data", c.volume)
    corrupt_one_chunk(store)
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("cannot read data",), f / "out")


@case
def run_corrupt_chunk_zarr_v2(f: Path, c: Context) -> Invocation:
    store = slice_store(f / "data", c.volume, version="0.4")
    corrupt_one_chunk(store)
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("cannot read data",), f / "out")


MEMORY_LIMITS = "a memory limit applies to the whole forked driver: tests/test_memory.py runs these under one"


@case
def run_under_a_too_low_address_space_limit(f: Path, c: Context) -> Invocation:
    return Invocation(cli_run(c.dataset, f / "out"), RUN, None,
                      ("step needs about ... of address space, more than the limit of ... (ulimit -v)",
                       "step ran out of memory (MemoryError)"), f / "out", skip=MEMORY_LIMITS)


@case
def run_under_a_too_low_cgroup_limit(f: Path, c: Context) -> Invocation:
    return Invocation(cli_run(c.dataset, f / "out"), RUN, None,
                      ("step needs about ... more memory, more than the ... the cgroup limit of ... leaves",),
                      f / "out", skip=MEMORY_LIMITS)


@case
def run_outdir_is_a_file(f: Path, c: Context) -> Invocation:
    (f / "afile").write_text("keep me")
    return Invocation(cli_run(c.dataset, f / "afile"), RUN, f / "afile", ("output folder cannot be created",))


@case
def run_outdir_below_a_file(f: Path, c: Context) -> Invocation:
    (f / "afile").write_text("keep me")
    return Invocation(cli_run(c.dataset, f / "afile" / "out"), RUN, f / "afile" / "out",
                      ("output folder cannot be created",), f / "afile" / "out")


@case
def run_outdir_cannot_be_written(f: Path, c: Context) -> Invocation:
    if os.geteuid() != 0:
        (f / "locked").mkdir()
        (f / "locked").chmod(0o555)
        parent = f / "locked"
    else:  # root writes through permission bits; a folder the kernel keeps read-only still refuses
        parent = Path("/proc/sys")
    out = parent / "linumpy-motor-out"
    skip = None if os.geteuid() != 0 or not os.access(parent, os.W_OK) else "root, and no read-only folder at hand"
    return Invocation(cli_run(c.dataset, out), RUN, out, ("output folder cannot be written",), out, skip=skip)


@case
def run_outdir_held_by_another_run(f: Path, c: Context) -> Invocation:
    (f / "out" / ".linumpy-motor").mkdir(parents=True)
    lock = FileLock(f / "out" / ".linumpy-motor" / "lock", timeout=0)
    lock.acquire()
    return Invocation(cli_run(c.dataset, f / "out"), RUN, f / "out",
                      ("another linumpy-motor run is writing to this folder",), held=lock)


@case
def run_outdir_is_the_input(f: Path, c: Context) -> Invocation:
    return Invocation(cli_run(c.dataset, c.dataset), RUN, c.dataset, ("output would be the input itself",))


@case
def run_outdir_inside_an_input_store(f: Path, c: Context) -> Invocation:
    out = c.dataset / "mosaic_grid_3d_z00.ome.zarr" / "out"
    return Invocation(cli_run(c.dataset, out), RUN, out, ("output would be inside the input",), out)


@case
def run_truncated_transform(f: Path, c: Context) -> Invocation:
    given = truncated(c.transform, f / "given.json")
    return Invocation(cli_run(c.dataset, f / "out", "--transform", given), RUN, given,
                      ("not valid JSON (truncated?)",), f / "out")


@case
def run_binary_transform_json(f: Path, c: Context) -> Invocation:
    given = f / "given.json"
    np.save(f / "matrix.npy", np.eye(2))
    given.write_bytes((f / "matrix.npy").read_bytes())  # upstream's .npy under a .json name
    return Invocation(cli_run(c.dataset, f / "out", "--transform", given), RUN, given,
                      ("not a JSON text file (binary content)",), f / "out")


@case
def run_npy_transform_not_2x2(f: Path, c: Context) -> Invocation:
    given = f / "z00_transform_xy.npy"
    np.save(given, np.eye(3))
    return Invocation(cli_run(c.dataset, f / "out", "--transform", given), RUN, given,
                      ("expected a 2x2 numeric matrix",), f / "out")


@case
def stitch_unreadable_npy_transform(f: Path, c: Context) -> Invocation:
    given = f / "z00_transform_xy.npy"
    given.write_text("[[1, 0], [0, 1]]")
    store = c.dataset / "mosaic_grid_3d_z00.ome.zarr"
    return Invocation(bin_command(STITCH, store, given, f / "s.ome.zarr"), STITCH, given,
                      ("not a readable .npy matrix",), f / "s.ome.zarr")


@case
def run_transform_with_wrong_fields(f: Path, c: Context) -> Invocation:
    given = edited(c.transform, f / "given.json", lambda j: j.update(matrix=j.pop("transform")))
    return Invocation(cli_run(c.dataset, f / "out", "--transform", given), RUN, given,
                      ("invalid TransformFile: transform: Field required",), f / "out")


@case
def run_singular_transform(f: Path, c: Context) -> Invocation:
    given = edited(c.transform, f / "given.json", lambda j: j.update(transform=[[1, 2], [2, 4]]))
    return Invocation(cli_run(c.dataset, f / "out", "--transform", given), RUN, given,
                      ("invalid TransformFile: transform:", "transform is singular"), f / "out")


@case
def run_samplesheet_without_its_columns(f: Path, c: Context) -> Invocation:
    (f / "sheet.csv").write_text("id,file\n0,x.ome.zarr\n")
    return Invocation(cli_run(f / "sheet.csv", f / "out"), RUN, f / "sheet.csv",
                      ("samplesheet needs the columns 'slice_id,path'",), f / "out")


@case
def run_missing_flatfield_file(f: Path, c: Context) -> Invocation:
    return Invocation(cli_run(c.dataset, f / "out", "--flatfield", f / "flat.npy"), RUN, f / "flat.npy",
                      ("cannot read flat field",), f / "out")


@case
def run_zero_workers(f: Path, c: Context) -> Invocation:
    return Invocation(cli_run(c.dataset, f / "out", "--workers", "0"), RUN, None,
                      ("workers: must be at least 1, got 0",), f / "out")


@case
def run_outdir_holds_the_input(f: Path, c: Context) -> Invocation:
    slice_store(f / "data", c.volume)
    return Invocation(cli_run(f / "data", f), RUN, f, ("output would hold the input",))


@case
def run_outdir_argument_empty(f: Path, c: Context) -> Invocation:
    return Invocation(cli_run(c.dataset, ""), RUN, None, ("output path '' is empty",))


@case
def run_user_folder_where_the_report_goes(f: Path, c: Context) -> Invocation:
    (f / "out" / "report").mkdir(parents=True)
    (f / "out" / "report" / "notes.txt").write_text("mine")
    return Invocation(cli_run(c.dataset, f / "out"), RUN, f / "out" / "report",
                      ("exists and was not written by linumpy-motor; refusing to replace it",))


@case
def run_unsupported_ngff_version(f: Path, c: Context) -> Invocation:
    store = slice_store(f / "data", c.volume)
    edited(store / "zarr.json", store / "zarr.json", lambda j: j["attributes"]["ome"].update(version="0.6"))
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("unsupported NGFF version '0.6'",), f / "out")


@case
def run_malformed_tile_shape(f: Path, c: Context) -> Invocation:
    store = slice_store(f / "data", c.volume)
    edited(store / "zarr.json", store / "zarr.json", lambda j: j["attributes"].update(tile_shape=[128]))
    return Invocation(cli_run(f / "data", f / "out"), RUN, store, ("malformed tile_shape attribute",), f / "out")


@case
def run_transform_canvas_far_too_large(f: Path, c: Context) -> Invocation:
    given = edited(c.transform, f / "given.json", lambda j: j.update(transform=[[2e5, 0], [0, 2e5]]))
    return Invocation(cli_run(c.dataset, f / "out", "--transform", given), RUN, given,
                      ("canvas", "times their area"), f / "out")


@case
def run_samplesheet_negative_slice_id(f: Path, c: Context) -> Invocation:
    (f / "sheet.csv").write_text(f"slice_id,path\n-3,{c.dataset / 'mosaic_grid_3d_z00.ome.zarr'}\n")
    return Invocation(cli_run(f / "sheet.csv", f / "out"), RUN, f / "sheet.csv", ("slice_id -3 is negative",),
                      f / "out")


@case
def run_samplesheet_one_store_twice(f: Path, c: Context) -> Invocation:
    store = c.dataset / "mosaic_grid_3d_z00.ome.zarr"
    (f / "sheet.csv").write_text(f"slice_id,path\n0,{store}\n1,{store}\n")
    return Invocation(cli_run(f / "sheet.csv", f / "out"), RUN, f / "sheet.csv",
                      ("line 3:", "is already listed as slice 0"), f / "out")


# bin/linum_motor_measure_pairs.py
@case
def measure_missing_slice(f: Path, c: Context) -> Invocation:
    return Invocation(bin_command(MEASURE, f / "nope.ome.zarr", f / "p.json"), MEASURE, f / "nope.ome.zarr",
                      ("no such file or directory",), f / "p.json")


@case
def measure_folder_not_a_zarr_store(f: Path, c: Context) -> Invocation:
    (f / "x.ome.zarr").mkdir()
    return Invocation(bin_command(MEASURE, f / "x.ome.zarr", f / "p.json"), MEASURE, f / "x.ome.zarr",
                      ("not a zarr store",), f / "p.json")


@case
def measure_4d_array(f: Path, c: Context) -> Invocation:
    store = four_d_store(f / "x.ome.zarr")
    return Invocation(bin_command(MEASURE, store, f / "p.json"), MEASURE, store,
                      ("expected a 3-D (z, y, x) or 2-D (y, x) array",), f / "p.json")


@case
def measure_nan(f: Path, c: Context) -> Invocation:
    store = slice_store(f, with_value(c, 2, np.nan))
    return Invocation(bin_command(MEASURE, store, f / "p.json"), MEASURE, store, ("data contains NaN or Inf",),
                      f / "p.json")


@case
def measure_corrupt_shard(f: Path, c: Context) -> Invocation:
    store = slice_store(f, c.volume, sharded=True)
    corrupt_one_chunk(store)
    return Invocation(bin_command(MEASURE, store, f / "p.json"), MEASURE, store, ("cannot read data",),
                      f / "p.json")


@case
def measure_overlap_out_of_range(f: Path, c: Context) -> Invocation:
    store = c.dataset / "mosaic_grid_3d_z00.ome.zarr"
    return Invocation(bin_command(MEASURE, store, f / "p.json", "--overlap", "0.7"), MEASURE, None,
                      ("overlap must be in (0, 0.5]",), f / "p.json")


@case
def measure_plane_out_of_range(f: Path, c: Context) -> Invocation:
    store = c.dataset / "mosaic_grid_3d_z00.ome.zarr"
    return Invocation(bin_command(MEASURE, store, f / "p.json", "--z", "99"), MEASURE, store,
                      ("plane z=99 is outside the volume's 4 planes",), f / "p.json")


@case
def measure_output_inside_the_input(f: Path, c: Context) -> Invocation:
    store = slice_store(f, c.volume)
    return Invocation(bin_command(MEASURE, store, store / "p.json"), MEASURE, store / "p.json",
                      ("output would be inside the input",), store / "p.json")


@case
def measure_output_folder_missing(f: Path, c: Context) -> Invocation:
    store = c.dataset / "mosaic_grid_3d_z00.ome.zarr"
    return Invocation(bin_command(MEASURE, store, f / "no" / "p.json"), MEASURE, f / "no" / "p.json",
                      ("its folder does not exist",), f / "no")


# bin/linum_motor_fit_affine.py
@case
def fit_truncated_pairs(f: Path, c: Context) -> Invocation:
    bad = truncated(c.pairs[1], f / "slice_z01_pairs.json")
    return Invocation(bin_command(FIT, c.pairs[0], bad, "--out", f / "t.json"), FIT, bad,
                      ("not valid JSON (truncated?)",), f / "t.json")


@case
def fit_pairs_without_pairs(f: Path, c: Context) -> Invocation:
    bad = edited(c.pairs[0], f / "p.json", lambda j: j.pop("pairs"))
    return Invocation(bin_command(FIT, bad, "--out", f / "t.json"), FIT, bad,
                      ("invalid PairsFile: pairs: Field required",), f / "t.json")


@case
def fit_non_finite_displacement(f: Path, c: Context) -> Invocation:
    bad = edited(c.pairs[0], f / "p.json", lambda j: j["pairs"][0].update(measured_dy=float("nan")))
    return Invocation(bin_command(FIT, bad, "--out", f / "t.json"), FIT, bad,
                      ("invalid PairsFile: pairs.0.measured_dy", "finite"), f / "t.json")


@case
def fit_tile_shapes_differ(f: Path, c: Context) -> Invocation:
    bad = edited(c.pairs[1], f / "p.json", lambda j: j.update(tile_shape=[4, 64, 64]))
    return Invocation(bin_command(FIT, c.pairs[0], bad, "--out", f / "t.json"), FIT, bad,
                      ("tile shape [4, 64, 64] differs from [4, 96, 128]",), f / "t.json")


@case
def fit_no_usable_pairs(f: Path, c: Context) -> Invocation:
    bad = edited(c.pairs[0], f / "slice_z00_pairs.json", lambda j: j.update(pairs=[]))
    return Invocation(bin_command(FIT, bad, "--out", f / "t.json"), FIT, bad,
                      ("too few usable pairs", "slices with no usable pair: [0]"), f / "t.json")


@case
def fit_output_is_an_input(f: Path, c: Context) -> Invocation:
    mine = Path(shutil.copy(c.pairs[0], f / "p.json"))
    return Invocation(bin_command(FIT, mine, "--out", mine), FIT, mine, ("output would be the input itself",))


# bin/linum_motor_compare.py
@case
def compare_truncated_transform(f: Path, c: Context) -> Invocation:
    bad = truncated(c.transform, f / "t.json")
    return Invocation(bin_command(COMPARE, c.pairs[0], bad, "--out", f / "c.json"), COMPARE, bad,
                      ("not valid JSON (truncated?)",), f / "c.json")


@case
def compare_singular_transform(f: Path, c: Context) -> Invocation:
    bad = edited(c.transform, f / "t.json", lambda j: j.update(transform=[[0, 0], [0, 0]]))
    return Invocation(bin_command(COMPARE, c.pairs[0], bad, "--out", f / "c.json"), COMPARE, bad,
                      ("transform is singular",), f / "c.json")


@case
def compare_pairs_with_wrong_fields(f: Path, c: Context) -> Invocation:
    bad = edited(c.pairs[0], f / "p.json", lambda j: j.update(grid="3x4"))
    return Invocation(bin_command(COMPARE, bad, c.transform, "--out", f / "c.json"), COMPARE, bad,
                      ("invalid PairsFile: grid",), f / "c.json")


@case
def compare_output_is_an_input(f: Path, c: Context) -> Invocation:
    mine = Path(shutil.copy(c.transform, f / "t.json"))
    return Invocation(bin_command(COMPARE, c.pairs[0], mine, "--out", mine), COMPARE, mine,
                      ("output would be the input itself",))


# bin/linum_motor_stitch.py
@case
def stitch_missing_slice(f: Path, c: Context) -> Invocation:
    return Invocation(bin_command(STITCH, f / "nope.ome.zarr", c.transform, f / "s.ome.zarr"), STITCH,
                      f / "nope.ome.zarr", ("no such file or directory",), f / "s.ome.zarr")


@case
def stitch_inf_in_another_plane(f: Path, c: Context) -> Invocation:
    store = slice_store(f, with_value(c, 0, np.inf))
    return Invocation(bin_command(STITCH, store, c.transform, f / "s.ome.zarr"), STITCH, store,
                      ("data contains NaN or Inf",), f / "s.ome.zarr")


@case
def stitch_corrupt_chunk(f: Path, c: Context) -> Invocation:
    store = slice_store(f, c.volume)
    corrupt_one_chunk(store)
    return Invocation(bin_command(STITCH, store, c.transform, f / "s.ome.zarr"), STITCH, store,
                      ("cannot read data",), f / "s.ome.zarr")


@case
def stitch_truncated_transform(f: Path, c: Context) -> Invocation:
    bad = truncated(c.transform, f / "t.json")
    store = c.dataset / "mosaic_grid_3d_z00.ome.zarr"
    return Invocation(bin_command(STITCH, store, bad, f / "s.ome.zarr"), STITCH, bad,
                      ("not valid JSON (truncated?)",), f / "s.ome.zarr")


@case
def stitch_output_inside_the_input(f: Path, c: Context) -> Invocation:
    store = slice_store(f, c.volume)
    return Invocation(bin_command(STITCH, store, c.transform, store / "s.ome.zarr"), STITCH, store / "s.ome.zarr",
                      ("inside the input",), store / "s.ome.zarr")


# bin/linum_motor_report.py
@case
def report_truncated_transform(f: Path, c: Context) -> Invocation:
    bad = truncated(c.transform, f / "t.json")
    return Invocation(bin_command(REPORT, "--transform", bad, "--pairs", *c.pairs, "--out", f / "report"),
                      REPORT, bad, ("not valid JSON (truncated?)",), f / "report")


@case
def report_truncated_pairs(f: Path, c: Context) -> Invocation:
    bad = truncated(c.pairs[0], f / "slice_z00_pairs.json")
    return Invocation(bin_command(REPORT, "--transform", c.transform, "--pairs", bad, "--out", f / "report"),
                      REPORT, bad, ("not valid JSON (truncated?)",), f / "report")


@case
def report_out_is_a_user_folder(f: Path, c: Context) -> Invocation:
    (f / "mine").mkdir()
    (f / "mine" / "notes.txt").write_text("irreplaceable")
    return Invocation(bin_command(REPORT, "--transform", c.transform, "--pairs", *c.pairs, "--out", f / "mine"),
                      REPORT, f / "mine", ("exists and was not written by linumpy-motor",))


@case
def report_out_holding_a_users_file(f: Path, c: Context) -> Invocation:
    write_report(f / "report", c.transform, c.pairs)
    (f / "report" / "notes.txt").write_text("mine")
    return Invocation(bin_command(REPORT, "--transform", c.transform, "--pairs", *c.pairs, "--out", f / "report"),
                      REPORT, f / "report" / "notes.txt",
                      ("was not written by linumpy-motor and lies inside the output", "refusing to replace or remove"))


@case
def stitch_out_is_an_input_slice(f: Path, c: Context) -> Invocation:
    shutil.copytree(c.dataset, f / "data")
    given = f / "data" / "mosaic_grid_3d_z01.ome.zarr"
    return Invocation(bin_command(STITCH, f / "data" / "mosaic_grid_3d_z00.ome.zarr", c.transform, given), STITCH,
                      given, ("is linumpy-motor's synthetic input slice or truth, not its stitched slice",))


# bin/linum_motor_synth.py
@case
def synth_overlap_out_of_range(f: Path, c: Context) -> Invocation:
    return Invocation(bin_command(SYNTH, f / "s", "--overlap", "0.6"), SYNTH, None,
                      ("overlap must be in (0, 0.5]",), f / "s")


@case
def synth_outdir_is_a_file(f: Path, c: Context) -> Invocation:
    (f / "afile").write_text("keep me")
    return Invocation(bin_command(SYNTH, f / "afile", "--grid", "2", "2", "--tile", "2", "32", "32"), SYNTH,
                      f / "afile", ("File exists",))


@case
def synth_over_a_real_acquisition(f: Path, c: Context) -> Invocation:
    real = slice_store(f / "data", c.volume)
    return Invocation(bin_command(SYNTH, f / "data", "--slices", "1"), SYNTH, real,
                      ("exists and was not written by linumpy-motor",))


DEBUG_CASES = ("run-nan-in-the-measured-plane", "measure-corrupt-shard", "fit-no-usable-pairs",
               "compare-singular-transform", "stitch-corrupt-chunk", "report-truncated-pairs", "synth-outdir-is-a-file")
"""One case per command, run again with ``--debug`` as a plain subprocess of the real entry point."""


def with_debug(command: list[str]) -> list[str]:
    """The command with ``--debug`` (a top-level option of ``linumpy-motor``, before the sub-command)."""
    return [command[0], "--debug", *command[1:]] if command[0] == CLI else [*command, "--debug"]


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Context:
    root = tmp_path_factory.mktemp("bad-input")
    dataset = write_small_dataset(root / "dataset", n_slices=2)
    (root / "good").mkdir()
    pairs = [root / "good" / f"slice_z{k:02d}_pairs.json" for k in (0, 1)]
    for k, path in enumerate(pairs):
        steps.measure_pairs(dataset / f"mosaic_grid_3d_z{k:02d}.ome.zarr", path, overlap=0.2)
    transform = root / "good" / "motor_transform.json"
    steps.fit_affine(pairs, transform)
    return Context(root, dataset, read_level0(dataset / "mosaic_grid_3d_z00.ome.zarr"), pairs, transform)


@dataclass
class Outcomes:
    """The cases, what each command did, and the state of the inputs before."""

    invocations: dict[str, Invocation]
    done: dict[tuple[str, bool], object]
    dataset_before: dict
    folders_before: dict[str, dict]


@pytest.fixture(scope="module")
def outcomes(context) -> Outcomes:
    """Build every case and run it in a process of its own; then the --debug variants as subprocesses."""
    before = tree_digest(context.dataset)
    invocations = {}
    for name, build in CASES.items():
        (context.root / name).mkdir()
        invocations[name] = build(context.root / name, context)
    folders_before = {name: tree_digest(context.root / name) for name in invocations}
    runnable = {name: inv for name, inv in invocations.items() if inv.skip is None}
    results = run_forked([inv.command for inv in runnable.values()], context.root / "forked")
    for inv in runnable.values():
        inv.held.release() if inv.held else None
    done = {(name, False): result for name, result in zip(runnable, results)}
    with ThreadPoolExecutor(2) as pool:
        debug = pool.map(run, [with_debug(invocations[name].command) for name in DEBUG_CASES])
    done.update({(name, True): result for name, result in zip(DEBUG_CASES, debug)})
    return Outcomes(invocations, done, before, folders_before)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_gives_one_line_exit_2_and_writes_nothing(name, context, outcomes):
    inv = outcomes.invocations[name]
    if inv.skip:
        pytest.skip(inv.skip)
    result = outcomes.done[name, False]
    assert result.returncode == EXIT_BAD_INPUT, (
        f"exit {result.returncode}\nstdout: {result.stdout}\nstderr: {result.stderr}")
    lines = error_lines(result.stderr)
    assert len(lines) == 1 and "\r" not in result.stderr, f"expected one error line, got:\n{result.stderr}"
    line = lines[0]
    assert line.startswith(inv.prog) and ": error: " in line, line
    assert "Traceback" not in result.stderr
    if inv.named is not None:
        assert str(inv.named) in line or str(inv.named.resolve()) in line, f"{inv.named} not named in: {line}"
    for problem in inv.problems:
        assert problem in line, f"{problem!r} not in: {line}"
    if inv.output is not None and not inv.leaves:
        assert not inv.output.exists(), f"{inv.output} was created: {sorted(map(str, inv.output.rglob('*')))}"
    if inv.leaves:
        left = output_files(inv.output)
        assert left - {LOG_FILE} == set(inv.leaves), "only the completed steps' outputs (and the log) may stay"
        log = (inv.output / LOG_FILE).read_text()
        assert "INFO measure: " in log and re.search(r"ERROR run stopped: \w+: .*" + re.escape(inv.problems[0]), log)
    assert not temporaries(context.root / name), f"temporaries left: {temporaries(context.root / name)}"


@pytest.mark.parametrize("name", DEBUG_CASES)
def test_debug_shows_the_traceback_then_the_same_line(name, outcomes):
    quiet, debug = outcomes.done[name, False], outcomes.done[name, True]
    assert debug.returncode == EXIT_BAD_INPUT, debug.stderr
    assert "Traceback (most recent call last)" in debug.stderr
    assert error_lines(quiet.stderr)[0] in debug.stderr.splitlines(), "the same error line, after the traceback"


def test_failed_commands_leave_their_inputs_untouched(context, outcomes):
    assert tree_digest(context.dataset) == outcomes.dataset_before
    for name, inv in outcomes.invocations.items():
        folder, before = context.root / name, outcomes.folders_before[name]
        after = tree_digest(folder)
        changed = {k for k in set(after) | set(before) if after.get(k) != before.get(k)}
        output = str(inv.output.relative_to(folder)) if inv.output and folder in inv.output.parents else None
        changed = {k for k in changed if not (output and (k == output or k.startswith(output + os.sep)))}
        assert not changed, f"{name}: inputs changed: {sorted(changed)}"


def test_a_missing_chunk_reads_as_background_and_only_its_pairs_are_skipped(tmp_path, context):
    """Documented behaviour: zarr fills a missing chunk with 0, indistinguishable from no tissue."""
    store = slice_store(tmp_path, context.volume)
    (store / "0" / "c" / "0" / "1" / "2").unlink()  # tile (1, 2) of an unsharded NGFF 0.5 store
    result = run(bin_command(MEASURE, store, tmp_path / "p.json"))
    assert result.returncode == 0, result.stderr
    content = json_of(tmp_path / "p.json")
    touching = {((1, 1), 0, 1), ((1, 2), 0, 1), ((0, 2), 1, 0), ((1, 2), 1, 0)}
    skipped = {(tuple(p["tile"]), p["row_delta"], p["col_delta"]) for p in content["skipped"]}
    assert skipped == touching
    assert all(p["reason"] == "empty overlap" for p in content["skipped"])
    nx, ny = GRID
    assert len(content["pairs"]) == nx * (ny - 1) + (nx - 1) * ny - len(touching)


def test_a_slice_without_tissue_among_good_ones_is_flagged_not_fatal(tmp_path, context):
    data = tmp_path / "data"
    shutil.copytree(context.dataset, data)
    slice_store(data, np.zeros_like(context.volume), slice_id=7)
    result = runner.run(data, tmp_path / "out", RunOptions(), progress=False)
    assert result["ran"]["stitch"] == 3
    per_slice = json_of(tmp_path / "out" / "motor_transform.json")["diagnostics"]["per_slice"]
    assert "too few usable pairs" in per_slice["7"]["fit_error"] and per_slice["7"]["drift_flag"] is False
    assert per_slice["0"]["fit_error"] is None and per_slice["1"]["fit_error"] is None
    status = json_of(tmp_path / "out" / "report" / "status.json")
    assert status["7"]["status"] == "failed"
    assert status["0"]["status"] != "failed" and status["1"]["status"] != "failed"


def documented_failure_messages() -> list[str]:
    """The messages of docs/usage.md's "Failure modes" table (first column, back-quoted, ``...`` = anything)."""
    section = (REPO / "docs" / "usage.md").read_text().split("## Failure modes", 1)[1].split("\n## ", 1)[0]
    rows = [line.split("|")[1] for line in section.splitlines() if line.startswith("| `")]
    return [message for row in rows for message in re.findall(r"`([^`]+)`", row)]


def test_every_message_of_the_documented_failure_table_is_one_the_commands_give(outcomes):
    lines = [result.stderr for result in outcomes.done.values()]
    not_run = [problem for inv in outcomes.invocations.values() if inv.skip for problem in inv.problems]
    messages = documented_failure_messages()
    assert len(messages) >= 10
    for message in messages:
        pattern = ".*".join(re.escape(part.strip()) for part in message.split("..."))
        if any(re.search(pattern, problem) for problem in not_run):
            continue  # its case cannot be set up here (see the skipped case)
        assert any(re.search(pattern, line) for line in lines), f"docs/usage.md message {message!r} is never given"
