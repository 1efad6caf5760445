"""The report's figures as values: which PNG, drawn by which function of :mod:`.plots`, from what.

A :class:`FigureJob` is planned where the report is built and drawn where there is a core free: in the same
process (:func:`draw_here`), or in the embedded runner's worker processes, each figure on its own. Planning
one imports no plotting library; drawing imports :mod:`.plots` (matplotlib) the first time.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from linumpy_motor import interrupts

__all__ = ["FigureJob", "draw_here"]


@dataclass(frozen=True, eq=False)
class FigureJob:
    """One PNG of the report: ``plot`` (the name of a function of :mod:`linumpy_motor.qc.plots`) writes it at
    ``path`` from ``arguments`` (its keyword arguments). Calling it draws it and returns ``path``. Compared by
    identity: its arguments hold arrays."""

    path: Path
    plot: str
    arguments: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self) -> Path:
        plots = importlib.import_module("linumpy_motor.qc.plots")  # matplotlib: only where figures are drawn
        return getattr(plots, self.plot)(self.path, **self.arguments)


def draw_here(figures: Sequence[FigureJob]) -> None:
    """Draw ``figures`` one after another in this process, stopping between two on Ctrl-C or SIGTERM."""
    for figure in figures:
        interrupts.check()
        figure()
