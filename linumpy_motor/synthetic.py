"""Synthetic OCT-like mosaic grids with a known motor model, for tests, the demo and benchmarks.

A slice is a clean scene (tissue blob with multi-scale structure and speckle fixed to the tissue,
attenuated with depth) sampled by a grid of tiles at ``A @ [i, j]`` plus per-tile jitter, each tile
darkened at its edges (vignetting) and noisy. Everything the stage should recover is written to
``truth.json``.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from linumpy_motor.errors import InputError
from linumpy_motor.io import ngff, outputs
from linumpy_motor.io.schemas import DEFAULT_OVERLAP, check_overlap

__all__ = ["DTYPES", "N_SLICES", "BAD_TILE_KINDS", "SyntheticSpec", "make_slice", "true_transform",
           "vignetting_field", "write_dataset"]

N_SLICES = 3
"""Slices of a synthetic dataset by default."""
DTYPES = ("float32", "uint8", "uint16", "complex64")
"""Sample types ``linumpy-motor synth`` offers."""

BAD_TILE_KINDS = ("background", "swap")


@dataclass(frozen=True)
class SyntheticSpec:
    """Parameters of a synthetic acquisition (every slice shares the motor model)."""

    nx: int = 6
    ny: int = 7
    tile_shape: tuple[int, int, int] = (8, 160, 160)
    overlap: float = DEFAULT_OVERLAP
    theta_deg: float = 1.5
    perpendicular_deviation_deg: float = 0.8
    scale: float = 1.0
    jitter_px: float = 0.3
    noise: float = 0.05
    vignetting: float = 0.3
    depth_decay: float = 0.5
    tissue_fraction: float = 0.7
    speckle_sigma: float = 1.0
    dtype: str = "float32"
    bad_tiles: int = 0
    seed: int = 0
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        """Refuse a spec no acquisition could have, in one line (:class:`~linumpy_motor.errors.InputError`)."""
        if min(self.nx, self.ny, *self.tile_shape) < 1:
            raise InputError(None, f"grid {[self.nx, self.ny]} and tile shape {list(self.tile_shape)} must be >= 1")
        check_overlap(self.overlap)
        angles = {"theta": self.theta_deg, "phi deviation": self.perpendicular_deviation_deg}
        amounts = {"scale": self.scale, "jitter": self.jitter_px, "noise": self.noise, "vignetting": self.vignetting,
                   "depth decay": self.depth_decay, "tissue fraction": self.tissue_fraction,
                   "speckle sigma": self.speckle_sigma}
        for name, value in {**angles, **amounts}.items():
            if not math.isfinite(value):
                raise InputError(None, f"{name} must be a finite number, got {value}")
        for name, value in amounts.items():
            if value < 0:
                raise InputError(None, f"{name} must be >= 0, got {value}")
        if self.scale <= 0 or self.tissue_fraction > 1:
            raise InputError(None, f"scale must be > 0 and tissue fraction <= 1, got {self.scale}, "
                                   f"{self.tissue_fraction}")
        if not 0 <= self.bad_tiles <= self.nx * self.ny or self.seed < 0:
            raise InputError(None, f"bad tiles must be in [0, {self.nx * self.ny}] and the seed >= 0, got "
                                   f"{self.bad_tiles}, {self.seed}")


def true_transform(spec: SyntheticSpec) -> np.ndarray:
    """The 2x2 motor matrix A for the spec's θ, φ and scale (design.md conventions)."""
    _, tile_h, tile_w = spec.tile_shape
    step_y = (1 - spec.overlap) * tile_h * spec.scale
    step_x = (1 - spec.overlap) * tile_w * spec.scale
    theta = math.radians(spec.theta_deg)
    phi = math.radians(90.0 + spec.perpendicular_deviation_deg)
    return np.array([
        [step_y * math.sin(phi - theta), -step_x * math.sin(theta)],
        [step_y * math.cos(phi - theta), step_x * math.cos(theta)],
    ])


def _normalised(field_: np.ndarray) -> np.ndarray:
    field_ = field_ - field_.min()
    return field_ / max(float(field_.max()), 1e-12)


def _make_scene(shape: tuple[int, int, int], spec: SyntheticSpec, rng: np.random.Generator) -> np.ndarray:
    """A clean OCT-like scene ``(Z, H, W)``: tissue blob, structure, speckle, depth attenuation."""
    from scipy import ndimage  # here, not at the top: every command imports this module for its defaults

    nz, height, width = shape
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    ellipse = ((yy - height / 2) / (height / 2)) ** 2 + ((xx - width / 2) / (width / 2)) ** 2
    wobble = _normalised(ndimage.gaussian_filter(rng.standard_normal((height, width)), 40))
    distance = ellipse + 0.8 * wobble
    threshold = np.quantile(distance, spec.tissue_fraction) if spec.tissue_fraction < 1 else np.inf
    tissue = ndimage.gaussian_filter((distance < threshold).astype(np.float32), 3)
    structure = sum(
        weight * _normalised(ndimage.gaussian_filter(rng.standard_normal((height, width)), sigma))
        for sigma, weight in ((2, 0.25), (8, 0.35), (30, 0.4))
    )
    scene = np.empty(shape, dtype=np.float32)
    for z in range(nz):
        speckle = np.abs(
            ndimage.gaussian_filter(rng.standard_normal((height, width)), spec.speckle_sigma)
            + 1j * ndimage.gaussian_filter(rng.standard_normal((height, width)), spec.speckle_sigma)
        )
        speckle /= speckle.mean()
        attenuation = 1.0 - spec.depth_decay * z / max(nz - 1, 1)
        scene[z] = tissue * (0.3 + structure) * speckle * attenuation
    return scene


