#!/usr/bin/env python3
"""Run every benchmark and write the results table (``make bench``).

The peers (m2stitch, ASHLAR) are installed from PyPI into their own virtual environment,
``bench/_work/peers-venv`` (with this package, editable), so their pins cannot touch the project's
environment; the script then re-runs itself there, so all tools are timed in one process.
``--quick`` is a smoke version (a few minutes); ``--no-peers`` skips the peer environment;
``--only real`` runs just the real-image benchmark (``bench/bench_real.py``).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / "_work"
PEERS_VENV = WORK / "peers-venv"
REQUIREMENTS = BENCH / "requirements-peers.txt"
BLAS_THREAD_VARIABLES = ("OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OMP_NUM_THREADS")
IN_PEERS_ENV = "LINUMPY_MOTOR_BENCH_IN_PEERS_VENV"
START_ENV = "LINUMPY_MOTOR_BENCH_START"
PEER_NAMES = {"m2stitch": "m2stitch", "ashlar": "ASHLAR"}
SPEED_TARGET = 5.0
ACCURACY_TOLERANCE_PX = 0.005
STITCH_TARGET = 0.7
MEMORY_FLAT_RATIO = 1.3
MEMORY_FLAT_FROM_MB = 1000  # the memory target compares slices of 1 GB and more
SCALING_TARGET = 1.6
GPU_STITCH_TARGET = 1.5


def log(message: str) -> None:
    """Print a progress line with the time since the start of ``make bench``."""
    elapsed = time.time() - float(os.environ.get(START_ENV, time.time()))
    print(f"[{elapsed:6.1f} s] {message}", flush=True)


def ensure_peers_venv() -> Path | None:
    """Create (once) the peers' virtual environment; its Python, or None when it cannot be made."""
    python = PEERS_VENV / "bin" / "python"
    key = hashlib.sha256(REQUIREMENTS.read_bytes() + (ROOT / "pyproject.toml").read_bytes()).hexdigest()
    stamp = PEERS_VENV / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text() == key:
        return python
    log(f"installing the peers ({', '.join(REQUIREMENTS.read_text().split())}) and this package into "
        f"{PEERS_VENV.relative_to(ROOT)} (once; a few minutes)")
    try:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(PEERS_VENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-qq", "--disable-pip-version-check", "-e", str(ROOT),
                        "-r", str(REQUIREMENTS)], check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        log(f"NOTE: could not install the peers ({exc}); they will show as 'not installed'")
        return None
    stamp.write_text(key)
    return python


