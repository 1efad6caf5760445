"""Resume bookkeeping of the embedded runner: what identifies a step's inputs, and the stamp each output
carries so that a rerun skips what is done and removes what an earlier run left.

A step is skipped when its output exists and its stamp (a hash of the step's inputs, parameters and the
package version) is unchanged; a step's old stamp is removed before it runs and the new one written after
its output is renamed into place, so a killed run is simply rerun.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
from pathlib import Path

from linumpy_motor import __version__
from linumpy_motor.io import outputs

__all__ = ["LOCK_FILE", "STAMPS_DIR", "STATE_DIR", "Stamps", "check_outputs", "claim", "claimant", "clean",
           "file_digest", "step_key", "store_fingerprint"]

STATE_DIR = ".linumpy-motor"
"""The folder, inside an output folder, that holds the runner's state (its stamps and lock)."""
STAMPS_DIR = "stamps"
"""The folder of stamps inside :data:`STATE_DIR`."""
LOCK_FILE = "lock"
"""The lock file inside :data:`STATE_DIR` that a run holds while it writes to its output folder."""


def file_digest(path: Path) -> str:
    """SHA-256 of a file's content."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def store_fingerprint(path: Path) -> str:
    """Identity of an input store: every file's relative path, size and modification time, links
    followed (a level linked from elsewhere counts by its target's files, and by where it points)."""
    entries: list[tuple[str, str, str | int, int]] = []  # (path, kind, link target or size, mtime)
    seen = set()
    for root, folders, files in os.walk(path, followlinks=True):
        real = os.path.realpath(root)
        if real in seen:  # a link cycle
            folders[:] = []
            continue
        seen.add(real)
        for name in sorted(folders + files):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, path)
            if os.path.islink(full):
                entries.append((rel, "link", os.readlink(full), 0))
            if name in files:
                stat = os.stat(full)
                entries.append((rel, "file", stat.st_size, stat.st_mtime_ns))
    return hashlib.sha256(json.dumps(sorted(entries)).encode()).hexdigest()


def step_key(**inputs) -> str:
    """Hash of a step's inputs, parameters and the package version."""
    text = json.dumps({"version": __version__, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def claim(outdir: Path) -> str:
    """Write a new run token into ``outdir``'s lock file, which the caller holds: the outputs are this run's
    (:func:`claimant`), and a worker left over from an earlier run can tell it lost them."""
    token = f"{os.getpid()}-{secrets.token_hex(8)}"
    (outdir / STATE_DIR / LOCK_FILE).write_text(token)
    return token


def claimant(outdir: Path) -> str | None:
    """The token of the run that last claimed ``outdir`` (:func:`claim`), None when there is none."""
    try:
        return (outdir / STATE_DIR / LOCK_FILE).read_text() or None
    except OSError:
        return None


def _read_stamp(stamp: Path) -> dict:
    """A stamp's content; empty when it is missing or unreadable (an older version's plain-text stamp)."""
    try:
        content = json.loads(stamp.read_text())
    except (OSError, ValueError):
        return {}
    return content if isinstance(content, dict) else {}


class Stamps:
    """Resume bookkeeping: one stamp (JSON: the output's path and key) per output under
    ``OUTDIR/.linumpy-motor/stamps``, and the folders this run created (``created``)."""

    def __init__(self, outdir: Path, created: list[Path]) -> None:
        self.outdir = outdir
        self.folder = outdir / STATE_DIR / STAMPS_DIR
        self.created = created
        self.make_folder(self.folder)
        self.recorded = 0

    def make_folder(self, folder: Path) -> None:
        """Create ``folder`` if missing, remembering it as this run's (see :func:`outputs.make_folders`)."""
        self.created += outputs.make_folders(folder)

    def stamp_file(self, output: Path) -> Path:
        """Where ``output``'s stamp is kept."""
        return self.folder / (str(output.relative_to(self.outdir)).replace(os.sep, "__") + ".key")


    def done(self, output: Path, key: str) -> bool:
        """True when ``output`` exists and was made from the same inputs."""
        return output.exists() and _read_stamp(self.stamp_file(output)).get("key") == key

    def stamped(self) -> list[Path]:
        """Every output that has a stamp."""
        found = (_read_stamp(stamp).get("output") for stamp in sorted(self.folder.glob("*.key")))
        return [self.outdir / rel for rel in found if isinstance(rel, str)]

    def invalidate(self, output: Path) -> None:
        """Remove ``output``'s stamp before remaking it (a run killed after the new output is renamed
        into place but before it is stamped must not pass it off as the old one)."""
        self.stamp_file(output).unlink(missing_ok=True)

    def record(self, output: Path, key: str) -> None:
        """Stamp ``output`` (after it was renamed into place)."""
        self.invalidate(output)
        outputs.write_json(self.stamp_file(output), {"key": key, "output": output.relative_to(self.outdir).as_posix()},
                           "stamp")
        self.recorded += 1

    def key_of(self, output: Path) -> str:
        """The stamp of an existing output."""
        return _read_stamp(self.stamp_file(output))["key"]


def check_outputs(outdir: Path, planned: dict[Path, str]) -> list[Path]:
    """Before any work: refuse a planned output (``planned``: output -> the stage that writes it) this run may
    not replace, and an earlier output this run will not make (a slice no longer in the input; pairs, compare
    and report after a run with ``--transform``) that a user added to (a ``labels/`` group in a stitched
    image), both with :func:`outputs.check_replaceable`. Return those earlier outputs that are to be
    removed (this program wrote all of them); one whose path now holds only a user's own file is left alone.
    Reads the stamps without writing anything.
    """
    stamps = outdir / STATE_DIR / STAMPS_DIR
    earlier = [outdir / rel for rel in (_read_stamp(stamp).get("output") for stamp in sorted(stamps.glob("*.key")))
               if isinstance(rel, str)]
    stale = [output for output in sorted(set(earlier) - set(planned))
             if (output.exists() or output.is_symlink()) and outputs.foreign_path(output) != output]
    for output in stale:  # ours at the top: removed by clean(), unless a user added to it
        outputs.check_replaceable(output)
    for output, stage in planned.items():  # a user's file or folder in the way is never replaced
        outputs.check_replaceable(output, stage)
    return stale


def clean(stamps: Stamps, planned: dict[Path, str]) -> None:
    """Under the lock, before any step: check the outputs again (:func:`check_outputs`), then remove the
    temporaries killed runs left for this run's or earlier runs' outputs (exact ``.NAME.tmp-PID`` /
    ``.NAME.old-PID`` names only) and the earlier outputs this run will not make, so none of them looks
    current."""
    stale = check_outputs(stamps.outdir, planned)
    earlier = stamps.stamped()
    names: dict[Path, set[str]] = {}
    for output in {*planned, *earlier}:
        names.setdefault(output.parent, set()).add(output.name)
        names.setdefault(stamps.folder, set()).add(stamps.stamp_file(output).name)
    for folder, in_folder in names.items():
        outputs.remove_temporaries(folder, in_folder)
    for output in stale:
        outputs.remove_path(output)
    # the folders that leaves empty (pairs/ after a run with --transform); one holding anything stays
    outputs.remove_created_folders({output.parent for output in stale} - {stamps.outdir})
    for output in set(earlier) - set(planned):
        stamps.invalidate(output)
