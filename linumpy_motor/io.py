"""Reading mosaic grids (OME-Zarr, NGFF 0.4 and 0.5), finding datasets, and writing atomically."""

from __future__ import annotations

import csv
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
import zarr

from .errors import InputError

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
    """The first ``multiscales`` entry of an image's root attributes (NGFF 0.4 or 0.5) and its version."""
    ome = attrs.get("ome")
    if isinstance(ome, dict) and "multiscales" in ome:
        return ome["multiscales"][0], str(ome.get("version", "0.5"))
    if "multiscales" in attrs:
        entry = attrs["multiscales"][0]
        return entry, str(entry.get("version", "0.4"))
    raise InputError(path, "not an OME-Zarr image (no 'multiscales' metadata)")


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


def level0_scale(entry: dict) -> tuple[float, float, float]:
    """Level 0's (z, y, x) pixel size (z = 1 for a 2-D image)."""
    for transform in entry["datasets"][0].get("coordinateTransformations", []):
        if transform.get("type") == "scale":
            return tuple(float(s) for s in ([1.0, 1.0, 1.0] + list(transform["scale"]))[-3:])
    return (1.0, 1.0, 1.0)


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
        Missing path, not an OME-Zarr, not 2-D or 3-D, an unsupported dtype, or a shape that is not
        a whole number of tiles.

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
    except Exception as exc:
        raise InputError(path, f"not a zarr store ({type(exc).__name__})") from None
    attrs = group.attrs.asdict()
    entry, version = multiscale_entry(attrs, path)
    try:
        level0 = entry["datasets"][0]["path"]
    except (KeyError, IndexError, TypeError):
        raise InputError(path, "malformed 'multiscales' metadata (no level-0 dataset path)") from None
    try:
        array = group[level0]
    except KeyError:
        raise InputError(path, f"level 0 array '{level0}' is missing") from None
    except Exception as exc:  # e.g. its zarr.json / .zarray is truncated
        raise InputError(path, f"level 0 array '{level0}' cannot be opened ({type(exc).__name__})") from None
    if array.ndim == 2:
        array = PlaneAsVolume(array)
    if array.ndim != 3:
        raise InputError(path, f"expected a 3-D (z, y, x) or 2-D (y, x) array, got shape {array.shape}")
    if array.dtype.name not in SUPPORTED_DTYPES:
        raise InputError(path, f"unsupported dtype {array.dtype}")
    if array.dtype.kind == "c":
        _complex_notice(path, array.dtype.name)
    nz, height, width = array.shape
    raw = attrs.get("tile_shape") or (attrs.get("ome") or {}).get("tile_shape")
    tile_h, tile_w = (int(raw[-2]), int(raw[-1])) if raw else (int(array.chunks[1]), int(array.chunks[2]))
    if tile_h <= 0 or tile_w <= 0 or height % tile_h or width % tile_w:
        raise InputError(path, f"shape {array.shape} is not a whole number of {tile_h}x{tile_w} tiles")
    units = tuple(axis.get("unit") for axis in ([{}, {}, {}] + list(entry.get("axes", [])))[-3:])
    return MosaicGrid(
        path=path, array=array, tile_shape=(nz, tile_h, tile_w), nx=height // tile_h, ny=width // tile_w,
        ngff_version=version, scale=level0_scale(entry), units=units,
    )


def as_float(block: np.ndarray) -> np.ndarray:
    """Magnitude of complex data, float32 for everything."""
    if np.iscomplexobj(block):
        block = np.abs(block)
    return np.asarray(block, dtype=np.float32)


def read_block(grid: MosaicGrid, z, rows: slice, cols: slice) -> np.ndarray:
    """Read ``array[z, rows, cols]`` as float32, with a clear error for corrupt or non-finite data."""
    try:
        block = as_float(grid.array[z, rows, cols])
    except Exception as exc:
        raise InputError(grid.path, f"cannot read data ({type(exc).__name__}: {exc})") from None
    if not np.isfinite(block).all():
        raise InputError(grid.path, "data contains NaN or Inf")
    return block


def central_plane_index(nz: int) -> int:
    """Index of the central Z plane."""
    return nz // 2


def slice_id_from_name(path: str | Path) -> int:
    """Slice id in a file or store name: the number after ``z`` (``mosaic_grid_3d_z07.ome.zarr`` and
    ``slice_z07_stitch_3d.ome.zarr`` -> 7), else the last number (``slice_5.ome.zarr`` -> 5)."""
    path = Path(path)
    name = path.name.removesuffix(".ome.zarr")
    numbers = re.findall(r"z(\d+)", name) or re.findall(r"\d+", name)
    if not numbers:
        raise InputError(path, "no slice number in the name")
    return int(numbers[-1])


def discover_slices(source: str | Path) -> list[tuple[int, Path]]:
    """List a dataset's slices as ``(slice_id, path)``, sorted by slice id.

    Parameters
    ----------
    source : str or Path
        A folder of ``*.ome.zarr`` stores, or a CSV samplesheet with columns ``slice_id,path``
        (relative paths are taken from the CSV's folder).
    """
    source = Path(source)
    if not source.exists():
        raise InputError(source, "no such file or directory")
    if source.is_file():
        entries = _read_samplesheet(source)
    else:
        if source.name.endswith(".ome.zarr"):
            raise InputError(source, "is a single slice; give the folder that holds the slices")
        entries = [(slice_id_from_name(p), p) for p in sorted(source.glob("*.ome.zarr"))]
        if not entries:
            raise InputError(source, "no *.ome.zarr slices in this folder")
    ids = [i for i, _ in entries]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise InputError(source, f"slice id(s) {duplicates} appear more than once")
    return sorted(entries)


def _read_samplesheet(path: Path) -> list[tuple[int, Path]]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"slice_id", "path"} <= set(reader.fieldnames):
            raise InputError(path, "samplesheet needs the columns 'slice_id,path'")
        entries = []
        for line, row in enumerate(reader, start=2):
            try:
                slice_id = int(row["slice_id"])
            except (TypeError, ValueError):
                raise InputError(path, f"line {line}: slice_id {row['slice_id']!r} is not an integer") from None
            store = Path(row["path"] or "")
            entries.append((slice_id, store if store.is_absolute() else path.parent / store))
    if not entries:
        raise InputError(path, "samplesheet lists no slices")
    return entries


def temporary_sibling(path: Path) -> Path:
    """A temporary name in the same folder as ``path`` (so the final rename is atomic)."""
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


def remove_path(path: Path) -> None:
    """Remove a file, link or folder tree if it exists."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


@contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary sibling of ``path`` to write into; rename it to ``path`` on success.

    On any exception the temporary output is removed and ``path`` is left as it was; a ``path``
    whose folder does not exist is an :class:`InputError` before anything is written.
    An existing ``path`` (file or store) is replaced only once the new one is complete; a store
    is swapped in two renames (old store aside as ``.name.old-PID``, then the new one into place),
    so a process killed between them leaves ``path`` absent, never half-written.
    """
    path = Path(path)
    if not path.parent.is_dir():
        raise InputError(path, "cannot be written: its folder does not exist")
    tmp = temporary_sibling(path)
    remove_path(tmp)
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            path.rename(old)
            try:
                tmp.rename(path)
            except BaseException:
                old.rename(path)
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):  # never mask the error; a leftover is removed by the next run
            remove_path(tmp)
        raise


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (sorted keys, so identical inputs give identical bytes)."""
    with atomic_output(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
