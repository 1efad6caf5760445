"""The report's inputs, loaded and indexed by slice id (two inputs of one kind for a slice are refused)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from linumpy_motor.errors import InputError
from linumpy_motor.io.dataset import slice_id_from_name
from linumpy_motor.io.schemas import CompareFile, PairsFile, TransformFile, load, load_transform

__all__ = ["ReportInputs", "load_inputs"]


@dataclass(frozen=True)
class ReportInputs:
    """Everything a report is made from, validated, each per-slice input indexed by slice id.

    Attributes
    ----------
    transform : TransformFile
        The motor model.
    pairs : dict of int to PairsFile
        Each slice's pairs file.
    compare : dict of int to CompareFile
        Each slice's motor-vs-registration comparison.
    stitched : dict of int to Path
        Each slice's stitched store (not opened here).
    per_slice : dict of int to dict
        The motor model's per-slice diagnostics (``diagnostics.per_slice``), keyed by int.
    source : Path
        The motor model's file.
    """

    transform: TransformFile
    pairs: dict[int, PairsFile]
    compare: dict[int, CompareFile]
    stitched: dict[int, Path]
    per_slice: dict[int, dict]
    source: Path

    @property
    def slice_ids(self) -> list[int]:
        """The slices reported on: every slice with pairs, a comparison or a stitched store, else every
        slice of the motor model's per-slice diagnostics; sorted."""
        return sorted(set(self.pairs) | set(self.compare) | set(self.stitched)) or sorted(self.per_slice)


def load_inputs(transform_file: str | Path, pairs_files: Sequence[str | Path], compare_files: Sequence[str | Path],
                stitched: Sequence[str | Path]) -> ReportInputs:
    """Load and index a report's inputs.

    Parameters
    ----------
    transform_file : str or Path
        Motor model (:func:`~linumpy_motor.io.schemas.load_transform`).
    pairs_files : sequence of str or Path
        Pairs files; each gives its slice id.
    compare_files : sequence of str or Path
        Comparison files; slice id from the file, else from its name
        (:func:`~linumpy_motor.io.dataset.slice_id_from_name`).
    stitched : sequence of str or Path
        Stitched slices; slice id from the name.

    Returns
    -------
    ReportInputs

    Raises
    ------
    InputError
        A file that cannot be read or validated, a name without a slice id, two inputs of one kind for
        a slice, or per-slice diagnostics that do not map slice ids to objects.
    """
    source = Path(transform_file)
    transform = load_transform(source)
    pairs = _index(((f.slice_id, (p, f)) for p in map(Path, pairs_files) for f in [load(p, PairsFile)]),
                   "pairs file")
    compare = _index((((c.slice_id if c.slice_id is not None else slice_id_from_name(p)), (p, c))
                      for p in map(Path, compare_files) for c in [load(p, CompareFile)]), "compare file")
    stores = _index(((slice_id_from_name(p), (p, p)) for p in map(Path, stitched)), "stitched slice")
    return ReportInputs(transform, pairs, compare, stores, _per_slice(transform, source), source)


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
