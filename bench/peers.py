"""The three tools under one in-memory interface: ours, m2stitch (MIST) and ASHLAR.

Every adapter takes one mosaic-grid plane ``(nx * h, ny * w)`` (tiles side by side, as in the
data contract) and returns a :class:`ToolResult`: the tool's motor matrix A (tile index → pixel
position) and, for the peers, the per-tile positions they computed. Peers are imported lazily
and installed from PyPI (``bench/requirements-peers.txt``), never vendored.
"""

from __future__ import annotations

import importlib.metadata
import sys
import types
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from linumpy_motor.register.fit import fit_pooled
from linumpy_motor.register.geometry import grid_indices
from linumpy_motor.register.measure import MeasureOptions, band_reader, measure_grid_pairs


@dataclass(frozen=True)
class ToolResult:
    """What one tool made of one slice (or, for ours, of all slices pooled)."""

    transform: np.ndarray | None
    positions: np.ndarray | None = None
    error: str | None = None
    note: str | None = None


def tiles_of(plane: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """The tiles of a mosaic-grid plane as a stack ``(nx * ny, h, w)``, row-major."""
    h, w = plane.shape[0] // nx, plane.shape[1] // ny
    return plane.reshape(nx, h, ny, w).transpose(0, 2, 1, 3).reshape(nx * ny, h, w)


def fit_grid_transform(positions: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """Least-squares A of ``positions ≈ A @ [i, j] + t`` over a row-major ``nx x ny`` grid."""
    ij = grid_indices(nx, ny)
    design = np.column_stack([ij, np.ones(len(ij))])
    coef = np.linalg.lstsq(design, np.asarray(positions, dtype=float), rcond=None)[0]
    return coef[:2].T


def ours(planes: Sequence[np.ndarray], nx: int, ny: int, overlap: float, *, use_gpu: bool = False) -> ToolResult:
    """Measure every slice's pairs and fit one pooled matrix (linumpy-motor, in memory)."""
    h, w = planes[0].shape[0] // nx, planes[0].shape[1] // ny
    pairs = {}
    for sid, plane in enumerate(planes):
        pairs[sid], _, _ = measure_grid_pairs(band_reader(plane, h), (h, w), nx, ny, overlap,
                                              MeasureOptions(use_gpu=use_gpu))
    model, _ = fit_pooled(pairs, {sid: (nx, ny) for sid in pairs}, (1, h, w), overlap)
    return ToolResult(model.matrix)


def m2stitch(plane: np.ndarray, nx: int, ny: int, overlap: float, *, ncc_threshold: float = 0.5) -> ToolResult:
    """m2stitch (MIST) on one slice; A is the least-squares fit of its positions to the tile indices.

    ``overlap`` is not used: MIST estimates the overlap itself.
    """
    import m2stitch as m2s

    rows, cols = np.divmod(np.arange(nx * ny), ny)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result, _ = m2s.stitch_images(tiles_of(plane, nx, ny), rows=rows, cols=cols,
                                          row_col_transpose=False, ncc_threshold=ncc_threshold)
    except Exception as exc:  # AssertionError "no good top pair", numerical failures...
        return ToolResult(None, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:80])
    result = result.sort_index()
    positions = result[["y_pos", "x_pos"]].to_numpy(dtype=float)
    return ToolResult(fit_grid_transform(positions, nx, ny), positions)


def _import_ashlar_reg() -> types.ModuleType:
    """Import ``ashlar.reg`` without starting a JVM.

    ``ashlar.reg`` starts Java for its Bio-Formats readers at import time; the edge aligner used
    here never touches them, so stand-ins for ``jnius``/``jnius_config`` are installed first. The
    benchmark then does not depend on a Java runtime.
    """
    if "ashlar.reg" not in sys.modules and "jnius" not in sys.modules:
        class _Inert:
            def __getattr__(self, name: str) -> Callable[..., _Inert]:
                return lambda *args, **kwargs: self

        config = types.ModuleType("jnius_config")
        config.vm_running = True
        jnius = types.ModuleType("jnius")
        jnius.autoclass = lambda name: _Inert()
        sys.modules.update(jnius_config=config, jnius=jnius)
    import ashlar.reg

    return ashlar.reg


def _ashlar_reader(plane: np.ndarray, nx: int, ny: int, overlap: float):
    """An in-memory ASHLAR reader: nominal stage grid positions, 1 µm pixels, one channel.

    The nominal steps are rounded to whole pixels: ASHLAR 1.20 misplaces tiles when stage positions
    fall between pixels (non-square 128x192 tiles at 20 % overlap, steps 102.4 x 153.6 px: its step
    along X came out 0.46 px short; 125x190 tiles, whole-pixel steps: 0.1 px).
    """
    reg = _import_ashlar_reg()
    tiles = tiles_of(plane, nx, ny)
    h, w = tiles.shape[1:]
    steps = np.round(np.array([(1 - overlap) * h, (1 - overlap) * w]))

    class GridMetadata(reg.Metadata):
        _num_images = nx * ny
        num_channels = 1
        pixel_size = 1.0
        pixel_dtype = tiles.dtype

        def tile_position(self, i):
            return np.array(divmod(i, ny)) * steps

        def tile_size(self, i):
            return np.array([h, w])

    class GridReader(reg.Reader):
        metadata = GridMetadata()

        def read(self, series, c):
            return tiles[series]

    return GridReader(), steps


def ashlar(plane: np.ndarray, nx: int, ny: int, overlap: float, *, filter_sigma: float = 0.0) -> ToolResult:
    """ASHLAR's EdgeAligner on one slice; A is its linear model ``lr.coef_`` times the nominal steps.

    ASHLAR fits positions against stage positions by linear regression over its largest connected
    component (and falls back to the stage grid when too few edges pass its error threshold).
    """
    reg = _import_ashlar_reg()
    reader, steps = _ashlar_reader(plane, nx, ny, overlap)
    aligner = reg.EdgeAligner(reader, channel=0, filter_sigma=filter_sigma, do_make_thumbnail=False)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            aligner.run()
    except Exception as exc:
        return ToolResult(None, error=f"{type(exc).__name__}: {exc}".splitlines()[0][:80])
    kept = sum(np.isfinite(error) for _, error in aligner._cache.values())
    fallback = bool(np.array_equal(aligner.lr.coef_, np.eye(2)))
    note = f"{kept}/{len(aligner._cache)} edges kept" + ("; fell back to the stage grid" if fallback else "")
    return ToolResult(np.asarray(aligner.lr.coef_) @ np.diag(steps), np.asarray(aligner.positions, dtype=float),
                      note=note)


def available() -> dict[str, str | None]:
    """Installed version of each peer (None when it cannot be imported)."""
    found: dict[str, str | None] = {}
    for name, load in (("m2stitch", lambda: __import__("m2stitch")), ("ashlar", _import_ashlar_reg)):
        try:
            load()
            found[name] = importlib.metadata.version(name)
        except Exception:
            found[name] = None
    return found
