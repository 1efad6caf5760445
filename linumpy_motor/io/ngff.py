"""Writing OME-Zarr images: NGFF 0.4 (zarr v2) and NGFF 0.5 (zarr v3, sharded)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import zarr

from linumpy_motor.errors import check_choice

__all__ = ["AXES", "DEFAULT_NGFF_VERSION", "NGFF_VERSIONS", "NgffVersion", "check_version", "create_group",
           "create_level", "multiscales", "root_attributes", "write_image"]

AXES = ("z", "y", "x")
NgffVersion = Literal["0.4", "0.5"]
"""The NGFF versions this program reads and writes: 0.4 (zarr v2), 0.5 (zarr v3)."""
NGFF_VERSIONS: tuple[NgffVersion, ...] = get_args(NgffVersion)
DEFAULT_NGFF_VERSION: NgffVersion = "0.5"
"""The version written when none is asked for."""


def multiscales(
    level_scales: Sequence[Sequence[float]],
    units: Sequence[str | None],
    version: str,
    name: str = "image",
) -> dict:
    """Build the ``multiscales`` list entry for a (z, y, x) image.

    Parameters
    ----------
    level_scales : sequence of (sz, sy, sx)
        Physical pixel size of each level, level 0 first; level ``k`` is stored at path ``"k"``.
    units : sequence of str or None
        Unit of each axis (e.g. ``"millimeter"``), ``None`` to leave it out.
    version : {"0.4", "0.5"}
        NGFF version; 0.4 carries the version inside the entry, 0.5 beside it.
    name : str
        Image name.
    """
    axes = []
    for axis, unit in zip(AXES, units, strict=True):
        entry: dict[str, Any] = {"name": axis, "type": "space"}
        if unit:
            entry["unit"] = unit
        axes.append(entry)
    datasets = [
        {"path": str(k), "coordinateTransformations": [{"type": "scale", "scale": [float(s) for s in scale]}]}
        for k, scale in enumerate(level_scales)
    ]
    entry = {"name": name, "axes": axes, "datasets": datasets}
    if version == "0.4":
        entry["version"] = "0.4"
    return entry


def root_attributes(multiscale: dict, version: str, extra: dict | None = None) -> dict:
    """Root group attributes for an image with one ``multiscales`` entry (plus ``extra`` keys)."""
    extra = dict(extra or {})
    if version == "0.4":
        return {"multiscales": [multiscale], **extra}
    return {"ome": {"version": "0.5", "multiscales": [multiscale]}, **extra}


def check_version(version: str) -> None:
    """Refuse an NGFF version this program cannot write (:class:`~linumpy_motor.errors.InputError`)."""
    check_choice("NGFF version", version, NGFF_VERSIONS)


def create_group(path: str | Path, version: str) -> zarr.Group:
    """Create an empty zarr group for an NGFF image (v2 for 0.4, v3 for 0.5)."""
    check_version(version)
    return zarr.open_group(str(path), mode="w", zarr_format=2 if version == "0.4" else 3)


def create_level(
    group: zarr.Group,
    name: str,
    shape: Sequence[int],
    dtype,
    chunks: Sequence[int],
    *,
    shards: Sequence[int] | None = None,
) -> zarr.Array:
    """Create one resolution level; ``shards`` applies to zarr v3 stores only.

    Zarr v2 (NGFF 0.4) levels use ``/`` chunk keys (``dimension_separator: "/"``), as NGFF 0.4 requires.
    """
    kwargs: dict = {}
    if group.metadata.zarr_format == 3:
        kwargs["dimension_names"] = AXES
        if shards is not None:
            kwargs["shards"] = tuple(int(s) for s in shards)
    else:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    return group.create_array(
        name, shape=tuple(int(s) for s in shape), chunks=tuple(int(c) for c in chunks),
        dtype=np.dtype(dtype), fill_value=0, **kwargs,
    )


def write_image(
    path: str | Path,
    volume: np.ndarray,
    *,
    chunks: Sequence[int],
    version: str = DEFAULT_NGFF_VERSION,
    shards: Sequence[int] | None = None,
    scale: Sequence[float] = (1.0, 1.0, 1.0),
    units: Sequence[str | None] = ("millimeter",) * 3,
    extra_attrs: dict | None = None,
) -> None:
    """Write a single-level (z, y, x) image held in memory (small data: tests, synthetic grids)."""
    group = create_group(path, version)
    create_level(group, "0", volume.shape, volume.dtype, chunks, shards=shards)[...] = volume
    group.attrs.update(root_attributes(multiscales([scale], units, version), version, extra_attrs))
