"""Flat-field (vignetting) correction: estimate from a slice's own tissue tiles, or load a known one.

OCT tiles are darker towards their edges. Every tile of a slice shares that multiplicative profile,
so the per-pixel median over many tissue tiles, each divided by its own level, is the profile times
the median scene, and the scene averages out over tiles. The estimate is then made smooth by a
weighted least-squares fit of a low-degree 2-D Legendre polynomial (no edge bias, unlike a Gaussian
blur of a field that still slopes at the tile border). Background is near 0 in OCT, so no dark
field is estimated.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.polynomial import legendre

from linumpy_motor.errors import InputError
from linumpy_motor.io.grid import MosaicGrid, central_plane_index, read_block
from linumpy_motor.io.outputs import atomic_output
from linumpy_motor.io.schemas import is_npy

__all__ = ["BIN_PX", "DEEP_CHUNK_MIN_TILES", "DEFAULT_FLATFIELD", "DEGREE", "ESTIMATE_FAILED", "FLATFIELD_FILE",
           "FLATFIELD_MODES",
           "MAX_NEGATIVE_FRACTION", "MAX_TILES", "MIN_TISSUE_TILES", "READ_THREADS", "SEED", "TISSUE_LEVEL",
           "FLATFIELD_NOTE", "choose_flatfield", "describe_flatfield_file",
           "estimate_flatfield", "flatfield_file", "flatfield_from_tiles", "load_flatfield", "resolve_flatfield",
           "slice_flatfield", "write_flatfield"]

logger = logging.getLogger(__name__)

FLATFIELD_MODES = ("estimate", "none")
DEFAULT_FLATFIELD = "estimate"  # the library's default flat-field option
ESTIMATE_FAILED = "estimate (too few tissue tiles, or values below zero: none applied)"
"""How a slice is described when the estimate was asked for but none could be made."""
MAX_NEGATIVE_FRACTION = 0.01
"""Tiles with more of their (binned) values below zero hold dB or offset data: a flat field, a gain, is not
estimated for them (the measurement maps every value range to [0, 1] first and estimates it there)."""
READ_THREADS = 4  # tiles read at once (one tile, n_planes planes each)
MAX_TILES = 64  # tiles read at most when a read decodes only the planes it uses
DEEP_CHUNK_MIN_TILES = 12  # ... and at least this many when each read decodes a whole deep chunk
BIN_PX = 4  # default binning of each tile before the median
DEGREE = 2  # default total degree of the fitted Legendre polynomial
TISSUE_LEVEL = 0.1  # default tissue level, a fraction of the 95th percentile
MIN_TISSUE_TILES = 3  # default fewest tissue tiles an estimate is made from
SEED = 0  # default seed of the subset of tiles read
FLATFIELD_FILE = "flatfield.npy"
"""The file of a slice's flat-field output folder (:func:`write_flatfield`), a ``.npy`` ``--flatfield`` accepts."""
FLATFIELD_NOTE = "flatfield.json"
"""Beside it: what the flat field is (``{"flatfield": DESCRIPTION}``, see :func:`describe_flatfield_file`)."""


