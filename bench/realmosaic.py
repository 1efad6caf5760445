"""Mosaic grids cut from real photographs, with a known stage: the real-image benchmark's yardstick.

This generator shares no code with ``linumpy_motor.synthetic`` and imports nothing from
``linumpy_motor``: it is the independent truth the library is measured against.

A slice is made in three stages, each where it happens on a real rig:

1. **Scene** (the sample): a photograph shipped in scikit-image's wheel (dense texture, repeated
   texture, sparse content, tissue-like) as reflectivity, upscaled with cubic interpolation so that
   it covers the scanned area; optionally tissue on only part of the grid, in agarose (a low,
   never-zero, speckled background).
2. **Optics on the scene**, plane by plane (Z): fully developed speckle (partly correlated between
   planes), a Gaussian PSF that widens away from the focal plane, attenuation with depth.
3. **Stage and camera, per tile**: the true top-left corner of tile (i, j) is
   ``A_true @ [i, j] + jitter (+ backlash on odd rows) (+ bump)``; ``A_true`` holds a rotation θ,
   a non-perpendicularity of the axes and a 2–3 % scale error over the nominal step
   ``(1 - overlap) * tile``. Each tile samples the scene at its true sub-pixel position
   (``scipy.ndimage.map_coordinates``, cubic spline), then gets vignetting (a gain that drops
   towards the tile edges, the same for every tile), a multiplicative speckle decorrelation of its
   own and additive noise (kept non-negative, like a magnitude).

The result follows the data contract: ``volume`` of shape ``(Z, nx*h, ny*w)``, tile (i, j) at
``volume[:, i*h:(i+1)*h, j*w:(j+1)*w]``, float32. Everything is deterministic from the seed.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import skimage.data
from scipy import ndimage
from skimage.color import rgb2gray


def _gray(loader: Callable[[], np.ndarray]) -> Callable[[], np.ndarray]:
    @functools.cache
    def load() -> np.ndarray:
        image = loader()
        return rgb2gray(image) if image.ndim == 3 else image.astype(float) / 255.0

    return load


PHOTOGRAPHS: dict[str, tuple[str, Callable[[], np.ndarray]]] = {
    "gravel": ("dense texture", _gray(skimage.data.gravel)),
    "grass": ("dense texture", _gray(skimage.data.grass)),
    "brick": ("repeated texture", _gray(skimage.data.brick)),
    "hubble": ("sparse content", _gray(skimage.data.hubble_deep_field)),
    "ihc": ("tissue-like", _gray(skimage.data.immunohistochemistry)),
    "retina": ("tissue-like", _gray(skimage.data.retina)),
}
"""Photograph name → (class, loader of a float grey image). All ship inside scikit-image's wheel."""