def machine() -> str:
    """CPU model, core count and memory of this machine."""
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown CPU")
    mem_kb = next((int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal")), 0)
    return f"{cpu}, {os.cpu_count()} cores, {mem_kb / 2**20:.0f} GiB RAM, {platform.system()} {platform.release()}"


def versions(installed: dict[str, str | None]) -> str:
    """Versions of the packages that matter to the numbers."""
    found = {"python": platform.python_version()}
    for name in ("linumpy-motor", "numpy", "scipy"):
        found[name] = importlib.metadata.version(name)
    found.update({name: version or "not installed" for name, version in installed.items()})
    return ", ".join(f"{name} {version}" for name, version in found.items())


def fmt(value, digits: int = 3) -> str:
    """A table cell: numbers to ``digits`` significant figures, None as a dash."""
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.1e}"
    return str(value).replace("|", "/")


def table(rows: Sequence[dict], columns: Sequence[tuple[str, str]], digits: int = 3) -> list[str]:
    """Markdown table of ``rows``; ``columns`` are (key, header) pairs."""
    lines = ["| " + " | ".join(header for _, header in columns) + " |",
             "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(row.get(key), digits) for key, _ in columns) + " |" for row in rows]
    return lines


def speed_verdict(speed: list[dict], installed: dict) -> tuple[bool | None, str]:
    """Is measure + fit (ours, in memory) at least SPEED_TARGET times faster than the faster ASHLAR setting
    at every mosaic size, and how do m2stitch and our accuracy compare?"""
    ratios = [(row["grid"], row["best_ashlar_ratio"]) for row in speed if row.get("best_ashlar_ratio") is not None]
    if not installed.get("ashlar") or not ratios:
        return None, "ASHLAR not timed"
    ok = min(r for _, r in ratios) >= SPEED_TARGET
    parts = ["faster ASHLAR setting / ours: " + ", ".join(f"{grid} {r:.1f}x" for grid, r in ratios)]
    cpu = [(row["grid"], row["best_ashlar_cpu_ratio"]) for row in speed if row.get("best_ashlar_cpu_ratio") is not None]
    if cpu:
        parts.append("in CPU time (ours on the machine's cores, ASHLAR on one): "
                     + ", ".join(f"{grid} {r:.1f}x" for grid, r in cpu))
    m2 = [(row["grid"], row["m2stitch_ratio"]) for row in speed if row.get("m2stitch_ratio") is not None]
    if m2:
        parts.append("m2stitch / ours: " + ", ".join(f"{grid} {r:.1f}x" for grid, r in m2))
    parts.append("ours max |ΔA| " + ", ".join(f"{row['grid']} {fmt(row['ours_err_px'])} px" for row in speed
                                              if row.get("ours_err_px") is not None))
    return ok, "; ".join(parts)


def accuracy_verdict(accuracy: list[dict]) -> tuple[bool | None, str]:
    """Is our max |ΔA| within ACCURACY_TOLERANCE_PX of (or below) the best peer's in every scenario?"""
    import bench_accuracy

    wins, losses = 0, []
    for scenario in dict.fromkeys(row["scenario"] for row in accuracy):
        rows = [r for r in accuracy if r["scenario"] == scenario]
        ours = next(r for r in rows if r["tool"] == bench_accuracy.OURS)["max_abs_dA_px"]
        peer_rows = [r for r in rows if r["tool"] not in (bench_accuracy.OURS, bench_accuracy.FLOOR,
                                                          bench_accuracy.PAIR_FLOOR)
                     and r["max_abs_dA_px"] is not None
                     and r["slices_ok"].split("/")[0] == r["slices_ok"].split("/")[1]]
        if not peer_rows:
            wins += 1
            continue
        best = min(peer_rows, key=lambda r: r["max_abs_dA_px"])
        if ours <= best["max_abs_dA_px"] + ACCURACY_TOLERANCE_PX:
            wins += 1
        else:
            losses.append(f"{scenario}: ours {ours:.3f} px vs {best['tool']} {best['max_abs_dA_px']:.3f} px")
    n = wins + len(losses)
    text = f"equal or better than the best-tuned peer (±{ACCURACY_TOLERANCE_PX} px) in {wins}/{n} scenarios"
    return (not losses) if n else None, text + ("; behind in " + "; ".join(losses) if losses else "")


def stitch_verdicts(rows: list[dict], scaling: list[dict] = ()) -> list[tuple[str, bool | None, str]]:
    """Throughput, memory and core-scaling targets from ``bench_stitch.run()`` and ``scaling()`` rows.

    Throughput: ``stitch_vs_copy`` (copy seconds / stitch seconds on the same input) at every size.
    Memory: ``stitch_peak_mb`` of the largest input over that of the smallest of at least
    ``MEMORY_FLAT_FROM_MB``. Scaling: the best all-cores ``speedup`` over the repeats.
    """
    throughput = f"stitching ≥ {STITCH_TARGET:g}x plain-copy throughput with all cores"
    memory = f"peak stitch memory flat in slice size (1 GB and up: largest / smallest ≤ {MEMORY_FLAT_RATIO:g})"
    cores = f"stitch throughput ≥ {SCALING_TARGET:g}x from 1 core to 2"
    if not rows or not {"stitch_vs_copy", "stitch_peak_mb", "input_mb"} <= set(rows[0]):
        return [(label, None, "not evaluated: no stitch measurements") for label in (throughput, memory, cores)]
    ratios = [row["stitch_vs_copy"] for row in rows]
    sized = [r for r in rows if r["input_mb"] >= MEMORY_FLAT_FROM_MB] or rows
    small, large = min(sized, key=lambda r: r["input_mb"]), max(sized, key=lambda r: r["input_mb"])
    growth = large["stitch_peak_mb"] / small["stitch_peak_mb"]
    verdicts = [
        (throughput, min(ratios) >= STITCH_TARGET,
         f"stitch / copy {min(ratios):.2f}x to {max(ratios):.2f}x over {len(rows)} sizes "
         f"({min(r['input_mb'] for r in rows)} to {max(r['input_mb'] for r in rows)} MB of input)"),
        (memory, growth <= MEMORY_FLAT_RATIO,
         f"peak {small['stitch_peak_mb']:.0f} MB at {small['input_mb']:.0f} MB of input, "
         f"{large['stitch_peak_mb']:.0f} MB at {large['input_mb']:.0f} MB (x{growth:.2f})"),
    ]
    gpu = f"GPU stitching ≥ {GPU_STITCH_TARGET:g}x plain-copy throughput"
    if "gpu_vs_copy" in rows[0]:
        gpu_ratios = [row["gpu_vs_copy"] for row in rows]
        verdicts.append((gpu, min(gpu_ratios) >= GPU_STITCH_TARGET,
                         f"{min(gpu_ratios):.2f}x to {max(gpu_ratios):.2f}x over {len(rows)} sizes"))
    else:
        verdicts.append((gpu, None, "no CUDA device"))
    many = [r for r in scaling if r["cores"] > 1]
    if not many:
        verdicts.append((cores, None, "one core only"))
    else:
        speedups = [r["speedup"] for r in many]
        loads = [r["load"] for r in scaling]
        verdicts.append((cores, max(speedups) >= SCALING_TARGET,
                         f"{', '.join(f'{x:.2f}x' for x in speedups)} over {len(many)} repeats on {many[0]['cores']} "
                         f"cores (1-minute load average {min(loads):.1f} to {max(loads):.1f} before the runs: "
                         "other jobs on the machine lower it)"))
    return verdicts


def stitch_section(rows: list[dict], note: str | None) -> list[str]:
    """The stitch tables (``bench_stitch.run()`` and ``scaling()`` rows), or the note."""
    if note or not rows:
        return [note or "bench_stitch.run() returned no rows"]
    stitch_rows, scaling_rows = rows
    return ["Upstream-shaped slices (NGFF 0.5, one chunk per whole tile of 64x256x256 float32, shards of 2x2 "
            "tiles, zstd). The baseline is an honest copy: every shard of the input decoded and encoded into a "
            "new store with the same chunks, shards and codec, one shard per task on as many threads as the "
            "stitch gets. Copy and stitch each run in a fresh process, alternated in the same run, best wall "
            "time of each kept (see bench/bench_stitch.py); both MB/s are of the *input*, so *stitch_vs_copy* "
            "is copy seconds / stitch seconds. *cpu_s_* are the child's CPU seconds (user + system, all "
            "threads) over the work, *cores_* those over wall seconds, *load_* the 1-minute load average "
            "before the run (other work on the machine inflates wall times).", "",
            *table(stitch_rows, [(key, key) for key in stitch_rows[0]]), "",
            "Core scaling (CPU affinity of the child process):", "",
            *table(scaling_rows, [(key, key) for key in scaling_rows[0]])]


def run_stitch(workdir: Path, quick: bool) -> tuple[list[dict], str | None]:
    """Rows of ``bench/bench_stitch.py``'s ``run(workdir)``, or a note why there are none.

    It runs in a fresh interpreter: its children's peak memory (``ru_maxrss``) starts from the RSS of
    the process that forks them, which must not be this one with all its benchmark data.
    """
    if not (BENCH / "bench_stitch.py").exists():
        return [], "bench/bench_stitch.py is not there yet: stitch throughput and memory not measured"
    code = ("import json, sys; sys.path.insert(0, sys.argv[1]); import bench_stitch as b; "
            "quick = sys.argv[3] == '1'; "
            "rows = b.run(sys.argv[2], **({'sizes': b.QUICK_SIZES, 'repeats': 1} if quick else {})); "
            "scaling = b.scaling(sys.argv[2], **({'size': b.QUICK_SIZES[0], 'repeats': 1} if quick else {})); "
            "print(json.dumps([rows, scaling]))")
    done = subprocess.run([sys.executable, "-c", code, str(BENCH), str(workdir), "1" if quick else "0"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        return [], "bench_stitch.run() failed: " + " ".join(done.stderr.strip().splitlines()[-1:])
    return json.loads(done.stdout.strip().splitlines()[-1]), None  # [run rows, scaling rows]


def plot(accuracy: list[dict], speed: list[dict], n_slices: int, path: Path) -> None:
    """Accuracy per scenario and tool, floors as lines (left); one-slice time against grid size (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import bench_accuracy
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5))
    scenarios = list(dict.fromkeys(r["scenario"] for r in accuracy))
    floors = (bench_accuracy.FLOOR, bench_accuracy.PAIR_FLOOR)
    tools = [t for t in dict.fromkeys(r["tool"] for r in accuracy) if t not in floors]

    def values(tool: str) -> list[float]:
        found = [next((r["max_abs_dA_px"] for r in accuracy if r["scenario"] == s and r["tool"] == tool), None)
                 for s in scenarios]
        return [np.nan if v is None else max(v, 1e-4) for v in found]

    width = 0.8 / max(len(tools), 1)
    for k, tool in enumerate(tools):
        left.bar(np.arange(len(scenarios)) + (k - len(tools) / 2 + 0.5) * width, values(tool), width, label=tool)
    for floor, style in zip(floors, ("-", ":")):
        left.hlines(values(floor), np.arange(len(scenarios)) - 0.45, np.arange(len(scenarios)) + 0.45,
                    colors="black", linestyles=style, label=floor)
    left.set_yscale("log")
    left.set_xticks(np.arange(len(scenarios)), scenarios, rotation=20, ha="right", fontsize=8)
    left.set_ylabel("max |A − A_true| (px)")
    left.set_title(f"Motor matrix error, {n_slices} slices pooled (lower is better)")
    left.legend(fontsize=7)
    grids = [r["grid"] for r in speed]
    for key, label in (("ours_s", "linumpy-motor (in memory)"), ("ours_zarr_s", "linumpy-motor (zarr)"),
                       ("m2stitch_s", "m2stitch ncc 0.1"), ("ashlar_s0_s", "ASHLAR σ0"), ("ashlar_s1_s", "ASHLAR σ1")):
        if any(r.get(key) is not None for r in speed):
            right.plot(grids, [r.get(key) or np.nan for r in speed], "o-", label=label)
    right.set_yscale("log")
    right.set_xlabel("mosaic (tile rows x columns @ tile px; real-image mosaics)")
    right.set_ylabel("measure + fit, all slices (s, best call)")
    right.set_title("Speed (lower is better)")
    right.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def verdict_line(label: str, ok: bool | None, detail: str) -> str:
    """One 'target met / missed' line."""
    word = {True: "**target met**", False: "**target missed**", None: "**not evaluated**"}[ok]
    return f"- {label}: {word} — {detail}"


def report(args: argparse.Namespace, sections: dict, installed: dict, seconds: float) -> str:
    """The whole results page."""
    import bench_accuracy
    import bench_runner
    import bench_speed

    accuracy, speed = sections["accuracy"], sections["speed"]
    speed_sizes, speed_load = sections["speed_sizes"], sections["speed_load"]
    stitch_rows, stitch_note = sections["stitch"]
    runner_rows, runner_note = sections["runner"]
    speed_ok, speed_text = speed_verdict(speed, {n: v for n, v in installed.items() if v})
    accuracy_ok, accuracy_text = accuracy_verdict(accuracy)
    lines = [
        "# Benchmarks: linumpy-motor against m2stitch and ASHLAR",
        "",
        f"Generated by `{'python bench/run_all.py --quick' if args.quick else 'make bench'}` on "
        f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z} in {seconds:.0f} s "
        f"({'quick smoke run' if args.quick else 'full run'}, peers' installation included).",
        "",
        f"- Machine: {machine()}",
        f"- Versions: {versions(installed)}",
        "- All timings come from one process run; other jobs may share the machine, so compare the ratios "
        "within this run rather than absolute times across runs. BLAS runs on one thread for every tool "
        f"({', '.join(f'{v}={os.environ.get(v)}' for v in BLAS_THREAD_VARIABLES)}): on a busy 2-core machine "
        "BLAS threads only add contention (our sub-pixel refinement's small matrix products were 3x slower "
        "with two OpenBLAS threads).",
        "",
        "## Targets",
        "",
        verdict_line(f"measure + fit ≥ {SPEED_TARGET:g}x faster than the faster ASHLAR setting at every real-image "
                     "mosaic size (its accuracy beside)", speed_ok, speed_text),
        verdict_line("synthetic accuracy equal or better than the best-tuned peer in every scenario", accuracy_ok,
                     accuracy_text),
        *(verdict_line(*v) for v in stitch_verdicts(*(stitch_rows or ([], [])))),
        *(verdict_line(*v) for v in real_verdicts(sections["real"])),
        *(verdict_line(*v) for v in bench_runner.verdicts(runner_rows)),
        "",
        "## 1. Accuracy of the motor matrix (synthetic, known truth)",
        "",
        f"{bench_accuracy.BASE_SPEC.nx}x{bench_accuracy.BASE_SPEC.ny} tiles of "
        f"{bench_accuracy.BASE_SPEC.tile_shape[1]} px, θ {bench_accuracy.BASE_SPEC.theta_deg}°, "
        f"{bench_accuracy.BASE_SPEC.perpendicular_deviation_deg}° off perpendicular, "
        f"{bench_accuracy.BASE_SPEC.jitter_px} px tile jitter, {sections['n_slices']} slices per scenario. "
        "Ours pools all slices' pairs into one robust fit; a peer's A per slice (m2stitch: least squares of "
        "its tile positions against the tile indices; ASHLAR: its linear model `lr.coef_` times the nominal "
        "steps) is averaged over the slices it solved. *max |ΔA|*: largest entry of A − A_true. *model RMS*: "
        "RMS distance between the tile positions A·[i, j] and A_true·[i, j] over the grid (offset removed). "
        "*tile RMS*: the tool's own tile positions (ours: A·[i, j]) against the true jittered ones; a motor "
        "model cannot follow the jitter, so ours stays near the jitter. Two floors: least squares of the TRUE "
        "positions against the tile indices, and our robust pair fit given the TRUE neighbour displacements "
        "(the best a fit of pair displacements can do: each row's displacements telescope to its end tiles).",
        "",
        *table(accuracy, [("scenario", "scenario"), ("tool", "tool"), ("slices_ok", "slices solved"),
                          ("max_abs_dA_px", "max abs ΔA (px)"), ("model_rms_px", "model RMS (px)"),
                          ("tile_rms_px", "tile RMS (px)"), ("seconds", "time, all slices (s)"), ("note", "note")]),
        "",
        "## 2. Speed of measure + fit (real-image mosaics)",
        "",
        "Mosaics from `bench/realmosaic.py` (the retina photograph through OCT-like optics, a stage with θ, skew and "
        "scale error, 0.3 px jitter, vignetting, 20 % overlap): "
        + ", ".join(f"{s.label} ({s.slices} slice(s) of {s.nz} plane(s))" for s in speed_sizes) + ". "
        "Every tool gets the same in-memory planes (each slice's best plane) in one process; the tools take turns "
        f"(at least *calls* calls each, more until {bench_speed.MIN_TOTAL_S:g} s are spent), after a warm-up call of "
        "each, and the shortest call counts. A peer solves slices one at a time (its matrices averaged); ours measures "
        "every slice and fits one pooled model. *ours*: `measure_volume` on the plane at its defaults (flat field "
        "estimated from the slice's tiles, pairs measured on as many threads as the machine has cores) and "
        "`fit_pooled`: what the peers get, so the target is on it. The peers have no threads of their own (BLAS is "
        "held to one thread for every tool), so the ratio in CPU time is given beside, and *ours cores* is our CPU "
        "time over our wall time. *ours from zarr*: every plane of the slices written as sharded NGFF 0.5 stores, then "
        "`pool_pairs_and_fit_global_affine` (open, choose the plane where there are several, flat field, measure, "
        f"fit). Target: ours ≥ {SPEED_TARGET:g}x faster than the faster ASHLAR setting (filter_sigma 0, its default, "
        "or 1, its most accurate here) at every size. m2stitch (ncc_threshold 0.1; its default 0.5 fails on speckle) "
        f"only up to {bench_speed.M2STITCH_MAX_TILES} tiles. *max |ΔA|*: largest entry of A − A_true (px); floor: "
        "least squares of the true tile positions. CPU: this process's CPU time of the shortest call, less disturbed "
        f"by other jobs than the wall time. Load when the section started: {speed_load}.",
        "",
        *table(speed, [("grid", "mosaic"), ("slices", "slices"), ("calls", "calls"), ("ours_s", "ours (s)"),
                       ("ours_zarr_s", "ours from zarr (s)"), ("ashlar_s0_s", "ASHLAR σ0 (s)"),
                       ("ashlar_s1_s", "ASHLAR σ1 (s)"), ("m2stitch_s", "m2stitch (s)"),
                       ("ashlar_s0_ratio", "ASHLAR σ0 / ours"), ("ashlar_s1_ratio", "ASHLAR σ1 / ours"),
                       ("m2stitch_ratio", "m2stitch / ours"), ("best_ashlar_ratio", "faster ASHLAR / ours"),
                       ("ours_cpu_s", "ours CPU (s)"), ("ours_cores", "ours cores"),
                       ("best_ashlar_cpu_ratio", "faster ASHLAR / ours, CPU")]),
        "",
        *table(speed, [("grid", "mosaic"), ("floor_err_px", "floor"), ("ours_err_px", "ours"),
                       ("ours_zarr_err_px", "ours from zarr"), ("ashlar_s0_err_px", "ASHLAR σ0"),
                       ("ashlar_s1_err_px", "ASHLAR σ1"), ("m2stitch_err_px", "m2stitch")], digits=2),
        "",
        "## 3. Stitching throughput and memory (bench/bench_stitch.py)",
        "",
        *stitch_section(stitch_rows, stitch_note),
        "",
        "## 4. GPU: CuPy against NumPy for the measurement step",
        "",
        *(table(sections["gpu"], [("grid", "grid"), ("numpy_s", "NumPy (s)"), ("cupy_s", "CuPy (s)"),
                                  ("speedup", "speed-up")]) if sections["gpu"] else ["skipped: no CUDA device"]),
        "",
        "## 5. Embedded runner end to end (`linumpy-motor run INPUT OUTDIR`)",
        "",
        *([runner_note] if runner_note else [
            f"{bench_runner.N_SLICES} synthetic slices per input: measure, fit, stitch, compare, report. Fresh runs "
            f"with one and two workers take turns, best of {bench_runner.REPEATS} each; each resumed rerun (best of "
            f"{bench_runner.RESUMES}) goes over its own output folder and must skip every step. *fingerprinting*: "
            "reading every input store's listing (paths, sizes, times), timed alone: a resumed run cannot know less. "
            "*max abs ΔA*: the run's motor_transform.json against the truth.", "",
            *table(runner_rows, [("input", "input"), ("run", "run"), ("seconds", "wall time (s)"),
                                 ("fingerprint_s", "fingerprinting (s)"), ("max_abs_dA_px", "max abs ΔA (px)"),
                                 ("error", "error")])]),
        "",
        "## 6. Real-image benchmark",
        "",
        f"Mosaics cut from photographs with real stage faults (bench/realmosaic.py, bench/bench_real.py): see "
        f"[{args.real_out.name}]({os.path.relpath(args.real_out, args.out.parent)}) for every scenario, tool and plot.",
        "",
        "![accuracy and speed](" + args.out.with_suffix(".png").name + ")",
        "",
    ]
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """Options of the benchmark driver."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=BENCH / "results.md", help="results page to write")
    parser.add_argument("--quick", action="store_true", help="smoke version (about a minute or two)")
    parser.add_argument("--no-peers", action="store_true", help="do not install or run the peers")
    parser.add_argument("--workdir", type=Path, default=WORK, help="scratch folder")
    parser.add_argument("--only", choices=("real",), default=None,
                        help="run only this section (real: the real-image benchmark, written to --real-out)")
    parser.add_argument("--real-out", type=Path, default=None,
                        help="results page of the real-image benchmark (default: results_real.md beside --out)")
    parser.add_argument("--real-draws", type=int, default=None,
                        help="draws per real-image scenario (default 5; --quick 2)")
    parser.add_argument("--real-label", default=None, help="a line naming what the real-image results are")
    parser.add_argument("--real-scenario", action="append", default=None,
                        help="run only this real-image scenario (repeatable; default: all)")
    return parser


def run_real(args: argparse.Namespace, installed: dict) -> list[dict]:
    """The real-image benchmark (bench/bench_real.py), written to ``args.real_out``; its scenario rows."""
    import bench_real

    start = time.time()
    results, settings = bench_real.run(installed, args.workdir, quick=args.quick, draws=args.real_draws,
                                       scenarios=args.real_scenario, log=log)
    flags = " ".join([f for f, on in (("--quick", args.quick), ("--only real", args.only == "real")) if on]
                     + [f"--real-scenario '{name}'" for name in args.real_scenario or []])
    meta = {"command": f"python bench/run_all.py {flags}".strip() if flags else "make bench",
            "date": f"{datetime.datetime.now().astimezone():%Y-%m-%d %H:%M %Z}", "seconds": time.time() - start,
            "library": bench_real.library_under_test(), "machine": machine(), "versions": versions(installed),
            "label": args.real_label}
    rows = bench_real.write(results, settings, args.real_out, meta)
    log(f"wrote {args.real_out}")
    return rows


def real_verdicts(rows: list[dict]) -> list[tuple[str, bool | None, str]]:
    """The real-image targets over all scenarios, as (label, ok, detail) lines."""
    import bench_real

    found = [(row["scenario"], bench_real.verdicts(row)) for row in rows]
    labels = {"floor": f"real images: ours ≤ {bench_real.FLOOR_FACTOR:g}×floor + {bench_real.FLOOR_SLACK_PX:g} px",
              "ashlar": "real images: ours ≤ the best ASHLAR setting",
              "bias": f"real images: per-pair |bias| ≤ {bench_real.PAIR_BIAS_PX:g} px",
              "sd": f"real images: per-pair sd ≤ {bench_real.PAIR_SD_PX:g} px"}
    lines = []
    for key, label in labels.items():
        judged = [(name, v[key]) for name, v in found if v[key][0] is not None]
        missed = [f"{name} ({detail})" for name, (ok, detail) in judged if not ok]
        ok = None if not judged else not missed
        lines.append((label, ok, f"met in {len(judged) - len(missed)}/{len(judged)} scenarios"
                      + ("; missed: " + "; ".join(missed) if missed else "")))
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Install the peers if needed, run every section, write the results page and plot."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.real_out = args.real_out or args.out.parent / "results_real.md"
    os.environ.setdefault(START_ENV, str(time.time()))
    for variable in BLAS_THREAD_VARIABLES:  # before NumPy loads, here and in the re-run
        os.environ.setdefault(variable, "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # m2stitch's per-pair progress bars
    if not args.no_peers and os.environ.get(IN_PEERS_ENV) != "1":
        python = ensure_peers_venv()
        if python is not None:
            log(f"re-running in {python.parent.parent.relative_to(ROOT)}")
            os.execve(python, [str(python), str(Path(__file__).resolve()), *argv], {**os.environ, IN_PEERS_ENV: "1"})
    sys.path.insert(0, str(BENCH))
    import bench_accuracy
    import bench_runner
    import bench_speed
    import peers

    installed = {name: None for name in ("m2stitch", "ashlar")} if args.no_peers else peers.available()
    log(f"peers: {installed}")
    args.workdir.mkdir(parents=True, exist_ok=True)
    n_slices = 2 if args.quick else 6  # slices per accuracy scenario: fewer leave the tools within noise of each other
    scenarios = bench_accuracy.SCENARIOS[:1] if args.quick else bench_accuracy.SCENARIOS
    speed_sizes = bench_speed.QUICK_SIZES if args.quick else bench_speed.SIZES
    sections: dict = {"n_slices": n_slices}
    if args.only == "real":
        run_real(args, installed)
        return 0
    log("1/6 accuracy")
    sections["accuracy"] = bench_accuracy.run(installed, n_slices, scenarios, log=log)
    log("2/6 speed")
    sections["speed_sizes"] = speed_sizes
    sections["speed_load"] = "load average " + " / ".join(f"{v:.2f}" for v in os.getloadavg()) + " (1 / 5 / 15 min)"
    sections["speed"] = bench_speed.run(args.workdir / "speed", installed, sizes=speed_sizes, log=log)
    log("3/6 stitch")
    sections["stitch"] = run_stitch(args.workdir / "stitch", args.quick)
    log("4/6 GPU")
    sections["gpu"] = bench_speed.gpu_rows(speed_sizes, args.workdir / "speed", log=log)
    log("5/6 embedded runner")
    sections["runner"] = bench_runner.run(args.workdir / "runner", log=log, repeats=1 if args.quick else
                                          bench_runner.REPEATS, inputs=dict(list(bench_runner.INPUTS.items())[:1])
                                          if args.quick else None)
    log(f"6/6 real-image benchmark (-> {args.real_out})")
    sections["real"] = run_real(args, installed)
    seconds = time.time() - float(os.environ[START_ENV])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    plot(sections["accuracy"], sections["speed"], n_slices, args.out.with_suffix(".png"))
    args.out.write_text(report(args, sections, installed, seconds))
    log(f"wrote {args.out} and {args.out.with_suffix('.png')} in {seconds:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