def _bin(image: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor x factor`` blocks (the trailing partial block is dropped)."""
    h, w = (image.shape[0] // factor) * factor, (image.shape[1] // factor) * factor
    return image[:h, :w].reshape(h // factor, factor, w // factor, factor).mean(axis=(1, 3))


def _legendre_design(shape: tuple[int, int], full_shape: tuple[int, int], factor: int, degree: int) -> np.ndarray:
    """Legendre terms of total degree <= ``degree`` at the centres of the binned pixels.

    Coordinates are normalised to [-1, 1] over the full-resolution tile, so the same coefficients
    evaluate on the full grid.
    """
    ys = (np.arange(shape[0]) * factor + (factor - 1) / 2) / max(full_shape[0] - 1, 1) * 2 - 1
    xs = (np.arange(shape[1]) * factor + (factor - 1) / 2) / max(full_shape[1] - 1, 1) * 2 - 1
    vy = legendre.legvander(ys, degree)
    vx = legendre.legvander(xs, degree)
    terms = [np.outer(vy[:, p], vx[:, q]).ravel() for p in range(degree + 1) for q in range(degree + 1 - p)]
    return np.stack(terms, axis=1)


def _fit_smooth_field(image: np.ndarray, weights: np.ndarray, full_shape: tuple[int, int], factor: int,
                     degree: int = DEGREE) -> np.ndarray:
    """Weighted least-squares Legendre fit of a binned image, evaluated on the full tile grid.

    Parameters
    ----------
    image : np.ndarray
        ``(h // factor, w // factor)`` binned values (NaN where unknown).
    weights : np.ndarray
        Same shape; 0 where ``image`` is unknown.
    full_shape : (int, int)
        ``(h, w)`` of the tile.
    factor : int
        Binning factor of ``image``.
    degree : int
        Total polynomial degree.

    Returns
    -------
    np.ndarray
        ``(h, w)`` float64 smooth field.
    """
    design = _legendre_design(image.shape, full_shape, factor, degree)
    w = np.sqrt(np.where(np.isfinite(image), weights, 0.0)).ravel()
    coeffs, *_ = np.linalg.lstsq(design * w[:, None], np.nan_to_num(image).ravel() * w, rcond=None)
    return (_legendre_design(full_shape, full_shape, 1, degree) @ coeffs).reshape(full_shape)


def _candidate_tiles(nx: int, ny: int, max_tiles: int, seed: int) -> list[tuple[int, int]]:
    tiles = [(i, j) for i in range(nx) for j in range(ny)]
    if len(tiles) <= max_tiles:
        return tiles
    keep = np.sort(np.random.default_rng(seed).choice(len(tiles), size=max_tiles, replace=False))
    return [tiles[k] for k in keep]


def estimate_flatfield(
    grid: MosaicGrid,
    *,
    n_planes: int = 3,
    z: int | None = None,
    max_tiles: int | None = None,
    bin_px: int = BIN_PX,
    degree: int = DEGREE,
    tissue_level: float = TISSUE_LEVEL,
    min_tissue_tiles: int = MIN_TISSUE_TILES,
    seed: int = SEED,
) -> np.ndarray | None:
    """Estimate the multiplicative flat field shared by a slice's tiles.

    Only ``n_planes`` Z planes around ``z`` of at most ``max_tiles`` tiles are read (one tile per
    read, ``READ_THREADS`` reads at a time), so memory does not depend on the slice size.

    Parameters
    ----------
    grid : MosaicGrid
        The slice.
    n_planes : int
        Z planes averaged per tile (speckle averages out across depth).
    z : int or None
        Plane the ``n_planes`` are centred on (default: the central plane).
    max_tiles : int, optional
        Tiles read at most (a fixed pseudo-random subset of a larger grid). Default: ``MAX_TILES``;
        when the input chunks hold more planes than ``n_planes`` (e.g. one chunk per whole tile, so
        every read decodes the whole tile), a sixth of the tiles, at least ``DEEP_CHUNK_MIN_TILES``:
        the estimate then costs about a sixth of the stitch's own decoding, not a second pass.
    bin_px, degree, tissue_level, min_tissue_tiles, seed
        See :func:`flatfield_from_tiles`.

    Returns
    -------
    np.ndarray or None
        ``(h, w)`` float32 flat field with mean 1 (divide tiles by it), or None (with a warning)
        when the slice has too few tissue tiles.
    """
    nz, h, w = grid.tile_shape
    centre = central_plane_index(nz) if z is None else z
    start = max(0, min(centre - n_planes // 2, nz - n_planes))
    planes = slice(start, min(nz, start + n_planes))
    if max_tiles is None:
        deep = int(grid.array.chunks[0]) > planes.stop - planes.start
        max_tiles = min(MAX_TILES, max(DEEP_CHUNK_MIN_TILES, grid.nx * grid.ny // 6)) if deep else MAX_TILES

    def read_tile(i: int, j: int) -> np.ndarray:
        return read_block(grid, planes, slice(i * h, (i + 1) * h), slice(j * w, (j + 1) * w)).mean(axis=0)

    return flatfield_from_tiles(read_tile, grid.nx, grid.ny, (h, w), max_tiles=max_tiles, bin_px=bin_px,
                                degree=degree, tissue_level=tissue_level, min_tissue_tiles=min_tissue_tiles,
                                seed=seed, label=str(grid.path))


def flatfield_from_tiles(
    read_tile: Callable[[int, int], np.ndarray],
    nx: int,
    ny: int,
    tile_hw: tuple[int, int],
    *,
    max_tiles: int = MAX_TILES,
    bin_px: int = BIN_PX,
    degree: int = DEGREE,
    tissue_level: float = TISSUE_LEVEL,
    min_tissue_tiles: int = MIN_TISSUE_TILES,
    seed: int = SEED,
    label: str = "slice",
    log_level: int = logging.WARNING,
) -> np.ndarray | None:
    """The flat-field estimator itself, over any source of 2-D tiles (see the module docstring).

    Parameters
    ----------
    read_tile : callable
        ``read_tile(i, j)`` returns tile ``(i, j)`` as a 2-D float array ``tile_hw``.
    nx, ny : int
        Grid size.
    tile_hw : (int, int)
        Tile height and width.
    max_tiles : int
        Tiles read at most (a fixed pseudo-random subset of a larger grid).
    bin_px : int
        Binning of each tile before the median (the flat field is smooth).
    degree : int
        Total degree of the Legendre polynomial fitted to the median profile: 2 (tilt and
        quadratic fall-off) is the robust default; higher degrees follow flatter-topped profiles
        but need many tissue tiles (scene structure leaks into the fit).
    tissue_level : float
        A binned pixel is tissue when above ``tissue_level`` times the 95th percentile of all
        binned pixels; a tile is a tissue tile when at least half of it is tissue.
    min_tissue_tiles : int
        Fewer tissue tiles than this and no estimate is made.
    seed : int
        Seed of the tile subset.
    label : str
        Names the slice in the message said when no estimate is made.
    log_level : int
        Level of that message (a warning for the stitcher; measuring goes on without a flat field).

    Returns
    -------
    np.ndarray or None
        ``(h, w)`` float32 flat field with mean 1, or None (with a warning) when there are too
        few tissue tiles or the values are mostly below zero (:data:`MAX_NEGATIVE_FRACTION`).
    """
    h, w = tile_hw
    factor = max(1, min(bin_px, h // 8, w // 8))
    with ThreadPoolExecutor(READ_THREADS) as pool:  # decoding releases the GIL
        binned = np.stack(list(pool.map(lambda tile: _bin(read_tile(*tile), factor),
                                        _candidate_tiles(nx, ny, max_tiles, seed))))
    if np.mean(binned < 0) > MAX_NEGATIVE_FRACTION:
        logger.log(log_level, "%s: values below zero (dB or offset data): a flat field (a gain) is not estimated "
                              "for them", label)
        return None
    threshold = tissue_level * float(np.percentile(binned, 95))
    tissue = binned > threshold
    chosen = tissue.mean(axis=(1, 2)) >= 0.5
    if chosen.sum() < min_tissue_tiles or threshold <= 0:
        logger.log(log_level, "%s: only %d tissue tiles; flat field not estimated", label, int(chosen.sum()))
        return None
    levels = np.array([np.median(b[m]) for b, m in zip(binned[chosen], tissue[chosen], strict=True)])
    normalised = np.where(tissue[chosen], binned[chosen] / levels[:, None, None], np.nan)
    counts = np.isfinite(normalised).sum(axis=0)
    profile = np.full(normalised.shape[1:], np.nan)
    enough = counts >= min_tissue_tiles
    profile[enough] = np.nanmedian(normalised[:, enough], axis=0)
    field = _fit_smooth_field(profile, counts.astype(float) * enough, (h, w), factor, degree)
    field = np.clip(field, 0.05 * field.mean(), None)
    field = (field / field.mean()).astype(np.float32)
    logger.debug("%s: flat field estimated from %d tissue tiles of %d read: gain %.3f to %.3f", label,
                 int(chosen.sum()), len(binned), float(field.min()), float(field.max()))
    return field


def load_flatfield(path: str | Path, tile_shape: tuple[int, int, int]) -> np.ndarray:
    """Load a known flat field from a ``.npy`` file and normalise it to mean 1.

    Parameters
    ----------
    path : str or Path
        ``(h, w)`` or ``(Z, h, w)`` array, finite and positive.
    tile_shape : (int, int, int)
        ``(Z, h, w)`` of the slice's tiles.

    Raises
    ------
    InputError
        Unreadable file, wrong shape, non-finite or non-positive values.
    """
    path = Path(path)
    shape = _npy_shape(path)
    if len(shape) not in (2, 3) or shape != tuple(tile_shape[-len(shape):]):
        raise InputError(path, f"flat field shape {shape} does not match tiles {tuple(tile_shape)}")
    try:
        field = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read flat field ({exc})") from None
    field = field.astype(np.float32)
    if not np.isfinite(field).all() or (field <= 0).any():
        raise InputError(path, "flat field must be finite and positive")
    return field / field.mean()


def _npy_shape(path: Path) -> tuple[int, ...]:
    """The array shape a ``.npy`` file declares, read from its header only (nothing is allocated).

    Raises
    ------
    InputError
        Unreadable file, not a ``.npy``, or an object or non-numeric dtype.
    """
    readers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0,
               (3, 0): np.lib.format.read_array_header_2_0}
    try:
        with path.open("rb") as handle:
            version = np.lib.format.read_magic(handle)
            if version not in readers:
                raise ValueError(f"unsupported .npy version {version}")
            shape, _, dtype = readers[version](handle)
    except (OSError, ValueError) as exc:
        raise InputError(path, f"cannot read flat field ({exc})") from None
    if dtype.kind not in "biuf":
        raise InputError(path, f"cannot read flat field (dtype {dtype} is not a real number type)")
    return tuple(int(n) for n in shape)


def flatfield_file(flatfield: str | Path | None) -> Path | None:
    """The ``.npy`` file a flat-field option names, or None for a mode (``"estimate"``, ``"none"`` or None).

    Raises
    ------
    InputError
        Neither a mode nor a ``.npy`` file (a misspelt mode, say): the one message every step gives.
    """
    if flatfield is None or str(flatfield) in FLATFIELD_MODES:
        return None
    if not is_npy(flatfield):
        raise InputError(flatfield, f"flat field must be one of {FLATFIELD_MODES} or a .npy file")
    return Path(flatfield)


def choose_flatfield(flatfield: str | Path | np.ndarray | None, tile_shape: tuple[int, int, int],
                     estimate: Callable[[], np.ndarray | None]) -> tuple[np.ndarray | None, str]:
    """The flat field a flat-field option asks for, and its description (the outputs' ``flatfield``).

    Parameters
    ----------
    flatfield : str, Path, np.ndarray or None
        ``"estimate"``: ``estimate()``, described ``"estimate"`` (or :data:`ESTIMATE_FAILED` when it
        gives None); ``"none"`` or None: no correction; an array: that flat field (``"given"``); the
        path of a ``.npy`` flat field: loaded (:func:`load_flatfield`), described by
        :func:`describe_flatfield_file`.
    tile_shape : (int, int, int)
        ``(Z, h, w)`` of the slice's tiles.
    estimate : callable
        Estimates the slice's flat field (None when too few tissue tiles); called only for ``"estimate"``.

    Raises
    ------
    InputError
        A misspelt mode (:func:`flatfield_file`) or a bad ``.npy`` flat field.
    """
    if isinstance(flatfield, np.ndarray):
        return flatfield, "given"
    path = flatfield_file(flatfield)
    if path is not None:
        return load_flatfield(path, tile_shape), describe_flatfield_file(path)
    if flatfield is None or str(flatfield) == "none":
        return None, "none"
    field = estimate()
    return field, "estimate" if field is not None else ESTIMATE_FAILED


def resolve_flatfield(grid: MosaicGrid, flatfield: str | Path | None) -> tuple[np.ndarray | None, str]:
    """Turn the ``flatfield`` option into an array (or None) and a description for the metadata
    (:func:`choose_flatfield`, estimating with :func:`estimate_flatfield`).

    Parameters
    ----------
    grid : MosaicGrid
        The slice.
    flatfield : str or Path or None
        ``"estimate"``, ``"none"`` (or None), or the path of a ``.npy`` flat field.
    """
    return choose_flatfield(flatfield, grid.tile_shape, lambda: estimate_flatfield(grid))


def describe_flatfield_file(path: str | Path) -> str:
    """How the outputs name the flat field of a ``.npy`` file: a slice's flat-field output (:func:`write_flatfield`)
    by what its measurement recorded beside it (``"estimate"``, ``"none"``, the file it was given, ...), wherever it
    is read from (a Nextflow task reads it from the measuring task's work folder); any other file by its absolute
    path."""
    path = Path(path).resolve()  # a link to the file (Nextflow stages its inputs so) leads to its folder
    note = path.parent / FLATFIELD_NOTE
    if path.name == FLATFIELD_FILE and note.is_file():
        try:
            description = json.loads(note.read_text())["flatfield"]
        except (OSError, ValueError, KeyError, TypeError):  # not a note this program wrote
            description = None
        if isinstance(description, str):
            return description
    return str(path)


def slice_flatfield(flatfield: str | Path | None, measured: np.ndarray | None,
                    tile_shape: tuple[int, int, int]) -> tuple[np.ndarray, str]:
    """The flat field a slice was measured with, as the array its output file holds, and its description.

    Parameters
    ----------
    flatfield : str, Path or None
        The flat-field option: a ``.npy`` file is kept as given (loaded unchanged, so the stitch
        normalises it exactly as it would the file itself) and keeps its description
        (:func:`describe_flatfield_file`); ``"estimate"`` keeps ``measured`` (``"estimate"``); ``"none"``,
        None (``"none"``), or an estimate that could not be made (``measured`` None: :data:`ESTIMATE_FAILED`)
        give ones (no correction: dividing by 1 changes nothing).
    measured : np.ndarray or None
        The estimate the measurement made and used (``on_flatfield`` of
        :func:`~linumpy_motor.register.measure.measure_volume`).
    tile_shape : (int, int, int)
        ``(Z, h, w)`` of the slice's tiles.
    """
    path = flatfield_file(flatfield)
    if path is not None:
        load_flatfield(path, tile_shape)  # checked
        return np.load(path, allow_pickle=False), describe_flatfield_file(path)
    ones = np.ones(tile_shape[1:], dtype=np.float32)
    if str(flatfield) == "estimate":
        return (np.asarray(measured, dtype=np.float32), "estimate") if measured is not None else (ones, ESTIMATE_FAILED)
    return ones, "none"


def write_flatfield(folder: str | Path, field: np.ndarray, description: str) -> Path:
    """Write a slice's flat field as the output folder ``folder`` holding :data:`FLATFIELD_FILE` and its
    description (:data:`FLATFIELD_NOTE`), atomically.

    The folder carries this program's listing (:mod:`linumpy_motor.io.outputs`: a bare ``.npy`` file
    cannot be marked as an output), so a later run may replace it; the ``.npy`` inside is what
    ``--flatfield FILE`` accepts, and the stitch describes it by the description.

    Returns
    -------
    Path
        The ``.npy`` file written.
    """
    with atomic_output(folder, "flatfield") as tmp:
        tmp.mkdir()
        np.save(tmp / FLATFIELD_FILE, np.ascontiguousarray(field), allow_pickle=False)
        (tmp / FLATFIELD_NOTE).write_text(json.dumps({"flatfield": description}) + "\n")
    return Path(folder) / FLATFIELD_FILE
