"""The report's inputs, loaded and indexed by slice id (two inputs of one kind for a slice are refused)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from linumpy_motor.errors import InputError
from linumpy_motor.io.dataset import slice_id_from_name
from linumpy_motor.io.schemas import CompareFile, PairsFile, TransformFile, load, load_transform

__all__ = ["ReportInputs", "load_inputs"]

@dataclass(frozen=True)
class ReportInputs:
    transform: TransformFile
    pairs: dict[int, PairsFile]
    compare: dict[int, CompareFile]
    stitched: dict[int, Path]
    per_slice: dict[int, dict]
    source: Path


def load_inputs(transform_file, pairs_files, compare_files, stitched) -> ReportInputs:
    transform_file = Path(transform_file)
    transform = load_transform(transform_file)
    pairs = _index(((f.slice_id, (p, f)) for p in map(Path, pairs_files) for f in [load(p, PairsFile)]),
                   "pairs file")
    compare = _index((((c.slice_id if c.slice_id is not None else slice_id_from_name(p)), (p, c))
                      for p in map(Path, compare_files) for c in [load(p, CompareFile)]), "compare file")
    stitched = _index(((slice_id_from_name(p), (p, p)) for p in map(Path, stitched)), "stitched slice")
    return ReportInputs(transform, pairs, compare, stitched, _per_slice(transform, transform_file), transform_file)


def _index(items: Iterable[tuple[int, tuple[Path, object]]], what: str) -> dict:
    indexed: dict = {}
    for slice_id, (path, value) in items:
        if slice_id in indexed:
            raise InputError(path, f"slice {slice_id} has more than one {what}")
        indexed[slice_id] = (path, value)
    return {slice_id: value for slice_id, (_, value) in indexed.items()}


def _per_slice(transform: TransformFile, path: Path) -> dict[int, dict]:
    raw = transform.diagnostics.get("per_slice") or {}
    try:
        return {int(key): dict(value) for key, value in raw.items()}
    except (TypeError, ValueError, AttributeError):
        raise InputError(path, "diagnostics.per_slice must map slice ids to objects") from None
