"""Reading mosaic grids: level 0 of an OME-Zarr (NGFF 0.4 and 0.5) holding tiles side by side."""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import numpy.typing as npt
import zarr
from zarr.core.buffer.cpu import NDBuffer

from linumpy_motor import memory
from linumpy_motor.errors import InputError
from linumpy_motor.io.ngff import NGFF_VERSIONS
from linumpy_motor.io.outputs import ZARR_METADATA

__all__ = ["MIN_STORED_FRACTION", "SPARSE_GRID_TILES", "SUPPORTED_DTYPES", "MosaicGrid", "PlaneAsVolume", "as_float",
           "central_plane_index", "dataset_paths", "finite_float", "level0_scale", "multiscale_entry", "open_mosaic",
           "read_block"]

logger = logging.getLogger(__name__)
SUPPORTED_DTYPES = ("uint8", "uint16", "int16", "int32", "float32", "float64", "complex64", "complex128")


@dataclass(frozen=True)
class MosaicGrid:
    """An opened mosaic grid: level 0 of an OME-Zarr holding tiles side by side.

    Attributes
    ----------
    path : Path
        The ``*.ome.zarr`` store.
    array : zarr.Array or PlaneAsVolume
        Level 0, shape ``(Z, nx * tile_h, ny * tile_w)``; a 2-D ``(Y, X)`` grid (upstream's AIP
        ``mosaic_grid_zNN_aip.ome.zarr``) is seen as one plane, ``Z = 1``.
    tile_shape : tuple of int
        ``(Z, tile_h, tile_w)``.
    nx, ny : int
        Number of tile rows and tile columns.
    ngff_version : str
        ``"0.4"`` or ``"0.5"``.
    scale : tuple of float
        Physical pixel size (z, y, x) of level 0.
    units : tuple of str or None
        Units of the (z, y, x) axes.
    """

    path: Path
    array: zarr.Array | PlaneAsVolume
    tile_shape: tuple[int, int, int]
    nx: int
    ny: int
    ngff_version: str
    scale: tuple[float, float, float]
    units: tuple[str | None, str | None, str | None]


def multiscale_entry(attrs: dict, path: Path) -> tuple[dict, str]:
    """The first ``multiscales`` entry of an image's root attributes (NGFF 0.4 or 0.5) and its version.

    Raises
    ------
    InputError
        No ``multiscales``, not a non-empty list of objects, or an NGFF version other than 0.4 / 0.5.
    """
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        entries, version = ome["multiscales"], ome.get("version", "0.5")
    elif "multiscales" in attrs:
        entries = attrs["multiscales"]
        first = entries[0] if isinstance(entries, list) and entries and isinstance(entries[0], dict) else {}
        version = first.get("version", "0.4")
    else:
        raise InputError(path, "not an OME-Zarr image (no 'multiscales' metadata)")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise InputError(path, "malformed 'multiscales' metadata (expected a non-empty list of objects)")
    if str(version) not in NGFF_VERSIONS:  # what this program reads is what it writes
        raise InputError(path, f"unsupported NGFF version {version!r} (this program reads 0.4 and 0.5)")
    return entries[0], str(version)


def dataset_paths(entry: dict, path: Path) -> list[str]:
    """The array paths of a multiscales entry's levels, level 0 first."""
    datasets = entry.get("datasets")
    if (not isinstance(datasets, list) or not datasets
            or not all(isinstance(d, dict) and isinstance(d.get("path"), str) for d in datasets)):
        raise InputError(path, "malformed 'multiscales' metadata (no level-0 dataset path)")
    return [d["path"] for d in datasets]


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)


def level0_scale(entry: dict, path: Path) -> tuple[float, float, float]:
    """Level 0's (z, y, x) pixel size (z = 1 for a 2-D image).

    Raises
    ------
    InputError
        Malformed ``coordinateTransformations`` or scale.
    """
    transforms = entry["datasets"][0].get("coordinateTransformations", [])
    if not isinstance(transforms, list) or not all(isinstance(t, dict) for t in transforms):
        raise InputError(path, f"malformed coordinateTransformations {transforms!r} of level 0 (expected a list)")
    for transform in transforms:
        if transform.get("type") == "scale":
            scale = transform.get("scale")
            if not (isinstance(scale, list) and len(scale) >= 2 and all(_is_number(s) and s > 0 for s in scale)):
                raise InputError(path, f"malformed level-0 scale {scale!r} (expected a list of positive numbers)")
            z, y, x = (float(s) for s in ([1.0] + scale)[-3:])
            return (z, y, x)
    return (1.0, 1.0, 1.0)


