"""What this program may write, replace or delete: the one owner of the output-safety rule.

The rule
--------
- Every output carries this program's marker: a ``linumpy_motor`` mapping with a ``stage`` key, at
  the top of a JSON file, in the root attributes of an OME-Zarr store, or in a ``.linumpy-motor.json``
  file listing the entries of any other folder (a report).
- An existing path is replaced or removed only when it carries the marker and holds nothing but what
  this program writes there, at every depth (:func:`foreign_path`): an OME-Zarr store's root metadata
  and the levels its ``multiscales`` lists, each with its metadata and chunk files only; a listed
  folder's listed files only. A user's ``labels/`` group or a note inside a level makes the whole
  output theirs. A link is never replaced. An output is replaced only by a stage writing the same
  kind (:data:`STAGE_KINDS`): a synthetic input slice is never a stitch's output. Anything else is
  refused with an :class:`InputError` naming the first foreign path, before any work.
- Outputs are written under a temporary sibling ``.NAME.tmp-PID`` (a replaced folder is set aside
  as ``.NAME.old-PID``) and renamed into place; clean-up removes only names of exactly that form,
  for outputs the caller names.
- A run removes, after a failure, only the folders it created itself (each only when empty).
- An output folder argument may not be empty, and may not equal, hold or lie inside an input; nor may
  any path written, once links are followed (a linked sub-folder of an output folder is resolved).
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TypeGuard

import zarr
from zarr.core.sync import sync

from linumpy_motor import __version__, interrupts
from linumpy_motor.errors import InputError

__all__ = ["MARKER_FILE", "MARKER_KEY", "MAX_MARKED_JSON_BYTES", "STAGE_KINDS", "TEMPORARY", "WRITE_ERRNOS",
           "WRITTEN_METADATA", "ZARR_METADATA", "atomic_output", "check_folder", "check_output", "check_output_name",
           "check_outside", "check_replaceable", "foreign_path", "is_ours", "make_folders", "marker",
           "remove_created_folders", "remove_path", "remove_temporaries", "set_claim", "temporary_name",
           "write_json"]

MARKER_KEY = "linumpy_motor"
MARKER_FILE = ".linumpy-motor.json"
TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)$")
ZARR_METADATA = frozenset({"zarr.json", ".zattrs", ".zgroup", ".zarray", ".zmetadata"})
WRITTEN_METADATA = ZARR_METADATA - {".zmetadata"}
"""The zarr metadata files this program writes in a store and its arrays (it never consolidates metadata)."""
MAX_MARKED_JSON_BYTES = 256 * 2**20
"""A JSON file larger than this is not read to look for the marker (it is not ours)."""
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
SETTLE_S = 30.0
"""Longest wait for zarr's writes still running before a failed output's temporary is removed."""


def marker(stage: str) -> dict:
    """This program's marker for an output of ``stage``."""
    return {"stage": stage, "version": __version__}


def _marked(value: object) -> TypeGuard[dict]:
    return isinstance(value, dict) and isinstance(value.get(MARKER_KEY), dict) and "stage" in value[MARKER_KEY]


def _is_zarr_node(path: Path) -> bool:
    return any((path / name).is_file() for name in ZARR_METADATA)


def _read_json(path: Path) -> object:
    """A JSON file's content, None when it is too large to be a marked output or not JSON."""
    if path.stat().st_size > MAX_MARKED_JSON_BYTES:
        return None
    try:
        return json.loads(path.read_bytes())
    except (OSError, ValueError):
        return None


def _plain(path: Path, folder: bool) -> bool:
    """A real folder (``folder``) or regular file, not a link."""
    return not path.is_symlink() and (path.is_dir() if folder else path.is_file())


Allowed = Callable[[tuple[str, ...], bool], bool]
"""Whether this program writes the entry at these path parts (relative to an output), a folder or a file."""


def _first_foreign(root: Path, allowed: Allowed, parts: tuple[str, ...] = ()) -> Path | None:
    """The first entry under ``root`` (sorted, depth first) that ``allowed`` does not account for; links never are."""
    folder = root.joinpath(*parts)
    for entry in sorted(folder.iterdir()):
        inner = (*parts, entry.name)
        is_folder = _plain(entry, True)
        if not (is_folder or _plain(entry, False)) or not allowed(inner, is_folder):
            return entry
        if is_folder and (found := _first_foreign(root, allowed, inner)) is not None:
            return found
    return None


def _level_names(attrs: dict) -> set[str]:
    """The level arrays an image's ``multiscales`` lists (NGFF 0.4 or 0.5; none when it is malformed)."""
    ome = attrs.get("ome")
    entries = ome.get("multiscales") if isinstance(ome, dict) else attrs.get("multiscales")
    names: set[str] = set()
    for entry in entries if isinstance(entries, list) else []:
        for dataset in entry.get("datasets", []) if isinstance(entry, dict) else []:
            path = dataset.get("path") if isinstance(dataset, dict) else None
            if isinstance(path, str) and path.isdigit():  # the levels this program writes: "0", "1", ...
                names.add(path)
    return names


