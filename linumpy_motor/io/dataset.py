"""Finding a dataset's slices: slice ids from store names, folders of stores and ``slice_id,path`` samplesheets."""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from linumpy_motor.errors import InputError

__all__ = ["check_consistent", "check_unique_ids", "discover_slices", "is_samplesheet", "slice_id_from_name"]


def slice_id_from_name(path: str | Path) -> int:
    """Slice id in a file or store name: the number after ``z`` (``mosaic_grid_3d_z07.ome.zarr`` and
    ``slice_z07_stitch_3d.ome.zarr`` -> 7), else the last number (``slice_5.ome.zarr`` -> 5)."""
    path = Path(path)
    name = path.name.removesuffix(".ome.zarr")
    numbers = re.findall(r"z(\d+)", name) or re.findall(r"\d+", name)
    if not numbers:
        raise InputError(path, "no slice number in the name")
    return int(numbers[-1])


def discover_slices(source: str | Path) -> list[tuple[int, Path]]:
    """List a dataset's slices as ``(slice_id, path)``, sorted by slice id.

    Parameters
    ----------
    source : str or Path
        A folder of ``*.ome.zarr`` stores, or a CSV samplesheet with columns ``slice_id,path``
        (relative paths are taken from the CSV's folder).
    """
    source = Path(source)
    if not source.exists():
        raise InputError(source, "no such file or directory")
    if is_samplesheet(source):
        entries = _read_samplesheet(source)
    elif source.is_file():
        raise InputError(source, "neither a folder of slices nor a .csv samplesheet")
    else:
        if source.name.endswith(".ome.zarr"):
            raise InputError(source, "is a single slice; give the folder that holds the slices")
        entries = [(slice_id_from_name(p), p) for p in sorted(source.glob("*.ome.zarr"))]
        if not entries:
            raise InputError(source, "no *.ome.zarr slices in this folder")
        named: dict[int, Path] = {}
        for slice_id, store in entries:
            if slice_id in named:
                raise InputError(source, f"slice id {slice_id} is in the names of both {named[slice_id].name} and "
                                         f"{store.name}")
            named[slice_id] = store
    return sorted(entries)


def is_samplesheet(path: str | Path) -> bool:
    """Whether an input names a ``slice_id,path`` samplesheet rather than a folder of slices: a ``.csv``
    name (in any case), as main.nf's ``isSamplesheet`` decides before anything is read."""
    return Path(path).suffix.lower() == ".csv"


def check_unique_ids(ids: Sequence[int], source: str | Path | None) -> None:
    """Refuse slice ids given more than once (``source``: the listing that gives them, None for a parameter)."""
    repeated = sorted(i for i, count in Counter(ids).items() if count > 1)
    if repeated:
        raise InputError(source, f"slice id(s) {repeated} appear more than once")


def check_consistent(what: str, values: Iterable[tuple[str | Path, object]]) -> None:
    """Refuse inputs of one acquisition that disagree: the first whose ``what`` differs from the first input's.

    Parameters
    ----------
    what : str
        What is compared, e.g. ``"tile shape"``.
    values : iterable of (path, value)
        Each input and its value.
    """
    first: tuple[str | Path, object] | None = None
    for path, value in values:
        if first is None:
            first = (path, value)
        elif value != first[1]:
            raise InputError(path, f"{what} {value} differs from {first[1]} of {first[0]}")


def _read_samplesheet(path: Path) -> list[tuple[int, Path]]:
    """Rows of a ``slice_id,path`` CSV (a UTF-8 byte-order mark and spaces after commas are allowed)."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.reader(handle, skipinitialspace=True))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(path, f"cannot read the samplesheet ({exc})") from None
    header = [name.strip() for name in rows[0]] if rows else []
    if not {"slice_id", "path"} <= set(header):
        raise InputError(path, "samplesheet needs the columns 'slice_id,path'")
    id_column, path_column = header.index("slice_id"), header.index("path")
    entries: list[tuple[int, Path]] = []
    stores: dict[Path, int] = {}
    ids: dict[int, tuple[int, Path]] = {}
    for line, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = [cell.strip() for cell in row] + [""] * len(header)
        try:
            slice_id = int(cells[id_column])
        except ValueError:
            raise InputError(path, f"line {line}: slice_id {cells[id_column]!r} is not an integer") from None
        if slice_id < 0:
            raise InputError(path, f"line {line}: slice_id {slice_id} is negative")
        if not cells[path_column]:
            raise InputError(path, f"line {line}: the path is empty")
        store = Path(cells[path_column])
        store = store if store.is_absolute() else path.parent / store
        if store.resolve() in stores:
            raise InputError(path, f"line {line}: {store} is already listed as slice {stores[store.resolve()]}")
        if slice_id in ids:
            raise InputError(path, f"line {line}: slice id {slice_id} is already given to {ids[slice_id][1]} "
                                   f"(line {ids[slice_id][0]})")
        if not store.exists():
            raise InputError(path, f"line {line}: {store}: no such file or directory")
        stores[store.resolve()] = slice_id
        ids[slice_id] = (line, store)
        entries.append((slice_id, store))
    if not entries:
        raise InputError(path, "samplesheet lists no slices")
    return entries