def _axis_units(entry: dict, path: Path) -> tuple[str | None, str | None, str | None]:
    axes = entry.get("axes")
    if axes is None:
        return (None, None, None)
    if not isinstance(axes, list) or len(axes) < 2 or not all(isinstance(a, dict) for a in axes):
        raise InputError(path, f"malformed axes {axes!r} (expected a list of objects, NGFF 0.4 or 0.5)")
    padded: list[dict] = [{}] + axes
    units = tuple(axis.get("unit") for axis in padded[-3:])
    if not all(unit is None or isinstance(unit, str) for unit in units):
        raise InputError(path, f"malformed axis units {list(units)!r}")
    unit_z, unit_y, unit_x = units
    return (unit_z, unit_y, unit_x)


def _tile_hw(attrs: dict, array: zarr.Array | PlaneAsVolume, path: Path) -> tuple[int, int]:
    """Tile height and width: the ``tile_shape`` attribute (upstream's NGFF 0.4 stores), else the chunks."""
    ome = attrs.get("ome")
    raw = attrs.get("tile_shape", ome.get("tile_shape") if isinstance(ome, dict) else None)
    if raw is None:
        return int(array.chunks[1]), int(array.chunks[2])
    if not (isinstance(raw, list) and len(raw) >= 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                            for v in raw)):
        raise InputError(path, f"malformed tile_shape attribute {raw!r} (expected [z, h, w] integers)")
    return raw[-2], raw[-1]


class PlaneAsVolume:
    """A 2-D ``(Y, X)`` array seen as a ``(1, Y, X)`` volume (indexing, ``shape``, ``chunks``, ``dtype``)."""

    ndim = 3

    def __init__(self, plane) -> None:
        self.plane = plane
        self.shape = (1, *plane.shape)
        self.chunks = (1, *plane.chunks)
        self.dtype = plane.dtype

    def __getitem__(self, key: tuple):
        z, rows, cols = key
        if isinstance(z, slice):
            if len(range(*z.indices(1))) != 1:
                raise IndexError(f"a 2-D mosaic grid has one plane; asked for planes {z}")
            return self.plane[rows, cols][None]
        if z not in (0, -1):
            raise IndexError(f"a 2-D mosaic grid has one plane; asked for plane {z}")
        return self.plane[rows, cols]


SPARSE_GRID_TILES = 1000
"""A grid of at least this many tiles is checked for missing data (:data:`MIN_STORED_FRACTION`)."""
MIN_STORED_FRACTION = 0.01
"""A large grid whose level 0 stores less than this fraction of its chunk (or shard) files is refused: its
declared shape, not its data, would set the work (and its missing chunks would read as background)."""