def vignetting_field(tile_hw: tuple[int, int], strength: float) -> np.ndarray:
    """Multiplicative vignetting of a tile: 1 at the centre, ``1 - strength`` at the corners."""
    h, w = tile_hw
    y = (np.arange(h) - (h - 1) / 2) / ((h - 1) / 2)
    x = (np.arange(w) - (w - 1) / 2) / ((w - 1) / 2)
    return (1.0 - strength * (y[:, None] ** 2 + x[None, :] ** 2) / 2).astype(np.float32)


def _render_tile(filtered: list[np.ndarray], top_left: np.ndarray, tile_hw: tuple[int, int]) -> np.ndarray:
    from scipy import ndimage

    h, w = tile_hw
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    coords = np.stack([yy + top_left[0], xx + top_left[1]])
    return np.stack([ndimage.map_coordinates(p, coords, order=3, prefilter=False, mode="nearest") for p in filtered])


def _to_dtype(volume: np.ndarray, dtype: str, rng: np.random.Generator) -> np.ndarray:
    if dtype in ("uint8", "uint16"):
        top = np.iinfo(dtype).max * 0.9 / max(float(np.quantile(volume, 0.999)), 1e-6)
        return np.clip(np.rint(volume * top), 0, np.iinfo(dtype).max).astype(dtype)
    if dtype == "complex64":
        phase = rng.uniform(0, 2 * np.pi, volume.shape).astype(np.float32)
        return (volume * np.exp(1j * phase)).astype(np.complex64)
    return volume.astype(dtype)


