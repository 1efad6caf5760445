"""Stitched-slice thumbnails for the report: read the smallest pyramid level, plan its figure with its tile seams."""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np
import zarr

from linumpy_motor.errors import InputError
from linumpy_motor.io.grid import as_float, dataset_paths, level0_scale, multiscale_entry
from linumpy_motor.io.schemas import PairsFile
from linumpy_motor.qc.figures import FigureJob
from linumpy_motor.qc.outlines import tile_outlines
from linumpy_motor.register.geometry import model_span

__all__ = ["THUMBNAIL_PX", "Stitched", "Thumbnail", "inspect_stitched", "read_thumbnail", "thumbnail_figure"]

THUMBNAIL_PX = 1024
"""Longest side of a stitched-slice thumbnail read from its smallest pyramid level."""
UM_PER_UNIT = {"meter": 1e6, "millimeter": 1e3, "micrometer": 1.0, "nanometer": 1e-3}
"""Micrometres per NGFF axis unit (upstream writes millimetres)."""


class Thumbnail(NamedTuple):
    """A stitched slice's preview: ``plane`` covers ``extent_hw`` level-0 pixels; ``metadata`` is the
    store's ``linumpy_motor`` root attribute (``transform``, ``grid``, ``tile_shape``...; ``{}`` if absent);
    ``pixel_um`` the level-0 pixel size along x in µm (NGFF scale and unit; None when the unit is no length)."""

    plane: np.ndarray
    extent_hw: tuple[float, float]
    metadata: dict
    pixel_um: float | None = None


def read_thumbnail(path: str | Path, max_px: int = THUMBNAIL_PX) -> Thumbnail:
    """Central Z plane of the smallest pyramid level of an OME-Zarr image, at most ``max_px`` a side.

    Returns
    -------
    Thumbnail
        The plane (2-D float32, magnitude for complex data), the height and width it covers in
        level-0 pixels, and the stitch metadata of the store.

    Raises
    ------
    InputError
        Missing store, not a zarr group, no multiscales metadata, a missing level, or not a 3-D image.
    """
    path = Path(path)
    if not path.is_dir():
        raise InputError(path, "no such OME-Zarr store")
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception as exc:  # zarr raises various types for a folder that is no zarr group
        raise InputError(path, f"not a zarr store ({type(exc).__name__})") from None
    attrs = group.attrs.asdict()
    entry, _ = multiscale_entry(attrs, path)
    try:
        found = [group[name] for name in dataset_paths(entry, path)]
    except KeyError as exc:
        raise InputError(path, f"incomplete multiscale image (KeyError: {exc})") from None
    levels = [level for level in found if isinstance(level, zarr.Array) and level.ndim == 3]
    if len(levels) != len(found):
        raise InputError(path, "expected 3-D (z, y, x) levels")
    smallest = min(levels, key=lambda level: math.prod(level.shape))
    nz, height, width = smallest.shape
    step = max(1, math.ceil(max(height, width) / max_px))
    plane = as_float(smallest[nz // 2, ::step, ::step])
    level0 = levels[0].shape
    extent = (plane.shape[0] * step * level0[1] / height, plane.shape[1] * step * level0[2] / width)
    metadata = attrs.get("linumpy_motor")
    units = [axis.get("unit") for axis in entry.get("axes", [])]
    factor = UM_PER_UNIT.get(units[-1]) if units else None
    pixel_um = None if factor is None else level0_scale(entry, path)[-1] * factor
    return Thumbnail(plane, extent, metadata if isinstance(metadata, dict) else {}, pixel_um)


class Stitched(NamedTuple):
    """What a report knows of a slice's stitched store: its thumbnail (None when unreadable), why it cannot
    be trusted (None when it can), and the tile outlines to draw over it (canvas px, None when unknown)."""

    thumbnail: Thumbnail | None
    problem: str | None
    outlines: np.ndarray | None = None


def inspect_stitched(store: Path | None, pairs_file: PairsFile | None, A: np.ndarray) -> Stitched:
    """Read a stitched slice's thumbnail and check its layout against the report's motor model.

    Seams follow the layout the store records (its transform, grid and tile shape), else the
    slice's pairs file placed with ``A``; a store stitched with another matrix than ``A`` is a problem,
    as is a missing or unreadable store (reported, never raised).
    """
    if store is None:
        return Stitched(None, "no stitched slice")
    try:
        thumb = read_thumbnail(store)
    except Exception as exc:  # any unreadable store is reported on the page, not raised
        return Stitched(None, f"stitched slice unreadable: {exc}")
    meta, problem, outlines = thumb.metadata, None, None
    try:
        if {"transform", "grid", "tile_shape"} <= set(meta):
            stitched_A = np.asarray(meta["transform"], dtype=float).reshape(2, 2)
            nx, ny = (int(n) for n in meta["grid"])
            tile_hw = tuple(int(n) for n in meta["tile_shape"][-2:])
            if not _layout_fits(nx, ny, tile_hw, stitched_A, thumb.extent_hw):
                raise ValueError("layout does not match the image")
            placed = np.asarray(meta.get("positions", []), dtype=float)  # per-tile placement, when recorded
            outlines = tile_outlines(nx, ny, tile_hw, stitched_A, placed if placed.shape == (nx * ny, 2) else None)
            if not np.allclose(stitched_A, A, rtol=0, atol=1e-6):
                problem = "stitched with another motor model than this report's motor_transform.json"
    except (TypeError, ValueError):
        problem = "stitched slice has unreadable layout metadata"
    if outlines is None and pairs_file is not None:
        outlines = tile_outlines(*pairs_file.grid, pairs_file.tile_shape[1:], A)
    return Stitched(thumb, problem, outlines)


def thumbnail_figure(folder: Path, slice_id: int, thumb: Thumbnail, outlines: np.ndarray | None) -> FigureJob:
    """The figure of a stitched slice's thumbnail with the corners of its tile ``outlines``, to be drawn into
    ``folder``."""
    return FigureJob(folder / f"thumbnail_z{slice_id:02d}.png", "plot_thumbnail",
                     dict(slice_id=slice_id, plane=thumb.plane, extent_hw=thumb.extent_hw, outlines=outlines))


def _layout_fits(nx: int, ny: int, tile_hw: tuple[int, ...], A: np.ndarray, extent_hw: tuple[float, float]) -> bool:
    """Whether a claimed tile layout spans the stitched image it describes (checked from the grid's
    corners, before any per-tile array is made: metadata may claim any grid)."""
    if nx < 1 or ny < 1 or len(tile_hw) != 2 or min(tile_hw) < 1 or not np.isfinite(A).all():
        return False
    span = model_span(nx, ny, tile_hw, A)
    return bool(np.all(np.abs(span - np.asarray(extent_hw)) <= np.maximum(4.0, 0.05 * np.asarray(extent_hw))))