@dataclass(frozen=True)
class RealSpec:
    """What to generate. Stage faults are drawn from the seed within the stated bounds.

    Attributes
    ----------
    photo : str
        Key of :data:`PHOTOGRAPHS`.
    nx, ny : int
        Tile rows and columns.
    tile_hw : (int, int)
        Tile height and width (px).
    nz : int
        Planes per tile.
    overlap : float
        Nominal overlap fraction between neighbours.
    max_theta_deg : float
        θ is drawn uniformly in ±this.
    max_skew_deg : float
        Deviation of the axes from perpendicular, drawn uniformly in ±this.
    scale_error : (float, float)
        Each axis' step is off the nominal one by a fraction drawn in this range, random sign.
    jitter_px : float
        Standard deviation of each tile's random position error, per axis.
    tissue_fraction : float
        Fraction of the scanned area covered by tissue (one blob); 1: tissue everywhere.
    agarose_level : float
        Reflectivity of the background (agarose), relative to the photograph's bright end.
    n_bumped : int
        Tiles displaced by a random vector of length in ``bump_px`` (a knocked stage).
    bump_px : (float, float)
        Range of the bump length.
    backlash_px : float
        Serpentine scan: odd tile rows sit this far along X (random sign) from the model; 0: raster.
    psf_sigma_px : float
        Gaussian PSF at the focal plane.
    defocus_px_per_plane : float
        PSF growth per plane away from the focal plane.
    focus_plane : int
        The plane in focus.
    attenuation_planes : float
        Signal falls by exp(-z / this) with depth.
    speckle_contrast : float
        Weight of the scene's speckle (0: none, 1: fully developed).
    speckle_grain_px : float
        Speckle grain size.
    plane_speckle_correlation : float
        Correlation of the speckle field between planes.
    tile_speckle : float
        Standard deviation of each tile's own multiplicative speckle (decorrelation between
        acquisitions of an overlap).
    vignetting : float
        Gain lost at the tile corners (0: none).
    noise : float
        Standard deviation of the additive noise.
    min_zoom : float
        Photographs are upscaled at least this much (more when too small for the grid).
    """

    photo: str = "gravel"
    nx: int = 6
    ny: int = 7
    tile_hw: tuple[int, int] = (160, 160)
    nz: int = 5
    overlap: float = 0.2
    max_theta_deg: float = 3.0
    max_skew_deg: float = 1.0
    scale_error: tuple[float, float] = (0.02, 0.03)
    jitter_px: float = 0.3
    tissue_fraction: float = 1.0
    agarose_level: float = 0.04
    n_bumped: int = 0
    bump_px: tuple[float, float] = (3.0, 8.0)
    backlash_px: float = 0.0
    psf_sigma_px: float = 1.0
    defocus_px_per_plane: float = 0.4
    focus_plane: int = 0
    attenuation_planes: float = 4.0
    speckle_contrast: float = 0.6
    speckle_grain_px: float = 1.0
    plane_speckle_correlation: float = 0.7
    tile_speckle: float = 0.1
    vignetting: float = 0.4
    noise: float = 0.03
    min_zoom: float = 1.5

    def __post_init__(self) -> None:
        if self.photo not in PHOTOGRAPHS:
            raise ValueError(f"unknown photograph {self.photo!r}; choose from {sorted(PHOTOGRAPHS)}")
        if not 0 < self.overlap < 0.5:
            raise ValueError(f"overlap must be in (0, 0.5), got {self.overlap}")
        if not 0 <= self.focus_plane < self.nz:
            raise ValueError(f"focus_plane {self.focus_plane} is outside the {self.nz} planes")

    @property
    def nominal_steps(self) -> np.ndarray:
        """The nominal (row, col) steps ``(1 - overlap) * tile``."""
        return (1.0 - self.overlap) * np.asarray(self.tile_hw, dtype=float)


@dataclass(frozen=True)
class Stage:
    """The true stage of a draw, shared by its slices."""

    A_true: np.ndarray
    backlash: np.ndarray
    theta_deg: float
    skew_deg: float
    scale: np.ndarray


@dataclass(frozen=True)
class RealSlice:
    """One mosaic grid and its truth.

    Attributes
    ----------
    volume : np.ndarray
        ``(nz, nx*h, ny*w)`` float32, tiles side by side (the data contract).
    positions : np.ndarray
        ``(nx*ny, 2)`` true top-left (row, col) of each tile, row-major, in scene pixels.
    bumped : np.ndarray
        ``(nx*ny,)`` bool, tiles knocked off the model.
    tissue : np.ndarray
        ``(nx*ny,)`` fraction of each tile's area on tissue.
    best_plane : int
        The plane with the most signal per unit blur (the focal plane's side nearest the surface).
    """

    volume: np.ndarray
    positions: np.ndarray
    bumped: np.ndarray
    tissue: np.ndarray
    best_plane: int


@dataclass(frozen=True)
class RealDraw:
    """Slices sharing one stage, with the floors of the pooled matrix.

    ``floor`` is the least-squares A of the true positions of every slice against the tile indices
    (one offset per slice; bumped tiles left out, since a model is not expected to follow them);
    with backlash, of the model with the backlash term. ``floor_affine`` is always the plain one.
    """

    spec: RealSpec
    stage: Stage
    slices: list[RealSlice] = field(default_factory=list)
    floor: np.ndarray | None = None
    floor_affine: np.ndarray | None = None
    floor_backlash: np.ndarray | None = None


def grid_ij(nx: int, ny: int) -> np.ndarray:
    """``(nx*ny, 2)`` tile indices (i, j), row-major."""
    i, j = np.meshgrid(np.arange(nx), np.arange(ny), indexing="ij")
    return np.column_stack([i.ravel(), j.ravel()]).astype(float)


