"""What this program may write, replace or delete: the one owner of the output-safety rule.

The rule
--------
- Every output carries this program's marker: a ``linumpy_motor`` mapping with a ``stage`` key, at
  the top of a JSON file, in the root attributes of an OME-Zarr store, or in a ``.linumpy-motor.json``
  file listing the entries of any other folder (a report).
- An existing path is replaced only when it carries the marker and, for a folder, holds nothing
  but what the marker accounts for (zarr metadata and arrays, or the listed entries). A link is
  never replaced. Anything else is refused with an :class:`InputError` before any work.
- Outputs are written under a temporary sibling ``.NAME.tmp-PID`` (a replaced folder is set aside
  as ``.NAME.old-PID``) and renamed into place; clean-up removes only names of exactly that form,
  for outputs the caller names.
- A run removes, after a failure, only the folders it created itself (each only when empty).
- An output folder argument may not be empty, and may not equal, hold or lie inside an input.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import zarr

from linumpy_motor import __version__
from linumpy_motor.errors import InputError

__all__ = ["MARKER_FILE", "MARKER_KEY", "MAX_MARKED_JSON_BYTES", "TEMPORARY", "WRITE_ERRNOS", "ZARR_METADATA",
           "atomic_output", "check_output", "check_output_name", "check_outside", "check_replaceable", "is_ours",
           "make_folders", "marker", "remove_created_folders", "remove_path", "remove_temporaries", "temporary_name",
           "write_json"]

MARKER_KEY = "linumpy_motor"
MARKER_FILE = ".linumpy-motor.json"
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
ZARR_METADATA = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata"})
MAX_MARKED_JSON_BYTES = 256 * 2**20
"""A JSON file larger than this is not read to look for the marker (it is not ours)."""
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})


def marker(stage: str) -> dict:
    """This program's marker for an output of ``stage``."""
    return {"stage": stage, "version": __version__}


def _marked(value) -> bool:
    return isinstance(value, dict) and isinstance(value.get(MARKER_KEY), dict) and "stage" in value[MARKER_KEY]


def _is_zarr_node(path: Path) -> bool:
    return any((path / name).is_file() for name in ZARR_METADATA)


def _json_is_ours(path: Path) -> bool:
    if path.stat().st_size > MAX_MARKED_JSON_BYTES:
        return False
    try:
        return _marked(json.loads(path.read_bytes()))
    except (OSError, ValueError):
        return False


def _store_is_ours(path: Path) -> bool:
    try:
        attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
    except Exception:  # zarr raises many types for a folder that is no readable group
        return False
    if not _marked(attrs):
        return False
    for entry in path.iterdir():
        is_array = entry.is_dir() and not entry.is_symlink() and _is_zarr_node(entry)
        if entry.name not in ZARR_METADATA and not is_array:
            return False
    return True


def _folder_is_ours(path: Path) -> bool:
    listing = path / MARKER_FILE
    if not listing.is_file() or not _json_is_ours(listing):
        return False
    entries = json.loads(listing.read_text()).get("entries")
    return isinstance(entries, list) and {p.name for p in path.iterdir()} <= {MARKER_FILE, *map(str, entries)}


def is_ours(path: str | Path) -> bool:
    """True when ``path`` carries this program's marker and, for a folder, holds nothing else.

    A missing path, a link, a file that is not a marked JSON and a folder holding anything the
    marker does not account for are not ours.
    """
    path = Path(path)
    if path.is_symlink() or not path.exists():
        return False
    if path.is_file():
        return _json_is_ours(path)
    return _store_is_ours(path) if _is_zarr_node(path) else _folder_is_ours(path)


def check_replaceable(path: str | Path) -> None:
    """Refuse an existing ``path`` that this program may not replace (see :func:`is_ours`)."""
    path = Path(path)
    if (path.exists() or path.is_symlink()) and not is_ours(path):
        raise InputError(path, "exists and was not written by linumpy-motor; refusing to replace it")


def check_output_name(path: str | Path) -> Path:
    """Refuse an empty output argument (``""`` would mean the current folder) or ``.``/``..``."""
    if not str(path).strip() or Path(path).name in ("", ".", ".."):
        raise InputError(None, f"output path {str(path)!r} is empty or not a name")
    return Path(path)


def check_outside(output: str | Path, *inputs: str | Path) -> None:
    """Refuse an output that is an input, lies inside one, or holds one (inputs are never written to)."""
    out = Path(output).resolve()
    for source in inputs:
        src = Path(source).resolve()
        if out == src:
            raise InputError(out, "output would be the input itself")
        if src in out.parents:
            raise InputError(out, f"output would be inside the input {src}")
        if out in src.parents:
            raise InputError(out, f"output would hold the input {src}")


