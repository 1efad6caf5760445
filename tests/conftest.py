"""Shared, session-scoped synthetic datasets (written once under ``tmp_path_factory``).

Every dataset comes from :mod:`linumpy_motor.synthetic` with its ground truth (``truth.json``):
tests compare what the library measures with that truth, never with the library's own output.

Fixtures
--------
make_synthetic_dataset
    Factory ``make(spec, n_slices=..., ngff_version=..., sharded=..., ...)`` returning a cached
    :class:`SyntheticDataset` (the same arguments give the same folder, written once per session).
synthetic_dataset_v05
    3 slices of 6x7 tiles of 3x160x160 px, the :class:`SyntheticSpec` defaults otherwise
    (20 % overlap, θ = 1.5°, axes 0.8° off perpendicular, 0.3 px jitter, speckle, vignetting,
    noise), NGFF 0.5 (zarr v3, sharded, no ``tile_shape`` attribute).
synthetic_dataset_v05_bad_tiles
    The same with 2 tiles per slice spoiled (one replaced by background, one by another tile).
synthetic_dataset_small
    2 slices of 3x2 tiles of 3x96x128 px (non-square on purpose), all tissue, NGFF 0.5 sharded:
    for quick checks of reading and plumbing, not of accuracy.
synthetic_pairs_v05
    ``{slice_id: measured pairs}`` of ``synthetic_dataset_v05`` (central plane, default options).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from linumpy_motor.io.grid import open_mosaic
from linumpy_motor.register.measure import measure_mosaic
from linumpy_motor.synthetic import SyntheticSpec, make_slice, write_dataset

DEFAULT_TILE = (3, 160, 160)
DEFAULT_SPEC = SyntheticSpec(tile_shape=DEFAULT_TILE)


@dataclass(frozen=True)
class SyntheticDataset:
    """A synthetic dataset on disk and its ground truth."""

    root: Path
    spec: SyntheticSpec
    truth: dict

    @property
    def transform(self) -> np.ndarray:
        """The true 2x2 motor matrix A."""
        return np.array(self.truth["transform"], dtype=float)

    @property
    def slice_ids(self) -> list[int]:
        """Slice ids, sorted."""
        return sorted(int(s) for s in self.truth["slices"])

    @property
    def volumes(self) -> list[tuple[int, Path]]:
        """``(slice_id, path)`` of every slice, as the motor API takes them."""
        return [(sid, self.path(sid)) for sid in self.slice_ids]

    def path(self, slice_id: int) -> Path:
        """The ``*.ome.zarr`` store of a slice."""
        return self.root / self.truth["slices"][str(slice_id)]["path"]

    def positions(self, slice_id: int) -> np.ndarray:
        """True top-left positions ``(nx * ny, 2)`` of a slice's tiles, row-major (jitter included)."""
        return np.array(self.truth["slices"][str(slice_id)]["positions"], dtype=float)

    def bad_tiles(self, slice_id: int) -> list[tuple[int, int, str]]:
        """Spoiled tiles of a slice as ``(i, j, kind)``."""
        return [tuple(t) for t in self.truth["slices"][str(slice_id)]["bad_tiles"]]


@pytest.fixture(scope="session")
def make_synthetic_dataset(tmp_path_factory):
    """Factory of cached synthetic datasets; see the module docstring."""
    cache: dict[str, SyntheticDataset] = {}

    def make(spec: SyntheticSpec = DEFAULT_SPEC, *, n_slices: int = 3,
             ngff_version: str = "0.5", sharded: bool = True, tile_shape_attr: bool | None = None,
             first_slice: int = 0, save_scenes: bool = False) -> SyntheticDataset:
        key = repr((spec, n_slices, ngff_version, sharded, tile_shape_attr, first_slice, save_scenes))
        if key not in cache:
            root = tmp_path_factory.mktemp("synthetic")
            write_dataset(root, spec, n_slices=n_slices, ngff_version=ngff_version, sharded=sharded,
                          tile_shape_attr=tile_shape_attr, first_slice=first_slice, save_scenes=save_scenes)
            cache[key] = SyntheticDataset(root, spec, json.loads((root / "truth.json").read_text()))
        return cache[key]

    return make