def draw_stage(spec: RealSpec, rng: np.random.Generator) -> Stage:
    """θ, skew, scale error and backlash drawn within ``spec``'s bounds; ``A_true`` from them.

    ``A_true[:, 1]`` (one column step) is ``sx * step_x * (-sin θ, cos θ)`` and ``A_true[:, 0]``
    (one row step) ``sy * step_y * (cos(θ + skew), sin(θ + skew))``, both as (row, col).
    """
    theta = rng.uniform(-spec.max_theta_deg, spec.max_theta_deg)
    skew = rng.uniform(-spec.max_skew_deg, spec.max_skew_deg)
    scale = 1.0 + rng.uniform(*spec.scale_error, size=2) * rng.choice([-1.0, 1.0], size=2)
    step_y, step_x = spec.nominal_steps
    t, a = math.radians(theta), math.radians(theta + skew)
    A = np.array([[scale[0] * step_y * math.cos(a), -scale[1] * step_x * math.sin(t)],
                  [scale[0] * step_y * math.sin(a), scale[1] * step_x * math.cos(t)]])
    backlash = np.array([0.0, spec.backlash_px * rng.choice([-1.0, 1.0])])
    return Stage(A_true=A, backlash=backlash, theta_deg=theta, skew_deg=skew, scale=scale)