def make_slice(spec: SyntheticSpec, seed: int) -> tuple[np.ndarray, dict, np.ndarray]:
    """Simulate one slice.

    Returns
    -------
    volume : np.ndarray
        The mosaic grid ``(Z, nx * tile_h, ny * tile_w)`` in ``spec.dtype``.
    truth : dict
        ``positions`` (true top-left of each tile, row-major, tile (0, 0) nominally at 0),
        ``bad_tiles`` and ``scene_origin`` (scene pixel of mosaic position (0, 0)).
    scene_plane : np.ndarray
        The clean central Z plane of the scene (no vignetting, no noise).
    """
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    nz, h, w = spec.tile_shape
    A = true_transform(spec)
    ij = np.array([(i, j) for i in range(spec.nx) for j in range(spec.ny)], dtype=float)
    positions = ij @ A.T + rng.normal(0.0, spec.jitter_px, size=ij.shape) if spec.jitter_px else ij @ A.T
    margin = 8
    lo = positions.min(axis=0) - margin
    hi = positions.max(axis=0) + (h, w) + margin
    scene = _make_scene((nz, int(math.ceil(hi[0] - lo[0])), int(math.ceil(hi[1] - lo[1]))), spec, rng)
    filtered = [ndimage.spline_filter(plane, order=3) for plane in scene]
    vignette = vignetting_field((h, w), spec.vignetting)
    signal = float(scene[nz // 2][scene[nz // 2] > 0.05].mean()) if (scene[nz // 2] > 0.05).any() else 1.0
    volume = np.empty((nz, spec.nx * h, spec.ny * w), dtype=np.float32)
    tiles = {}
    for k, (i, j) in enumerate(ij.astype(int)):
        tiles[i, j] = _render_tile(filtered, positions[k] - lo, (h, w))
    bad = _pick_bad_tiles(spec, rng, tiles)
    for (i, j), kind in bad.items():
        if kind == "background":
            tiles[i, j] = np.zeros_like(tiles[i, j])
        else:
            others = [key for key in tiles if abs(key[0] - i) + abs(key[1] - j) > 2]
            tiles[i, j] = tiles[others[rng.integers(len(others))]].copy()
    for (i, j), tile in tiles.items():
        noisy = tile * vignette + rng.normal(0.0, spec.noise * signal, tile.shape)
        volume[:, i * h:(i + 1) * h, j * w:(j + 1) * w] = np.clip(noisy, 0, None)
    truth = {
        "positions": positions.round(4).tolist(),
        "bad_tiles": [[int(i), int(j), kind] for (i, j), kind in sorted(bad.items())],
        "scene_origin": (-lo).round(4).tolist(),
    }
    return _to_dtype(volume, spec.dtype, rng), truth, scene[nz // 2]


def _pick_bad_tiles(spec: SyntheticSpec, rng: np.random.Generator, tiles: dict) -> dict:
    """Choose ``spec.bad_tiles`` tissue tiles to spoil, alternating background and swapped content."""
    if not spec.bad_tiles:
        return {}
    tissue = [key for key, tile in sorted(tiles.items()) if tile.mean() > 0.5 * max(t.mean() for t in tiles.values())]
    chosen = rng.choice(len(tissue), size=min(spec.bad_tiles, len(tissue)), replace=False)
    return {tissue[k]: BAD_TILE_KINDS[n % 2] for n, k in enumerate(sorted(chosen))}


def write_dataset(
    out_dir: str | Path,
    spec: SyntheticSpec = SyntheticSpec(),
    *,
    n_slices: int = N_SLICES,
    ngff_version: str = ngff.DEFAULT_NGFF_VERSION,
    sharded: bool = True,
    tile_shape_attr: bool | None = None,
    first_slice: int = 0,
    save_scenes: bool = True,
) -> dict:
    """Write a synthetic dataset: ``mosaic_grid_3d_z{NN}.ome.zarr`` per slice and ``truth.json``.

    Parameters
    ----------
    out_dir : str or Path
        Folder to create (or reuse); not a zarr store, nor inside one.
    spec : SyntheticSpec
        Acquisition parameters, shared by all slices.
    n_slices : int
        Number of slices, ids ``first_slice ..``.
    ngff_version : {"0.4", "0.5"}
        Store format; 0.5 stores are zarr v3, sharded (4x4 tiles per shard) when ``sharded``.
    sharded : bool
        Shard NGFF 0.5 stores (ignored for 0.4).
    tile_shape_attr : bool or None
        Write the ``tile_shape`` root attribute; by default only for NGFF 0.4 (as upstream does).
    first_slice : int
        Id of the first slice.
    save_scenes : bool
        Also save each slice's clean central scene plane as ``truth_scenes/scene_z{NN}.npy``.

    Returns
    -------
    dict
        The content of ``truth.json``.
    """
    out_dir = outputs.check_output_name(out_dir)
    store = next((p for p in [out_dir, *out_dir.absolute().parents]
                  if p.name.endswith(".ome.zarr") or any((p / name).is_file() for name in outputs.ZARR_METADATA)), None)
    if store is not None:  # the slices would be written inside an image
        where = "is a zarr store" if store == out_dir else f"lies inside the zarr store {store}"
        raise InputError(out_dir, f"{where}; give the folder to write the slices into")
    if n_slices < 1:
        raise InputError(None, f"the number of slices must be >= 1, got {n_slices}")
    ids = range(first_slice, first_slice + n_slices)
    names = {slice_id: f"mosaic_grid_3d_z{slice_id:02d}.ome.zarr" for slice_id in ids}
    for target in [*names.values(), "truth.json", *(["truth_scenes"] if save_scenes else [])]:
        outputs.check_replaceable(out_dir / target, "synth")  # before writing anything: never a real acquisition
    out_dir.mkdir(parents=True, exist_ok=True)
    if tile_shape_attr is None:
        tile_shape_attr = ngff_version == "0.4"
    A = true_transform(spec)
    nz, h, w = spec.tile_shape
    slices, scenes = {}, {}
    for slice_id, name in names.items():
        volume, truth, scene_plane = make_slice(spec, seed=spec.seed * 1000 + slice_id)
        shards = (nz, 4 * h, 4 * w) if sharded and ngff_version == "0.5" else None
        extra = {"tile_shape": [nz, h, w]} if tile_shape_attr else None
        with outputs.atomic_output(out_dir / name, "synth") as tmp:
            ngff.write_image(tmp, volume, chunks=(nz, h, w), version=ngff_version, shards=shards,
                             scale=(0.2, 0.003, 0.003), extra_attrs=extra)
        if save_scenes:
            scenes[f"scene_z{slice_id:02d}.npy"] = scene_plane
            truth["scene"] = f"truth_scenes/scene_z{slice_id:02d}.npy"
        slices[str(slice_id)] = {"path": name, **truth}
    if save_scenes:
        with outputs.atomic_output(out_dir / "truth_scenes", "synth") as tmp:
            tmp.mkdir()
            for scene_name, plane in scenes.items():
                np.save(tmp / scene_name, plane)
    theta = math.atan2(-A[0, 1], A[1, 1])
    phi = math.atan2(A[0, 0], A[1, 0]) + theta
    spec_dict = asdict(spec)
    truth = {
        "transform": A.tolist(),
        "theta_deg": math.degrees(theta),
        "phi_deg": math.degrees(phi),
        "overlap": spec.overlap,
        "tile_shape": list(spec.tile_shape),
        "grid": [spec.nx, spec.ny],
        "ngff_version": ngff_version,
        "sharded": bool(sharded and ngff_version == "0.5"),
        "spec": {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec_dict.items()},
        "slices": slices,
    }
    outputs.write_json(out_dir / "truth.json", truth, "synth")
    return json.loads((out_dir / "truth.json").read_text())