def _check_not_mostly_missing(path: Path, level0: str, array: zarr.Array | PlaneAsVolume, nx: int, ny: int) -> None:
    """Refuse a grid of :data:`SPARSE_GRID_TILES` tiles or more that stores under :data:`MIN_STORED_FRACTION` of
    its level-0 chunk (or shard) files, e.g. a 4000x4000 grid declared over a dozen real tiles."""
    if nx * ny < SPARSE_GRID_TILES:
        return
    stored_array = array.plane if isinstance(array, PlaneAsVolume) else array
    unit = getattr(stored_array, "shards", None) or stored_array.chunks
    shape = stored_array.shape
    expected = math.prod(-(-size // step) for size, step in zip(shape, unit))
    stored = sum(name not in ZARR_METADATA for _, _, names in os.walk(path / level0) for name in names)
    if stored < MIN_STORED_FRACTION * expected:
        raise InputError(path, f"declares a grid of {nx}x{ny} tiles, but only {stored} of the {expected} chunk "
                               f"files of level 0 hold data: is the array's shape right?")


@cache
def _complex_notice(path: Path, dtype: str) -> None:
    logger.info("%s: %s data, measured and stitched as its magnitude (float32)", path, dtype)


def open_mosaic(path: str | Path) -> MosaicGrid:
    """Open a mosaic grid and check it against the data contract.

    Parameters
    ----------
    path : str or Path
        A ``*.ome.zarr`` store, NGFF 0.4 (zarr v2) or 0.5 (zarr v3, sharded or not).

    Returns
    -------
    MosaicGrid

    Raises
    ------
    InputError
        Missing path, not an OME-Zarr, malformed or unsupported metadata, not 2-D or 3-D, an
        unsupported dtype, or a shape that is not a whole number of tiles.

    Notes
    -----
    A 2-D ``(Y, X)`` grid is opened as one plane (``Z = 1``); complex data are read as their
    magnitude, said once per store in the log.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    if not path.is_dir():
        raise InputError(path, "not an OME-Zarr store (not a directory)")
    try:
        group = zarr.open_group(str(path), mode="r")
        attrs = group.attrs.asdict()
    except Exception as exc:
        if memory.is_out_of_memory(exc):  # zarr's I/O thread could not start: not the store's fault
            raise memory.out_of_memory(None, path, exc) from None
        raise InputError(path, f"not a zarr store ({type(exc).__name__})") from None
    entry, version = multiscale_entry(attrs, path)
    level0 = dataset_paths(entry, path)[0]
    try:
        opened = group[level0]
    except KeyError:
        raise InputError(path, f"level 0 array '{level0}' is missing") from None
    except Exception as exc:  # e.g. its zarr.json / .zarray is truncated
        raise InputError(path, f"level 0 array '{level0}' cannot be opened ({type(exc).__name__})") from None
    array: zarr.Array | zarr.Group | PlaneAsVolume = opened
    if isinstance(opened, zarr.Array) and opened.ndim == 2:
        array = PlaneAsVolume(opened)
    if not isinstance(array, zarr.Array | PlaneAsVolume) or array.ndim != 3:
        raise InputError(path, "expected a 3-D (z, y, x) or 2-D (y, x) array, "
                               f"got shape {getattr(array, 'shape', None)}")
    if array.dtype.name not in SUPPORTED_DTYPES:
        raise InputError(path, f"unsupported dtype {array.dtype}")
    if array.dtype.kind == "c":
        _complex_notice(path, array.dtype.name)
    nz, height, width = array.shape
    tile_h, tile_w = _tile_hw(attrs, array, path)
    if tile_h <= 0 or tile_w <= 0 or height % tile_h or width % tile_w:
        raise InputError(path, f"shape {array.shape} is not a whole number of {tile_h}x{tile_w} tiles")
    _check_not_mostly_missing(path, level0, array, height // tile_h, width // tile_w)
    return MosaicGrid(
        path=path, array=array, tile_shape=(nz, tile_h, tile_w), nx=height // tile_h, ny=width // tile_w,
        ngff_version=version, scale=level0_scale(entry, path), units=_axis_units(entry, path),
    )


def as_float(block: npt.ArrayLike) -> np.ndarray:
    """Magnitude of complex data, float32 for everything."""
    if np.iscomplexobj(block):
        block = np.abs(block)
    return np.asarray(block, dtype=np.float32)


def finite_float(block: npt.ArrayLike, source: str | Path | None) -> np.ndarray:
    """A block as float32 (:func:`as_float`), refused when it holds NaN or Inf.

    Every read of tile data goes through it: one NaN pixel would turn every pair of its batch into
    garbage (the phase correlation's whitening normalises by the batch-wide maximum).

    Raises
    ------
    InputError
        Naming ``source`` (a store, or None for an array given in memory).
    """
    block = as_float(block)
    if not np.isfinite(block).all():
        raise InputError(source, "data contains NaN or Inf")
    return block


def read_block(grid: MosaicGrid, z, rows: slice, cols: slice, out: np.ndarray | None = None) -> np.ndarray:
    """Read ``array[z, rows, cols]`` as float32, with a clear error for corrupt or non-finite data.

    With ``out`` (float32, the block's shape, a view allowed) the block is written there and ``out``
    returned; a float32 store decodes straight into it, sparing the copy zarr would otherwise fill
    and hand back.
    """
    array = grid.array
    try:
        if out is not None and isinstance(array, zarr.Array) and array.dtype == np.float32:
            array.get_basic_selection((z, rows, cols), out=NDBuffer.from_numpy_array(out))
            return finite_float(out, grid.path)
        block = array[z, rows, cols]
    except MemoryError:  # not the data's fault: said as such by the step (linumpy_motor.memory.out_of_memory)
        raise
    except InputError:  # non-finite data, said as such
        raise
    except Exception as exc:
        raise InputError(grid.path, f"cannot read data ({type(exc).__name__}: {exc})") from None
    block = finite_float(np.asarray(block), grid.path)
    if out is None:
        return block
    out[...] = block
    return out


def central_plane_index(nz: int) -> int:
    """Index of the central Z plane."""
    return nz // 2
