"""The typed values the measuring and fitting core passes around: pair records and the motor model.

A slice's measured pairs are one NumPy structured array (:data:`PAIR_DTYPE`, a *pair table*), not a
list of dicts with string keys: its fields are named, typed and checked once, where the pairs enter
the core (:func:`pair_table`), and turned back into JSON-ready dicts once, where they leave it
(:func:`pair_dicts`). The motor model is a :class:`MotorModel`: the 2x2 matrix and, apart, the
backlash term of serpentine scans when the model has one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

__all__ = ["NO_TILE", "PAIR_DTYPE", "MotorModel", "pair_dicts", "pair_table"]

PAIR_DTYPE = np.dtype([
    ("tile", np.int64, (2,)),      # (i, j) of the first tile; NO_TILE when the pair does not say
    ("row_delta", np.int64),       # the neighbour is tile + (row_delta, col_delta)
    ("col_delta", np.int64),
    ("measured_dy", np.float64),   # absolute displacement of the neighbour (px)
    ("measured_dx", np.float64),
    ("ncc", np.float64),           # 1.0 when not measured (a pair given by hand counts fully)
    ("peak", np.float64),          # NaN when not measured
    ("empty_fraction", np.float64),
    ("levels", np.float64, (2,)),  # mean of each tile's copy of the overlap (flat-field corrected); NaN: not measured
    ("background", np.bool_),      # marked by the background test: no better than chance (still fitted)
])
"""One neighbour pair: the fields every pair dict of the pipeline's JSON and of the façade can carry."""

NO_TILE = -1
"""The ``tile`` of a pair that does not say which tiles it joins (upstream's bare pairs)."""

_OPTIONAL = {"ncc": 1.0, "peak": math.nan, "empty_fraction": math.nan}
_NO_LEVELS = (math.nan, math.nan)


def pair_table(pairs: Iterable[Mapping]) -> np.ndarray:
    """The pair table of pair dicts: ``row_delta``, ``col_delta``, ``measured_dy`` and ``measured_dx``
    required; ``tile`` (else :data:`NO_TILE`), ``ncc`` (else 1), ``peak``, ``empty_fraction`` and
    ``levels`` (else NaN) and ``background`` (else False) optional.

    Parameters
    ----------
    pairs : iterable of mapping
        Pairs as read from JSON, given to the façade or built by hand.

    Returns
    -------
    np.ndarray
        A 1-D array of :data:`PAIR_DTYPE`.

    Raises
    ------
    KeyError
        A required key is missing.
    """
    rows = [((p["tile"][0], p["tile"][1]) if "tile" in p else (NO_TILE, NO_TILE),
             p["row_delta"], p["col_delta"], p["measured_dy"], p["measured_dx"],
             *(p.get(key, default) for key, default in _OPTIONAL.items()),
             tuple(p.get("levels") or _NO_LEVELS), bool(p.get("background", False))) for p in pairs]
    return np.array(rows, dtype=PAIR_DTYPE)


def pair_dicts(table: np.ndarray) -> list[dict]:
    """The pairs of a pair table as JSON-ready dicts (Python ints and floats; ``tile`` as ``[i, j]``),
    in the table's order: what the pipeline writes in a slice's pairs file (``levels`` only where measured)."""
    return [{"tile": [int(i), int(j)], "row_delta": int(row["row_delta"]), "col_delta": int(row["col_delta"]),
             "measured_dy": float(row["measured_dy"]), "measured_dx": float(row["measured_dx"]),
             **{key: float(row[key]) for key in _OPTIONAL},
             **({"levels": [float(v) for v in row["levels"]]} if np.isfinite(row["levels"]).all() else {}),
             "background": bool(row["background"])}
            for row, (i, j) in zip(table, table["tile"])]


@dataclass(frozen=True, eq=False)
class MotorModel:
    """The motor model: tile ``(i, j)`` sits at ``matrix @ [i, j] + (i mod 2) * backlash``.

    Attributes
    ----------
    matrix : np.ndarray
        The 2x2 matrix A (px per tile step), the model's primary output.
    backlash : np.ndarray or None
        The offset ``(dy, dx)`` of odd tile rows in serpentine scans; None when the model has none.
    """

    matrix: np.ndarray
    backlash: np.ndarray | None = None

    @property
    def backlash_px(self) -> list[float]:
        """The backlash as ``[dy, dx]`` (``[0, 0]`` when the model has none), as the diagnostics report it."""
        return [0.0, 0.0] if self.backlash is None else [float(v) for v in self.backlash]
