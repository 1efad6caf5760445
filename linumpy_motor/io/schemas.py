"""The JSON files passed between steps, validated with pydantic on the way in."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal, TypeVar, get_args

import numpy as np
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveInt,
    RootModel,
    ValidationError,
    field_validator,
    model_validator,
)

from linumpy_motor.errors import InputError
from linumpy_motor.io.records import pair_table

__all__ = ["DEFAULT_OVERLAP", "MAX_OVERLAP", "MIN_DETERMINANT", "REPORT_PAGE", "STATUSES", "STATUS_FILE", "CompareFile",
           "FiniteFloat", "Overlap", "Pair", "PairsFile", "SliceStatus", "Status", "StatusFile", "TileFinding",
           "TileProblem", "TransformFile",
           "check_overlap", "check_transform", "first_problem", "is_npy", "is_singular", "load", "load_transform",
           "read_model", "read_transform", "validate"]

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
DEFAULT_OVERLAP = 0.2
"""The nominal overlap assumed when none is given (the overlap is not stored in the files)."""
MAX_OVERLAP = 0.5
"""Largest nominal overlap, a fraction of the tile: beyond it a tile would overlap its neighbour's neighbour."""


def check_overlap(value: float) -> float:
    """The nominal overlap fraction if it lies in (0, :data:`MAX_OVERLAP`], else :class:`InputError`."""
    if not 0 < value <= MAX_OVERLAP:  # NaN fails too
        raise InputError(None, f"overlap must be in (0, {MAX_OVERLAP}], got {value}")
    return value


Overlap = Annotated[float, AfterValidator(check_overlap)]
"""A nominal overlap fraction, the one rule for every option, file and script that takes one."""

MIN_DETERMINANT = 1e-9
"""A motor matrix whose determinant is at most this in magnitude (px² per tile step²) is singular."""


def is_singular(transform: object) -> bool:
    """Whether a 2x2 motor matrix ``[[a, b], [c, d]]`` is singular: ``|a d - b c| <= MIN_DETERMINANT``."""
    (a, b), (c, d) = np.asarray(transform, dtype=float).tolist()
    return bool(abs(a * d - b * c) <= MIN_DETERMINANT)


def check_transform(transform: object, path: str | Path | None = None) -> np.ndarray:
    """The motor matrix A as a float array if it is 2x2, real, finite and not :func:`is_singular`.

    The one validity rule of a motor matrix, whether read from a file (:class:`TransformFile`) or passed in.

    Raises
    ------
    InputError
        Naming ``path`` (None: a parameter): not a 2x2 numeric matrix, or not finite and invertible.
    """
    try:
        matrix = np.asarray(transform)
    except ValueError:  # a ragged nested sequence
        raise InputError(path, "expected a 2x2 numeric matrix") from None
    if matrix.shape != (2, 2) or not (np.issubdtype(matrix.dtype, np.integer)
                                      or np.issubdtype(matrix.dtype, np.floating)):
        raise InputError(path, f"expected a 2x2 numeric matrix, got shape {list(matrix.shape)} of {matrix.dtype}")
    A = matrix.astype(float)
    problem = "not finite" if not np.isfinite(A).all() else "singular" if is_singular(A) else None
    if problem is not None:
        raise InputError(path, f"transform is {problem}: a motor matrix must be a finite, invertible 2x2 matrix, "
                               f"got {A.tolist()}")
    return A


class Pair(BaseModel):
    """One measured neighbour pair: tile ``tile`` and its neighbour ``tile + (row_delta, col_delta)``."""

    model_config = ConfigDict(extra="allow")
    tile: tuple[int, int]
    row_delta: int
    col_delta: int
    measured_dy: FiniteFloat
    measured_dx: FiniteFloat
    ncc: FiniteFloat = 1.0
    empty_fraction: FiniteFloat = 0.0
    levels: tuple[FiniteFloat, FiniteFloat] | None = None
    """The mean of each tile's copy of the overlap (flat-field corrected); None in files that predate it."""
    background: bool = False
    """Marked by the background test: correlates no better than chance (fitted all the same)."""


NEIGHBOUR_STEPS = ((0, 1), (1, 0))
"""The (row, column) steps from a tile to the neighbours it is paired with: right and down."""


class PairsFile(BaseModel):
    """``<slice>_pairs.json``: the pairs measured in one slice and how they were measured."""

    model_config = ConfigDict(extra="forbid")
    version: str
    slice_id: int
    source: str
    tile_shape: tuple[PositiveInt, PositiveInt, PositiveInt]
    grid: tuple[PositiveInt, PositiveInt]
    overlap: Overlap
    z: int | None  # None: the mean over all planes was measured
    pairs: list[Pair]
    skipped: list[dict]
    stats: dict
    linumpy_motor: dict | None = None
    """This program's output marker (see :mod:`linumpy_motor.io.outputs`)."""

    def table(self) -> np.ndarray:
        """The pairs as a pair table (:func:`~linumpy_motor.io.records.pair_table`): how the core takes them."""
        return pair_table(p.model_dump() for p in self.pairs)

    @model_validator(mode="after")
    def _pairs_in_grid(self) -> PairsFile:
        """Every pair joins a tile of the grid to its right or lower neighbour, also in the grid."""
        nx, ny = self.grid
        for index, pair in enumerate(self.pairs):
            (i, j), step = pair.tile, (pair.row_delta, pair.col_delta)
            if step not in NEIGHBOUR_STEPS:
                raise ValueError(f"pairs.{index}: step {list(step)} is not to a right or lower neighbour")
            if not (0 <= i < nx and 0 <= j < ny and i + step[0] < nx and j + step[1] < ny):
                raise ValueError(f"pairs.{index}: tile {[i, j]} and its neighbour are not both in the grid {[nx, ny]}")
        return self


