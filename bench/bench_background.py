#!/usr/bin/env python3
"""What the background test should do (issue 21): skip the pairs it finds no better than chance, or
hand every pair to the robust fit and keep the test for the report.

The library hands every pair to the fit and marks the ones the test rejects (``background``); ``skip``
is what it did before. Mosaics cut from real photographs (``realmosaic``, which shares no code with the
library), with the speckle that decorrelates between the two acquisitions of an overlap (``tile_speckle``, the standard
deviation of each tile's own multiplicative speckle: 0.1 as in the real-image benchmark, 0.5, and
1.0 for fully developed, independent speckle), with tissue on the whole grid or on 40 % of it in
agarose, and with bad tiles in the tissue (blank, missing, saturated, swapped, moved); plus the
demo's synthetic slices with ``--bad-tiles``. Each draw's slices are measured with the library's
defaults; the pairs the test rejects are then either left out (``skip``) or kept (``fit``), the
pooled model is fitted, and the QC verdict (:func:`linumpy_motor.qc.verdict.judge`) is taken.

Per scenario and way: mean max |A - A_true| (px) against the floor (the least-squares A of the true
tile positions), the pairs the fit got, slices CHECK or FAILED among the clean ones (false alarms),
and the spoiled tiles the verdict named.

``python bench/bench_background.py [--draws N] [--out bench/results_background.md]``
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import realmosaic as rm

from linumpy_motor import synthetic
from linumpy_motor.io.records import pair_dicts
from linumpy_motor.io.schemas import PairsFile, TransformFile
from linumpy_motor.qc.inputs import ReportInputs
from linumpy_motor.qc.verdict import OK, judge
from linumpy_motor.register.fit import fit_pooled
from linumpy_motor.register.measure import measure_volume

BENCH = Path(__file__).resolve().parent
BASE = rm.RealSpec(nx=6, ny=7, tile_hw=(128, 128), nz=2)
WAYS = ("skip", "fit")
"""``skip``: the pairs the background test rejects are left out of the fit; ``fit``: every pair goes to it."""
SPOILS = ("blank", "missing", "saturated", "swapped", "moved")


@dataclass(frozen=True)
class Scenario:
    """Changes to the base spec, photographs, and the tiles spoiled per slice."""

    name: str
    changes: dict = field(default_factory=dict)
    photos: tuple[str, ...] = ("gravel", "brick", "hubble", "ihc", "retina")
    spoils: tuple[str, ...] = ()
    demo_bad_tiles: int | None = None  # the demo's synthetic slices with this many --bad-tiles instead


SCENARIOS = (
    Scenario("clean"),
    Scenario("tissue on 40 %", {"tissue_fraction": 0.4}, ("ihc", "retina", "gravel")),
    Scenario("own speckle 0.5", {"tile_speckle": 0.5}),
    Scenario("own speckle 1.0", {"tile_speckle": 1.0}),
    Scenario("own speckle 1.0, 40 %", {"tile_speckle": 1.0, "tissue_fraction": 0.4}, ("ihc", "retina", "gravel")),
    Scenario("bad tiles", {}, spoils=SPOILS),
    Scenario("bad tiles, 40 %", {"tissue_fraction": 0.4}, ("ihc", "retina", "gravel"), spoils=SPOILS[:3]),
    Scenario("bad tiles, own speckle 0.5", {"tile_speckle": 0.5}, spoils=SPOILS),
    Scenario("demo", demo_bad_tiles=0),
    Scenario("demo --bad-tiles 4", demo_bad_tiles=4),
    Scenario("demo --bad-tiles 8", demo_bad_tiles=8),
)


def spoil(volume: np.ndarray, tile_hw: tuple[int, int], spoils: dict[tuple[int, int], str],
          rng: np.random.Generator) -> np.ndarray:
    """The volume with tiles spoiled: ``blank`` (noise only), ``missing`` (zeros, as a lost chunk reads),
    ``saturated`` (gain x20, clipped at the volume's maximum), ``swapped`` (another tile's content, two
    or more steps away), ``moved`` (its own content rolled by half a tile: imaged elsewhere)."""
    out = volume.copy()
    h, w = tile_hw
    nx, ny = volume.shape[1] // h, volume.shape[2] // w
    top = float(volume.max())
    for (i, j), kind in spoils.items():
        tile = (slice(None), slice(i * h, (i + 1) * h), slice(j * w, (j + 1) * w))
        if kind == "blank":
            out[tile] = np.abs(rng.normal(0.0, 0.03, out[tile].shape))
        elif kind == "missing":
            out[tile] = 0.0
        elif kind == "saturated":
            out[tile] = np.minimum(volume[tile] * 20, top)
        elif kind == "swapped":
            far = [(a, b) for a in range(nx) for b in range(ny) if abs(a - i) + abs(b - j) > 2]
            a, b = far[rng.integers(len(far))]
            out[tile] = volume[:, a * h:(a + 1) * h, b * w:(b + 1) * w]
        else:
            out[tile] = np.roll(volume[tile], (h // 2, w // 2), axis=(1, 2))
    return out


def _real_draw(scenario: Scenario, seed: int):
    spec = rm.RealSpec(**{**BASE.__dict__, **scenario.changes, "photo": scenario.photos[seed % len(scenario.photos)]})
    draw = rm.make_draw(spec, seed=seed, n_slices=2)
    rng = np.random.default_rng([seed, 7])
    slices = []
    for s in draw.slices:
        spoils: dict[tuple[int, int], str] = {}
        if scenario.spoils:
            inner = [divmod(int(k), spec.ny) for k in np.flatnonzero(s.tissue > 0.9)]
            inner = [(i, j) for i, j in inner if 0 < i < spec.nx - 1 and 0 < j < spec.ny - 1]
            chosen = rng.choice(len(inner), size=min(len(scenario.spoils), len(inner)), replace=False)
            spoils = {inner[k]: kind for k, kind in zip(chosen, scenario.spoils)}
        slices.append((spoil(s.volume, spec.tile_hw, spoils, rng), spoils))
    return (spec.nz, *spec.tile_hw), (spec.nx, spec.ny), spec.overlap, draw.stage.A_true, draw.floor, slices


def _demo_draw(scenario: Scenario, seed: int):
    spec = synthetic.SyntheticSpec(seed=seed + 1, bad_tiles=scenario.demo_bad_tiles or 0)
    slices = []
    for k in range(2):
        volume, truth, _ = synthetic.make_slice(spec, seed=spec.seed * 1000 + k)
        slices.append((volume, {(i, j): kind for i, j, kind in truth["bad_tiles"]}))
    A = synthetic.true_transform(spec)
    return spec.tile_shape, (spec.nx, spec.ny), spec.overlap, A, None, slices


def _inputs(files: dict[int, PairsFile], A: np.ndarray, diagnostics: dict) -> ReportInputs:
    transform = TransformFile(transform=A.tolist(), backlash=diagnostics["backlash_px"], diagnostics=diagnostics)
    per_slice = {int(k): v for k, v in diagnostics["per_slice"].items()}
    return ReportInputs(transform, files, {}, {}, per_slice, Path("motor_transform.json"))


def run_draw(scenario: Scenario, seed: int) -> dict[str, dict]:
    """One draw, measured once, fitted and judged each way."""
    tile_shape, (nx, ny), overlap, A_true, floor, slices = (_demo_draw if scenario.demo_bad_tiles is not None
                                                            else _real_draw)(scenario, seed)
    measured = {}
    for k, (volume, _) in enumerate(slices):
        def read(zs, rows, cols, volume=volume):
            return np.asarray(volume[zs, rows, cols], dtype=np.float32)
        measured[k] = measure_volume(read, tile_shape, nx, ny, overlap)
    found = {}
    for way in WAYS:
        files = {}
        for k, (table, skipped, stats) in measured.items():
            pairs = pair_dicts(table)
            kept = [p for p in pairs if not (way == "skip" and p["background"])]
            skipped = skipped + [{**p, "reason": "background"} for p in pairs if way == "skip" and p["background"]]
            files[k] = PairsFile(version="bench", slice_id=k, source=f"z{k}", tile_shape=tile_shape, grid=(nx, ny),
                                 overlap=overlap, z=stats["z"], pairs=kept, skipped=skipped, stats=stats)
        try:
            model, diagnostics = fit_pooled({k: f.table() for k, f in files.items()},
                                            {k: (nx, ny) for k in files}, tile_shape, overlap)
            A = model.matrix
        except Exception as exc:  # too few pairs: the way failed on this draw
            found[way] = {"error": f"{type(exc).__name__}: {exc}"}
            continue
        verdicts = judge(_inputs(files, A, diagnostics))
        spoiled = [set(spoils) for _, spoils in slices]
        named = [{tuple(t.tile) for t in verdicts[k].evidence.tiles} for k in range(len(slices))]
        clean = [k for k in range(len(slices)) if not spoiled[k]]
        found[way] = {
            "error_px": float(np.abs(A - A_true).max()),
            "floor_px": None if floor is None else float(np.abs(floor - A_true).max()),
            "pairs": sum(len(f.pairs) for f in files.values()),
            "false_alarms": sum(verdicts[k].status != OK for k in clean), "clean": len(clean),
            "spoiled": sum(len(s) for s in spoiled), "caught": sum(len(s & n) for s, n in zip(spoiled, named)),
            "spoiled_slices_ok": sum(verdicts[k].status == OK for k in range(len(slices)) if spoiled[k]),
            "wrongly_named": sum(len(n - s) for s, n in zip(spoiled, named)),
            "reasons": {k: verdicts[k].reasons for k in range(len(slices)) if verdicts[k].status != OK},
        }
    return found


def summarise(results: dict[str, list[dict]]) -> list[str]:
    """The markdown table of the results."""
    lines = ["| scenario | way | max \\|A − A_true\\| (px) | floor | pairs fitted | clean slices not ok | "
             "spoiled tiles named | wrongly named | spoiled slices ok | fit failed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, draws in results.items():
        for way in WAYS:
            done = [d[way] for d in draws if "error" not in d[way]]
            failed = len(draws) - len(done)

            def total(key: str, done: list[dict] = done) -> int:
                return sum(d[key] for d in done)

            floors = [d["floor_px"] for d in done if d["floor_px"] is not None]
            error = f"{np.mean([d['error_px'] for d in done]):.3f}" if done else "—"
            lines.append(f"| {name} | {way} | {error} | {f'{np.mean(floors):.3f}' if floors else '—'} | "
                         f"{total('pairs')} | {total('false_alarms')} of {total('clean')} | "
                         f"{total('caught')} of {total('spoiled')} | {total('wrongly_named')} | "
                         f"{total('spoiled_slices_ok')} | {failed} of {len(draws)} |")
    return lines


def main(argv: list[str] | None = None) -> int:
    """Run every scenario; print the table and write it (and the reasons of every slice not ok) to ``--out``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--draws", type=int, default=3, help="draws per scenario (2 slices each)")
    parser.add_argument("--only", nargs="*", help="scenario names to run")
    parser.add_argument("--out", type=Path, default=BENCH / "results_background.md")
    args = parser.parse_args(argv)
    results: dict[str, list[dict]] = {}
    start = time.time()
    chosen = [s for s in SCENARIOS if not args.only or s.name in args.only]
    for scenario in chosen:
        results[scenario.name] = [run_draw(scenario, seed) for seed in range(args.draws)]
        print(f"[{time.time() - start:6.1f} s] {scenario.name}", file=sys.stderr, flush=True)
    table = summarise(results)
    notes = [f"- {name}, draw {n}, {way}, slice {k}: {'; '.join(reasons)}"
             for name, draws in results.items() for n, d in enumerate(draws) for way in WAYS
             for k, reasons in d[way].get("reasons", {}).items()]
    errors = [f"- {name}, draw {n}, {way}: {d[way]['error']}" for name, draws in results.items()
              for n, d in enumerate(draws) for way in WAYS if "error" in d[way]]
    text = "\n".join(["# Background test: skip the pairs or hand them to the fit", "",
                      f"{args.draws} draws of 2 slices per scenario, {time.time() - start:.0f} s.", "", *table, "",
                      "Slices not ok, and why:", "", *notes, *([""] + ["Fits that failed:", ""] + errors if errors
                                                               else [])]) + "\n"
    print("\n".join(table))
    args.out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