def temporary_name(path: Path) -> Path:
    """The temporary sibling this process writes ``path`` under (same folder: the rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def _aside_name(path: Path) -> Path:
    """Where this process sets an existing folder ``path`` aside while swapping in its replacement."""
    return path.with_name(f".{path.name}.old-{os.getpid()}")


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree if it exists (callers check it is theirs to remove)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def remove_temporaries(folder: Path, names: Iterable[str], pids: Iterable[int] | None = None) -> list[Path]:
    """Remove ``.NAME.tmp-PID`` / ``.NAME.old-PID`` entries of ``folder`` for the given output names
    (and, if given, only those of the given processes); return what was removed."""
    wanted, pid_texts = set(names), None if pids is None else {str(p) for p in pids}
    removed = []
    for entry in folder.iterdir() if folder.is_dir() else ():
        match = TEMPORARY.match(entry.name)
        if match and match["name"] in wanted and (pid_texts is None or match["pid"] in pid_texts):
            remove_path(entry)
            removed.append(entry)
    return removed


def _mark(tmp: Path, stage: str) -> None:
    """Put the marker on a finished folder output (a marked JSON file is written marked)."""
    if not tmp.is_dir():
        return
    if _is_zarr_node(tmp):
        group = zarr.open_group(str(tmp), mode="r+")
        if not _marked(group.attrs.asdict()):
            group.attrs[MARKER_KEY] = marker(stage)
        return
    entries = sorted(p.name for p in tmp.iterdir() if p.name != MARKER_FILE)
    (tmp / MARKER_FILE).write_text(json.dumps({MARKER_KEY: marker(stage), "entries": entries}, indent=2) + "\n")


def _swap(tmp: Path, path: Path) -> None:
    """Rename ``tmp`` to ``path``; an existing folder is set aside, then removed once the new one is in."""
    if path.is_dir() and not path.is_symlink() and tmp.is_dir():
        old = _aside_name(path)
        path.rename(old)
        try:
            tmp.rename(path)
        except BaseException:
            old.rename(path)
            raise
        shutil.rmtree(old)
    else:
        os.replace(tmp, path)


def check_output(output: str | Path, *inputs: str | Path) -> Path:
    """Before any work: refuse an output with an empty name or a missing folder, one that is, holds or
    lies in one of ``inputs``, or one this program may not replace (:func:`check_replaceable`).

    Returns
    -------
    Path
        ``output`` as a path.

    Raises
    ------
    InputError
    """
    output = check_output_name(output)
    if not output.parent.is_dir():
        raise InputError(output, "cannot be written: its folder does not exist")
    check_outside(output, *inputs)
    check_replaceable(output)
    return output


@contextmanager
def atomic_output(path: str | Path, stage: str = "output") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write into; mark it and rename it to ``path`` on success.

    Before anything is written: an empty name, a missing folder, or an existing ``path`` this
    program may not replace (:func:`check_replaceable`) is an :class:`InputError`. On any exception
    the temporary output is removed and ``path`` is left as it was; a disk-full error names
    ``path`` and ``stage``. A folder is swapped in two renames (old one aside as ``.NAME.old-PID``),
    so a process killed between them leaves ``path`` absent, never half-written.
    """
    path = check_output(path)
    tmp = temporary_name(path)
    remove_path(tmp)
    try:
        yield tmp
        _mark(tmp, stage)
        check_replaceable(path)  # something else may have appeared there meanwhile
        _swap(tmp, path)
    except BaseException as exc:
        with suppress(OSError):  # never mask the error; a leftover is removed by the next run
            remove_path(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise OSError(exc.errno, f"{stage} step: {os.strerror(exc.errno)}", str(path)) from None
        raise


def write_json(path: str | Path, data: dict, stage: str = "output") -> None:
    """Write marked JSON atomically (sorted keys, so identical inputs give identical bytes)."""
    with atomic_output(path, stage) as tmp:
        tmp.write_text(json.dumps({**data, MARKER_KEY: marker(stage)}, indent=2, sort_keys=True) + "\n")


def make_folders(path: Path) -> list[Path]:
    """Create ``path`` and its missing parents one by one; return the folders this call created.

    A folder another process creates meanwhile is not counted, so a later
    :func:`remove_created_folders` never removes what someone else made.
    """
    missing = []
    for folder in [path, *path.absolute().parents]:
        if folder.exists():
            break
        missing.append(folder)
    created = []
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        created.append(folder)
    return created


def remove_created_folders(created: Iterable[Path]) -> None:
    """Remove folders this process created, innermost first, each only when empty."""
    for folder in sorted(created, key=lambda p: len(p.absolute().parts), reverse=True):
        with suppress(OSError):
            folder.rmdir()
