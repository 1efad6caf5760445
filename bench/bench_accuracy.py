"""Accuracy of the motor matrix against synthetic ground truth, for us and the peers.

Each scenario is a few synthetic slices (one shared motor matrix, per-tile jitter). Ours pools
every slice's pairs into one fit; a peer's per-slice matrices are averaged, the same pooling.
Two jitter floors: least squares of the TRUE (jittered) tile positions against the tile indices,
and our robust fit given the TRUE neighbour displacements.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

import numpy as np
import peers

from linumpy_motor import synthetic
from linumpy_motor.io.records import pair_table
from linumpy_motor.register.fit import fit_pooled
from linumpy_motor.register.geometry import grid_indices


@dataclass(frozen=True)
class Scenario:
    """A named difficulty: changes to the base synthetic spec."""

    name: str
    changes: dict
    seed: int


SCENARIOS = (
    Scenario("20 % overlap (base)", {}, 1),
    Scenario("10 % overlap", {"overlap": 0.1}, 2),
    Scenario("30 % overlap", {"overlap": 0.3}, 3),
    Scenario("noise 0.2 (4x)", {"noise": 0.2}, 4),
    Scenario("sparse tissue (40 %)", {"tissue_fraction": 0.4}, 5),
    Scenario("3 bad tiles", {"bad_tiles": 3}, 6),
)
BASE_SPEC = synthetic.SyntheticSpec(nx=6, ny=7, tile_shape=(1, 160, 160))

PeerFn = Callable[[np.ndarray, int, int, float], peers.ToolResult]
PEER_CONFIGS: tuple[tuple[str, str, PeerFn], ...] = (
    ("m2stitch (ncc 0.5, default)", "m2stitch", lambda p, nx, ny, ov: peers.m2stitch(p, nx, ny, ov)),
    ("m2stitch (ncc 0.1, tuned)", "m2stitch", lambda p, nx, ny, ov: peers.m2stitch(p, nx, ny, ov, ncc_threshold=0.1)),
    ("ASHLAR (filter_sigma 0, default)", "ashlar", lambda p, nx, ny, ov: peers.ashlar(p, nx, ny, ov)),
    ("ASHLAR (filter_sigma 1, tuned)", "ashlar", lambda p, nx, ny, ov: peers.ashlar(p, nx, ny, ov, filter_sigma=1.0)),
)
OURS = "linumpy-motor (pooled)"
FLOOR = "floor: LSQ of true positions"
PAIR_FLOOR = "floor: our fit of true pair displacements"


def model_rms_px(A: np.ndarray, A_true: np.ndarray, nx: int, ny: int) -> float:
    """RMS distance (px) between the tile positions of two models over a grid, common offset removed."""
    ij = grid_indices(nx, ny)
    ij -= ij.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum((ij @ (A - A_true).T) ** 2, axis=1))))


def tile_rms_px(positions: np.ndarray, truth_positions: np.ndarray) -> float:
    """RMS distance (px) between a tool's tile positions and the true ones, common offset removed."""
    d = np.asarray(positions, dtype=float) - np.asarray(truth_positions, dtype=float)
    d -= d.mean(axis=0)
    return float(np.sqrt(np.mean(np.sum(d**2, axis=1))))


def true_pairs(positions: np.ndarray, nx: int, ny: int) -> list[dict]:
    """Every horizontal and vertical neighbour pair with its TRUE displacement (NCC 1)."""
    positions = np.asarray(positions, dtype=float).reshape(nx, ny, 2)
    pairs = []
    for i in range(nx):
        for j in range(ny):
            for di, dj in ((0, 1), (1, 0)):
                if i + di < nx and j + dj < ny:
                    dy, dx = positions[i + di, j + dj] - positions[i, j]
                    pairs.append({"tile": [i, j], "row_delta": di, "col_delta": dj,
                                  "measured_dy": float(dy), "measured_dx": float(dx), "ncc": 1.0})
    return pairs