def _array_layout(array: Path) -> Allowed | None:
    """What this program writes inside a level array: its metadata and the chunk files of its ``/``-separated
    keys (``c/Z/Y/X`` in zarr v3, ``Z/Y/X`` in zarr v2), nothing else; None when it is no readable array."""
    v3 = (array / "zarr.json").is_file()
    metadata = _read_json(array / ("zarr.json" if v3 else ".zarray"))
    shape = metadata.get("shape") if isinstance(metadata, dict) else None
    if not isinstance(shape, list):
        return None
    prefix = ("c",) if v3 else ()

    def allowed(parts: tuple[str, ...], folder: bool) -> bool:
        if len(parts) == 1 and not folder and parts[0] in WRITTEN_METADATA:
            return True
        key = parts[len(prefix):]
        return (parts[:len(prefix)] == prefix and all(part.isdigit() for part in key)
                and (len(key) < len(shape) if folder else len(key) == len(shape)))

    return allowed


def _store_layout(path: Path, attrs: dict) -> Allowed:
    """What this program writes in an OME-Zarr store: the root metadata and the levels its ``multiscales`` lists."""
    levels = {name: _array_layout(path / name) for name in _level_names(attrs)}

    def allowed(parts: tuple[str, ...], folder: bool) -> bool:
        if len(parts) == 1 and not folder:
            return parts[0] in WRITTEN_METADATA
        array = levels.get(parts[0])
        return array is not None and (len(parts) == 1 or array(parts[1:], folder))

    return allowed


def _listed_layout(entries: list) -> Allowed:
    """What this program writes in another folder (a report): the files its listing names, and the listing."""
    names = {MARKER_FILE, *map(str, entries)}
    return lambda parts, folder: len(parts) == 1 and not folder and parts[0] in names


def _examine(path: Path) -> tuple[dict | None, Path | None]:
    """``path``'s marker (None when it carries none) and the first entry in it this program did not write
    (``path`` itself when unmarked, None when every entry is accounted for)."""
    if path.is_symlink() or not path.exists():
        return None, path
    if path.is_file():
        content = _read_json(path)
        return (content[MARKER_KEY], None) if _marked(content) else (None, path)
    if _is_zarr_node(path):
        try:
            attrs = zarr.open_group(str(path), mode="r").attrs.asdict()
        except Exception:  # zarr raises many types for a folder that is no readable group
            return None, path
        if not _marked(attrs):
            return None, path
        return dict(attrs[MARKER_KEY]), _first_foreign(path, _store_layout(path, attrs))
    listing = path / MARKER_FILE
    content = _read_json(listing) if _plain(listing, False) else None
    if not _marked(content) or not isinstance(content, dict) or not isinstance(content.get("entries"), list):
        return None, path
    return content[MARKER_KEY], _first_foreign(path, _listed_layout(content["entries"]))


def foreign_path(path: str | Path) -> Path | None:
    """The first path at or inside ``path`` that this program did not write, None when it wrote all of it.

    An output is this program's when it carries the marker and holds nothing but what this program
    writes there, at any depth: for an OME-Zarr store its root metadata and the levels its
    ``multiscales`` lists, each with its metadata and chunk files; for another folder the files its
    ``.linumpy-motor.json`` lists. A missing path, a link, an unmarked file or folder is ``path`` itself;
    a user's ``labels/`` group in a stitched image, or a note in one of its levels, is that entry.
    """
    return _examine(Path(path))[1]


def is_ours(path: str | Path) -> bool:
    """True when this program wrote ``path`` and everything in it (:func:`foreign_path` finds nothing)."""
    return foreign_path(path) is None


STAGE_KINDS = {"synth": "synthetic input slice or truth", "measure": "pairs file", "flatfield": "flat field",
               "fit": "motor model", "transform": "motor model", "stitch": "stitched slice", "compare": "comparison",
               "report": "QC report", "stamp": "resume stamp"}
"""What each stage's output is: an output is replaced only by a stage writing the same kind (another stage's
name is its own kind), so no step replaces another's output, and no output replaces a synthetic input."""


def _kind(stage: object) -> str:
    return STAGE_KINDS.get(str(stage), str(stage))


def check_replaceable(path: str | Path, stage: str | None = None) -> None:
    """Refuse an existing ``path`` that this program may not replace or remove.

    Parameters
    ----------
    path : str or Path
        The output.
    stage : str, optional
        The stage about to write it: an output of another kind (:data:`STAGE_KINDS`) is refused too.

    Raises
    ------
    InputError
        Naming ``path`` when it is not this program's, or the first entry inside it that this program did
        not write (:func:`foreign_path`).
    """
    path = Path(path)
    if not (path.exists() or path.is_symlink()):
        return
    found, foreign = _examine(path)
    if foreign == path:
        raise InputError(path, "exists and was not written by linumpy-motor; refusing to replace it")
    if foreign is not None:
        raise InputError(foreign, f"was not written by linumpy-motor and lies inside the output {path}; "
                                  "refusing to replace or remove it")
    if stage is not None and found is not None and _kind(found.get("stage")) != _kind(stage):
        raise InputError(path, f"is linumpy-motor's {_kind(found.get('stage'))}, not its {_kind(stage)}; "
                               "refusing to replace it")