def true_positions(spec: RealSpec, stage: Stage, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Tile corners (before the scene offset) and which tiles are bumped."""
    ij = grid_ij(spec.nx, spec.ny)
    positions = ij @ stage.A_true.T + rng.normal(0.0, spec.jitter_px, size=ij.shape)
    positions += (ij[:, :1] % 2) * stage.backlash
    bumped = np.zeros(len(ij), dtype=bool)
    if spec.n_bumped:
        bumped[rng.choice(len(ij), size=spec.n_bumped, replace=False)] = True
        angle = rng.uniform(0, 2 * np.pi, size=spec.n_bumped)
        length = rng.uniform(*spec.bump_px, size=spec.n_bumped)
        positions[bumped] += length[:, None] * np.column_stack([np.sin(angle), np.cos(angle)])
    return positions, bumped


def _photograph(spec: RealSpec, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random (rotated, flipped) crop of the photograph, cubic-upscaled to ``shape``, ~[0, 1]."""
    image = PHOTOGRAPHS[spec.photo][1]()
    image = np.rot90(image, k=int(rng.integers(4)))
    if rng.integers(2):
        image = image[:, ::-1]
    image = image / max(float(np.percentile(image, 99.5)), 1e-6)
    zoom = max(spec.min_zoom, 1.02 * max(shape) / min(image.shape))
    crop = [min(int(math.ceil(s / zoom)) + 4, n) for s, n in zip(shape, image.shape)]
    start = [int(rng.integers(0, n - c + 1)) for c, n in zip(crop, image.shape)]
    piece = image[start[0]:start[0] + crop[0], start[1]:start[1] + crop[1]]
    up = ndimage.zoom(np.ascontiguousarray(piece, dtype=float), zoom, order=3, mode="mirror")
    return np.clip(up[:shape[0], :shape[1]], 0.0, 1.5)


def _tissue_mask(spec: RealSpec, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """One soft-edged blob covering about ``tissue_fraction`` of the scene (all ones at 1)."""
    if spec.tissue_fraction >= 1:
        return np.ones(shape)
    rows, cols = np.mgrid[0:shape[0], 0:shape[1]].astype(float)
    centre = [rng.uniform(0.3, 0.7) * s for s in shape]
    phi = np.arctan2(rows - centre[0], cols - centre[1])
    harmonics = (1 + 0.15 * np.sin(2 * phi + rng.uniform(0, 2 * np.pi))
                 + 0.08 * np.sin(3 * phi + rng.uniform(0, 2 * np.pi)))
    r0 = math.sqrt(spec.tissue_fraction * shape[0] * shape[1] / math.pi)
    blob = np.hypot(rows - centre[0], cols - centre[1]) <= r0 * harmonics
    return ndimage.gaussian_filter(blob.astype(float), 3.0)


def _speckle_field(shape: tuple[int, int], grain: float, rng: np.random.Generator) -> np.ndarray:
    """A complex Gaussian field with unit variance and correlation length ``grain``."""
    parts = [ndimage.gaussian_filter(rng.standard_normal(shape), grain) for _ in range(2)]
    z = parts[0] + 1j * parts[1]
    return z / np.sqrt(np.mean(np.abs(z) ** 2))


def _scene_planes(spec: RealSpec, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Reflectivity through the optics, one plane per Z; and the tissue mask."""
    mask = _tissue_mask(spec, shape, rng)
    reflectivity = spec.agarose_level + mask * _photograph(spec, shape, rng)
    common = _speckle_field(shape, spec.speckle_grain_px, rng)
    c = spec.plane_speckle_correlation
    planes = np.empty((spec.nz, *shape), dtype=np.float32)
    for z in range(spec.nz):
        speckle = np.abs(c * common + math.sqrt(1 - c * c) * _speckle_field(shape, spec.speckle_grain_px, rng)) ** 2
        sigma = spec.psf_sigma_px + spec.defocus_px_per_plane * abs(z - spec.focus_plane)
        sample = reflectivity * (1 - spec.speckle_contrast + spec.speckle_contrast * speckle)
        planes[z] = math.exp(-z / spec.attenuation_planes) * ndimage.gaussian_filter(sample, sigma)
    return planes, mask


def vignetting_gain(tile_hw: tuple[int, int], strength: float) -> np.ndarray:
    """Gain over a tile: 1 at the centre, ``1 - strength`` at the corners (quadratic)."""
    u = np.linspace(-1, 1, tile_hw[0])[:, None]
    v = np.linspace(-1, 1, tile_hw[1])[None, :]
    return 1.0 - strength * (u**2 + v**2) / 2


def _best_plane(spec: RealSpec) -> int:
    z = np.arange(spec.nz)
    sigma = spec.psf_sigma_px + spec.defocus_px_per_plane * np.abs(z - spec.focus_plane)
    return int(np.argmax(np.exp(-z / spec.attenuation_planes) / sigma))


def make_slice(spec: RealSpec, stage: Stage, seed: int) -> RealSlice:
    """One mosaic grid of ``spec`` on ``stage``, deterministic from ``seed``."""
    rng = np.random.default_rng(seed)
    h, w = spec.tile_hw
    positions, bumped = true_positions(spec, stage, rng)
    margin = int(math.ceil(4 * (spec.psf_sigma_px + spec.defocus_px_per_plane * spec.nz))) + 8
    positions = positions - positions.min(axis=0) + margin
    shape = tuple(int(math.ceil(positions[:, k].max() + (h, w)[k])) + margin for k in range(2))
    planes, mask = _scene_planes(spec, shape, rng)
    rows = positions[:, 0].reshape(spec.nx, spec.ny)[:, None, :, None] + np.arange(h)[None, :, None, None]
    cols = positions[:, 1].reshape(spec.nx, spec.ny)[:, None, :, None] + np.arange(w)[None, None, None, :]
    rows, cols = np.broadcast_arrays(rows, cols)
    coords = np.stack([rows.reshape(spec.nx * h, spec.ny * w), cols.reshape(spec.nx * h, spec.ny * w)])
    gain = np.tile(vignetting_gain(spec.tile_hw, spec.vignetting), (spec.nx, spec.ny))
    volume = np.empty((spec.nz, spec.nx * h, spec.ny * w), dtype=np.float32)
    for z in range(spec.nz):
        coefficients = ndimage.spline_filter(planes[z].astype(float), order=3)
        sampled = ndimage.map_coordinates(coefficients, coords, order=3, prefilter=False)
        own = ndimage.gaussian_filter(rng.standard_normal(sampled.shape), spec.speckle_grain_px)
        own *= spec.tile_speckle / max(float(own.std()), 1e-12)
        noisy = sampled * gain * (1 + own) + rng.normal(0.0, spec.noise, size=sampled.shape)
        volume[z] = np.abs(noisy)
    tissue = ndimage.map_coordinates(mask, coords, order=1).reshape(spec.nx, h, spec.ny, w).mean(axis=(1, 3)).ravel()
    return RealSlice(volume=volume, positions=positions, bumped=bumped, tissue=tissue, best_plane=_best_plane(spec))


def floor_transform(positions: Sequence[np.ndarray], nx: int, ny: int, *, keep: Sequence[np.ndarray] | None = None,
                    backlash: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Least-squares A of true positions against the tile indices, pooled over slices.

    ``positions[s] ≈ A @ [i, j] + t_s (+ b * (i odd))``: one offset per slice, one A (and, with
    ``backlash``, one backlash vector b) for all. ``keep`` masks the tiles to use per slice.

    Returns
    -------
    A : np.ndarray
        The 2x2 matrix.
    b : np.ndarray or None
        The backlash vector, when fitted.
    """
    ij = grid_ij(nx, ny)
    n = len(positions)
    blocks, targets = [], []
    for s, pos in enumerate(positions):
        mask = np.ones(len(ij), dtype=bool) if keep is None else np.asarray(keep[s], dtype=bool)
        offsets = np.zeros((len(ij), n))
        offsets[:, s] = 1
        columns = [ij] + ([ij[:, :1] % 2] if backlash else []) + [offsets]
        blocks.append(np.hstack(columns)[mask])
        targets.append(np.asarray(pos, dtype=float)[mask])
    coef = np.linalg.lstsq(np.vstack(blocks), np.vstack(targets), rcond=None)[0]
    return coef[:2].T, (coef[2] if backlash else None)


def make_draw(spec: RealSpec, seed: int, n_slices: int = 2, photos: Sequence[str] | None = None) -> RealDraw:
    """``n_slices`` slices on one stage drawn from ``seed``, with the floors.

    ``photos`` gives each slice its photograph (default: ``spec.photo`` for all).
    """
    rng = np.random.default_rng([seed, 0])
    stage = draw_stage(spec, rng)
    slices = []
    for k in range(n_slices):
        slice_spec = spec if photos is None else replace(spec, photo=photos[k % len(photos)])
        slices.append(make_slice(slice_spec, stage, seed=int(np.random.default_rng([seed, k + 1]).integers(2**31))))
    positions = [s.positions for s in slices]
    keep = [~s.bumped for s in slices]
    affine, _ = floor_transform(positions, spec.nx, spec.ny, keep=keep)
    with_backlash, _ = floor_transform(positions, spec.nx, spec.ny, keep=keep, backlash=True)
    return RealDraw(spec=spec, stage=stage, slices=slices, floor=with_backlash if spec.backlash_px else affine,
                    floor_affine=affine, floor_backlash=with_backlash)


def true_pair_displacements(positions: np.ndarray, nx: int, ny: int) -> dict[tuple[int, int, int, int], np.ndarray]:
    """``(i, j, row_delta, col_delta)`` → true (dy, dx) from tile (i, j) to its lower or right neighbour."""
    grid = np.asarray(positions, dtype=float).reshape(nx, ny, 2)
    found = {}
    for i in range(nx):
        for j in range(ny):
            if j + 1 < ny:
                found[(i, j, 0, 1)] = grid[i, j + 1] - grid[i, j]
            if i + 1 < nx:
                found[(i, j, 1, 0)] = grid[i + 1, j] - grid[i, j]
    return found


def write_ome_zarr(path: str | Path, volume: np.ndarray, tile_hw: tuple[int, int], *,
                   pixel_mm: tuple[float, float, float] = (0.0035, 0.0035, 0.0035), tiles_per_shard: int = 4) -> Path:
    """Write a mosaic grid the way the upstream acquisition tools do.

    NGFF 0.5 (zarr v3), one tile per chunk, sharded (``tiles_per_shard`` x ``tiles_per_shard``
    tiles a shard), axes (z, y, x) in millimetres, one level. Written under a temporary name in
    the same folder, then renamed.
    """
    import zarr

    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if tmp.exists():
        shutil.rmtree(tmp)
    nz, (h, w) = volume.shape[0], tile_hw
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    array = group.create_array("0", shape=volume.shape, dtype=volume.dtype, chunks=(nz, h, w),
                               shards=(nz, tiles_per_shard * h, tiles_per_shard * w), fill_value=0,
                               dimension_names=("z", "y", "x"))
    array[...] = volume
    axes = [{"name": name, "type": "space", "unit": "millimeter"} for name in ("z", "y", "x")]
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": axes, "name": path.name,
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": list(pixel_mm)}]}],
    }]}
    if path.exists():
        shutil.rmtree(path)
    tmp.rename(path)
    return path