@pytest.fixture(scope="session")
def synthetic_dataset_v05(make_synthetic_dataset) -> SyntheticDataset:
    """3 slices of 6x7 default synthetic tiles (3 planes), NGFF 0.5 sharded; clean scenes saved."""
    return make_synthetic_dataset(DEFAULT_SPEC, save_scenes=True)


@pytest.fixture(scope="session")
def synthetic_dataset_v05_bad_tiles(make_synthetic_dataset) -> SyntheticDataset:
    """Like ``synthetic_dataset_v05`` with 2 spoiled tiles per slice (about 11 % of the pairs wrong)."""
    return make_synthetic_dataset(SyntheticSpec(tile_shape=DEFAULT_TILE, bad_tiles=2))


@pytest.fixture(scope="session")
def synthetic_dataset_small(make_synthetic_dataset) -> SyntheticDataset:
    """2 slices of 3x2 tiles of 3x96x128 px, all tissue, NGFF 0.5 sharded (quick plumbing checks)."""
    return make_synthetic_dataset(SyntheticSpec(nx=3, ny=2, tile_shape=(3, 96, 128), tissue_fraction=1.0), n_slices=2)


@pytest.fixture(scope="session")
def synthetic_pairs_v05(synthetic_dataset_v05) -> dict[int, list[dict]]:
    """Measured pairs of every slice of ``synthetic_dataset_v05`` (central plane, default options)."""
    return {sid: measure_mosaic(open_mosaic(path), synthetic_dataset_v05.spec.overlap)[0]
            for sid, path in synthetic_dataset_v05.volumes}


def true_pair_displacement(pair: dict, positions: np.ndarray, ny: int) -> np.ndarray:
    """True (dy, dx) of a pair's neighbour relative to its tile, from the truth positions."""
    i, j = pair["tile"]
    first = i * ny + j
    second = (i + pair["row_delta"]) * ny + j + pair["col_delta"]
    return positions[second] - positions[first]


def pairs_from_positions(positions: np.ndarray, nx: int, ny: int, ncc: float = 1.0) -> list[dict]:
    """Exact pair dicts (all horizontal, then all vertical neighbours) of tiles at ``positions``."""
    positions = np.asarray(positions, dtype=float).reshape(nx * ny, 2)
    pairs = []
    for row_delta, col_delta in ((0, 1), (1, 0)):
        for i in range(nx - row_delta):
            for j in range(ny - col_delta):
                dy, dx = positions[(i + row_delta) * ny + j + col_delta] - positions[i * ny + j]
                pairs.append({"tile": [i, j], "row_delta": row_delta, "col_delta": col_delta,
                              "measured_dy": float(dy), "measured_dx": float(dx), "ncc": ncc})
    return pairs


def grid_positions(A: np.ndarray, nx: int, ny: int) -> np.ndarray:
    """``A @ [i, j]`` for every tile, row-major, ``(nx * ny, 2)`` (no shift)."""
    ij = np.array([(i, j) for i in range(nx) for j in range(ny)], dtype=float).reshape(-1, 2)
    return ij @ np.asarray(A, dtype=float).T


SMALL = SyntheticSpec(nx=3, ny=4, tile_shape=(3, 160, 160), tissue_fraction=1.0)
"""A small in-memory slice for the reference API's tests (tests/test_motor_api.py, tests/test_motor_contract.py)."""


@pytest.fixture(scope="module")
def small_slice():
    """A :data:`SMALL` slice volume and its true tile positions, made once per test module."""
    volume, truth, _ = make_slice(SMALL, seed=5)
    return volume, np.array(truth["positions"])
