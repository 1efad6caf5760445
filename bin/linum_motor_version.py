#!/usr/bin/env python3
"""Print the installed linumpy-motor's version and a hash of its source files, e.g. '0.1.0+3f2a9c41d0b7'.

The Nextflow pipeline reads it once per run (LIBRARY_VERSION) and gives it to every task as an input:
a changed library then changes every task's hash, and -resume reruns the work, with or without
containers.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path

try:
    from linumpy_motor import __version__
    from linumpy_motor.pipeline.entry import make_parser, run_cli
except ImportError as exc:  # the first task of a run: say what is missing, once, in one line
    sys.exit(f"linum_motor_version.py: the linumpy_motor package is not importable by {sys.executable} ({exc}); "
             "install it in this environment (pip install .) or run with a container profile")


def source_hash(package_dir: Path) -> str:
    """SHA-256 (first 12 hex digits) of the package's files: their paths and contents, in a fixed order."""
    digest = hashlib.sha256()
    for path in sorted(p for p in package_dir.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()[:12]


def build_parser() -> argparse.ArgumentParser:
    """Command-line arguments (none but --help)."""
    return make_parser("linum_motor_version.py", __doc__)


def show(_args: argparse.Namespace) -> None:
    """Print ``<version>+<source hash>`` of the importable package (:func:`source_hash`)."""
    spec = importlib.util.find_spec("linumpy_motor")
    if spec is None or spec.submodule_search_locations is None:
        raise RuntimeError("linumpy_motor is not importable as a package")
    (package_dir,) = spec.submodule_search_locations
    print(f"{__version__}+{source_hash(Path(package_dir))}")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; 0 on success."""
    return run_cli(build_parser(), show, argv)


if __name__ == "__main__":
    sys.exit(main())