class TransformFile(BaseModel):
    """``motor_transform.json``: the pooled 2x2 motor matrix and its diagnostics (none in a JSON
    holding only ``transform``)."""

    model_config = ConfigDict(extra="allow")
    transform: tuple[tuple[FiniteFloat, FiniteFloat], tuple[FiniteFloat, FiniteFloat]]
    backlash: tuple[FiniteFloat, FiniteFloat] = (0.0, 0.0)  # offset (dy, dx) of odd tile rows; 0: none
    diagnostics: dict = {}

    @field_validator("transform")
    @classmethod
    def _valid(cls, value):
        check_transform(value)  # an InputError is a ValueError: pydantic reports its text
        return value


class CompareFile(BaseModel):
    """A slice's ``*_compare.json`` (:func:`linumpy_motor.qc.compare.compare_positions` output)."""

    model_config = ConfigDict(extra="allow")
    slice_id: int | None = None
    source: str | None = None
    n_connected_tiles: int | None = None
    rms_diff_px: FiniteFloat | None = None
    max_diff_px: FiniteFloat | None = None
    flags: dict[str, bool] = {}


Status = Literal["ok", "check", "failed"]
"""A slice's QC verdict, from best to worst."""
STATUSES: tuple[Status, ...] = get_args(Status)


TileProblem = Literal["saturated", "bright", "blank", "unmatched"]
"""What is wrong with a tile (:mod:`linumpy_motor.qc.verdict` decides)."""


class TileFinding(BaseModel):
    """A tile the QC verdict names: its grid index (row, column), what is wrong and the measurement that shows it."""

    tile: tuple[int, int]
    problem: TileProblem
    detail: str


class SliceStatus(BaseModel):
    """One slice's QC verdict in the report's ``status.json``: its status, the reasons, and the tiles named."""

    status: Status
    reasons: list[str] = []
    tiles: list[TileFinding] = []


STATUS_FILE = "status.json"
"""Name of the :class:`StatusFile` in a report folder."""
REPORT_PAGE = "report.html"
"""Name of the QC report's page in its folder."""


class StatusFile(RootModel[dict[int, SliceStatus]]):
    """The report's ``status.json``: slice id -> :class:`SliceStatus`."""


Model = TypeVar("Model", bound=BaseModel)


def load(path: str | Path, model: type[Model]) -> Model:
    """Read and validate a JSON file; any problem is an :class:`InputError` naming the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise InputError(path, exc.strerror or "cannot be read") from None
    except UnicodeDecodeError:
        raise InputError(path, "not a JSON text file (binary content)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InputError(path, f"not valid JSON (truncated?): {exc.msg} (line {exc.lineno})") from None
    return validate(data, model, path)


def validate(data: object, model: type[Model], path: str | Path) -> Model:
    """Validate data read from ``path``; a problem is an :class:`InputError` naming the file and the first problem."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise InputError(path, f"invalid {model.__name__}: {first_problem(exc)}") from None


def first_problem(exc: ValidationError) -> str:
    """The first problem of a validation error, in one line: ``where: what`` (``what`` at the top level;
    a check of ours that raised ``ValueError`` is quoted without pydantic's "Value error, " prefix)."""
    first = exc.errors()[0]
    where = ".".join(str(p) for p in first["loc"])
    what = first["msg"].removeprefix("Value error, ")
    return f"{where}: {what}" if where else what


def is_npy(path: str | Path) -> bool:
    """Whether a path names a NumPy ``.npy`` file (by its suffix, in any case: ``A.NPY`` too)."""
    return Path(path).suffix.lower() == ".npy"


def load_transform(path: str | Path) -> TransformFile:
    """A known motor model: our transform JSON, a JSON holding only ``transform``, or upstream's
    ``.npy`` 2x2 matrix (what ``linum_estimate_transform.py`` writes, same convention: tile (i, j)
    at ``A @ [i, j]``).

    Raises
    ------
    InputError
        Naming the file: unreadable, not a 2x2 finite invertible matrix, or invalid JSON.
    """
    path = Path(path)
    if not is_npy(path):
        return load(path, TransformFile)
    try:
        matrix = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable .npy matrix ({exc})") from None
    return validate({"transform": check_transform(matrix, path).tolist()}, TransformFile, path)


def read_transform(path: str | Path) -> np.ndarray:
    """The 2x2 motor matrix of a transform file (:func:`load_transform`)."""
    return read_model(path)[0]


def read_model(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The 2x2 motor matrix and the backlash vector (zero when none) of a transform file (:func:`load_transform`)."""
    content = load_transform(path)
    return np.array(content.transform, dtype=float), np.array(content.backlash, dtype=float)