def check_output_name(path: str | Path) -> Path:
    """Refuse an empty output argument (``""`` would mean the current folder) or ``.``/``..``."""
    if not str(path).strip() or Path(path).name in ("", ".", ".."):
        raise InputError(None, f"output path {str(path)!r} is empty or not a name")
    return Path(path)


def check_outside(output: str | Path, *inputs: str | Path) -> None:
    """Refuse an output that is an input, lies inside one, or holds one, links followed (inputs are never
    written to); the error names ``output`` as given, and where its links lead."""
    given = Path(output)
    out = given.resolve()
    through = "" if out == given.absolute() else f" (through a link: it is {out})"
    for source in inputs:
        src = Path(source).resolve()
        if out == src:
            raise InputError(given, f"output would be the input itself{through}")
        if src in out.parents:
            raise InputError(given, f"output would be inside the input {src}{through}")
        if out in src.parents:
            raise InputError(given, f"output would hold the input {src}{through}")


def check_folder(folder: str | Path, *inputs: str | Path) -> None:
    """Before any work: refuse a folder this program is to write into (existing or not) when, links
    followed, it is, holds or lies in one of ``inputs`` (:func:`check_outside`), or when it cannot be
    made or written: a file, or a link to nothing, where it or one of its parents must be a folder.

    Raises
    ------
    InputError
        Naming ``folder``.
    """
    folder = Path(folder)
    check_outside(folder, *inputs)
    existing = next(p for p in [folder, *folder.absolute().parents] if p.exists() or p.is_symlink())
    if not existing.exists():
        raise InputError(folder, f"output folder cannot be created: {existing} is a link to nothing")
    if not existing.is_dir():
        raise InputError(folder, f"output folder cannot be created: {existing} is a file")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise InputError(folder, "output folder cannot be written")


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


def check_output(output: str | Path, *inputs: str | Path, stage: str | None = None) -> Path:
    """Before any work: refuse an output with an empty name or a missing folder, one that is, holds or
    lies in one of ``inputs`` (links followed), or one this program may not replace with the output of
    ``stage`` (:func:`check_replaceable`).

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
    check_replaceable(output, stage)
    return output


_claim: Callable[[], None] | None = None
"""What :func:`atomic_output` checks right before renaming an output into place (see :func:`set_claim`)."""


def set_claim(check: Callable[[], None] | None) -> None:
    """Make every :func:`atomic_output` of this process call ``check()`` right before its final rename.

    ``check`` raises to stop the rename (the temporary output is then removed): a runner's worker process
    uses it to never rename an output into place once the run that started it is gone or another run
    holds the output folder. None: no check.
    """
    global _claim
    _claim = check


@contextmanager
def atomic_output(path: str | Path, stage: str = "output") -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write into; mark it and rename it to ``path`` on success.

    Before anything is written: an empty name, a missing folder, or an existing ``path`` this
    program may not replace (:func:`check_replaceable`) is an :class:`InputError`. On any exception
    the temporary output is removed and ``path`` is left as it was; a disk-full error names
    ``path`` and ``stage``. The check set by :func:`set_claim` runs right before the rename. A folder is
    swapped in two renames (old one aside as ``.NAME.old-PID``),
    so a process killed between them leaves ``path`` absent, never half-written.
    """
    path = check_output(path, stage=stage)
    tmp = temporary_name(path)
    remove_path(tmp)
    try:
        yield tmp
        _mark(tmp, stage)
        check_replaceable(path, stage)  # something else may have appeared there meanwhile
        if _claim is not None:
            _claim()
        _swap(tmp, path)
    except BaseException as exc:
        # not cut by a Ctrl-C (raised after it), never masking the error; a leftover is removed by the next run
        with interrupts.deferred(), suppress(OSError):
            _settle_zarr_io()
            remove_path(tmp)
        if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
            raise OSError(exc.errno, f"{stage} step: {os.strerror(exc.errno)}", str(path)) from None
        raise


async def _other_tasks_end() -> None:
    tasks = asyncio.all_tasks() - {asyncio.current_task()}
    if tasks:
        await asyncio.wait(tasks, timeout=SETTLE_S)


def _settle_zarr_io() -> None:
    """Wait until zarr's I/O loop has finished the writes it was running (at most :data:`SETTLE_S`).

    A Ctrl-C or SIGTERM stops this thread's wait for a zarr write (zarr runs it on its own I/O thread), not
    the write: removed meanwhile, the temporary output was created again by it, and left behind.
    """
    sync(_other_tasks_end())


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