def _row(scenario: str, tool: str, A: np.ndarray | None, A_true: np.ndarray, spec, ok: int, n: int,
         tile_rms: list[float], seconds: float, note: str = "") -> dict:
    return {
        "scenario": scenario, "tool": tool, "slices_ok": f"{ok}/{n}",
        "max_abs_dA_px": None if A is None else float(np.abs(A - A_true).max()),
        "model_rms_px": None if A is None else model_rms_px(A, A_true, spec.nx, spec.ny),
        "tile_rms_px": float(np.mean(tile_rms)) if tile_rms else None,
        "seconds": seconds, "note": note,
    }


def run_scenario(scenario: Scenario, n_slices: int, installed: Mapping[str, str | None],
                 log: Callable[[str], None] = print) -> list[dict]:
    """Rows of one scenario: the two floors, ours, and every peer configuration (``installed``: peer versions)."""
    spec = replace(BASE_SPEC, seed=scenario.seed, **scenario.changes)
    A_true = synthetic.true_transform(spec)
    slices = [synthetic.make_slice(spec, seed=spec.seed * 1000 + k)[:2] for k in range(n_slices)]
    planes = [volume[spec.tile_shape[0] // 2] for volume, _ in slices]
    truths = [np.asarray(truth["positions"]) for _, truth in slices]
    floor = np.mean([peers.fit_grid_transform(p, spec.nx, spec.ny) for p in truths], axis=0)
    pair_floor = fit_pooled({k: pair_table(true_pairs(p, spec.nx, spec.ny)) for k, p in enumerate(truths)},
                            {k: (spec.nx, spec.ny) for k in range(n_slices)}, spec.tile_shape, spec.overlap)[0].matrix
    rows = [_row(scenario.name, FLOOR, floor, A_true, spec, n_slices, n_slices, [], 0.0),
            _row(scenario.name, PAIR_FLOOR, pair_floor, A_true, spec, n_slices, n_slices, [], 0.0)]
    start = time.perf_counter()
    result = peers.ours(planes, spec.nx, spec.ny, spec.overlap)
    ours_positions = grid_indices(spec.nx, spec.ny) @ result.transform.T
    rows.append(_row(scenario.name, OURS, result.transform, A_true, spec, n_slices, n_slices,
                     [tile_rms_px(ours_positions, t) for t in truths], time.perf_counter() - start))
    for name, package, fn in PEER_CONFIGS:
        if not installed[package]:
            rows.append(_row(scenario.name, name, None, A_true, spec, 0, n_slices, [], 0.0, "not installed"))
            continue
        start = time.perf_counter()
        results = [fn(plane, spec.nx, spec.ny, spec.overlap) for plane in planes]
        good = [(r, t) for r, t in zip(results, truths) if r.transform is not None]
        notes = sorted({r.error or r.note for r in results if r.error or r.note})
        A = np.mean([r.transform for r, _ in good], axis=0) if good else None
        rows.append(_row(scenario.name, name, A, A_true, spec, len(good), n_slices,
                         [tile_rms_px(r.positions, t) for r, t in good], time.perf_counter() - start,
                         "; ".join(notes)))
    log(f"  [accuracy] {scenario.name}: max |dA| px: " + ", ".join(
        f"{r['tool']} {r['max_abs_dA_px']:.3f}" if r["max_abs_dA_px"] is not None else f"{r['tool']} failed"
        for r in rows))
    return rows


def run(installed: Mapping[str, str | None], n_slices: int = 3, scenarios: tuple[Scenario, ...] = SCENARIOS,
        log: Callable[[str], None] = print) -> list[dict]:
    """Accuracy rows of every scenario (see :func:`run_scenario`).

    Parameters
    ----------
    installed : mapping
        Peer name (``m2stitch``, ``ashlar``) to its version, None to leave it out.
    n_slices : int
        Slices per scenario.
    scenarios : tuple of Scenario
        The difficulties to run.
    log : callable
        Progress printer.

    Returns
    -------
    list of dict
        ``scenario``, ``tool``, ``slices_ok``, ``max_abs_dA_px``, ``model_rms_px``, ``tile_rms_px``,
        ``seconds``, ``note``.
    """
    return [row for scenario in scenarios for row in run_scenario(scenario, n_slices, installed, log)]
