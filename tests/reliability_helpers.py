"""Shared pieces of the reliability tests: small datasets, subprocess runs, tree checksums, output comparison."""

from __future__ import annotations

import atexit
import gc
import hashlib
import json
import os
import re
import runpy
import signal
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr

from linumpy_motor import synthetic
from linumpy_motor.io import ngff
from linumpy_motor.io.grid import multiscale_entry
from linumpy_motor.pipeline.resume import STATE_DIR

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "bin"
CLI = str(Path(sys.executable).parent / "linumpy-motor")
TEMPORARY = re.compile(r"^\..+\.(tmp|old)-\d+$")
GRID = (3, 5)
TILE = (4, 96, 128)
"""Small datasets: 3x5 non-square tiles, so a stitched slice (about 261x540 px) has two pyramid levels."""


def env() -> dict:
    """The environment of a subprocess: this interpreter's scripts first, no display."""
    path = os.pathsep.join([str(BIN), str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "MPLBACKEND": "Agg", "PYTHONNOUSERSITE": "1"}


def signals_as_new() -> None:
    """``preexec_fn`` of a child that is sent Ctrl-C: SIGINT at its default, whatever this process
    inherited (a shell's background job or a CI runner may start pytest with SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def bin_command(script: str, *args) -> list[str]:
    """Command line of a ``bin/`` script run with this interpreter."""
    return [sys.executable, str(BIN / script), *map(str, args)]


def run(command: list[str], timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command and capture its output as text."""
    return subprocess.run(command, capture_output=True, text=True, env=env(), timeout=timeout)


def write_small_dataset(folder: Path, n_slices: int = 3, seed: int = 1) -> Path:
    """A small synthetic dataset of ``GRID`` tiles of ``TILE`` (NGFF 0.5, sharded, as upstream writes)."""
    spec = synthetic.SyntheticSpec(nx=GRID[0], ny=GRID[1], tile_shape=TILE, seed=seed)
    synthetic.write_dataset(folder, spec, n_slices=n_slices, save_scenes=False)
    return folder


def write_store(path: Path, volume: np.ndarray, tile_hw: tuple[int, int] = TILE[1:], *, version: str = "0.5",
                sharded: bool = False) -> Path:
    """Write ``volume`` as a mosaic-grid OME-Zarr with one tile per chunk (4x4 tiles per shard if sharded)."""
    nz = volume.shape[0]
    shards = (nz, 4 * tile_hw[0], 4 * tile_hw[1]) if sharded else None
    ngff.write_image(path, volume, chunks=(nz, *tile_hw), version=version, shards=shards)
    return path


def read_level0(store: Path) -> np.ndarray:
    """Level 0 of an OME-Zarr as a NumPy array."""
    return read_levels(store)[1][0]


def read_levels(store: Path) -> tuple[dict, list[np.ndarray]]:
    """Root attributes and every pyramid level (in multiscales order) of an OME-Zarr."""
    group = zarr.open_group(str(store), mode="r")
    attrs = group.attrs.asdict()
    entry, _ = multiscale_entry(attrs, store)
    return attrs, [group[d["path"]][...] for d in entry["datasets"]]


def tree_digest(root: Path) -> dict[str, tuple[str, int, int]]:
    """Every file under ``root``: relative path -> (sha256, size, mtime in ns); folders as ('dir', 0, mtime)."""
    digest = {}
    for path in sorted(root.rglob("*")):
        stat = path.stat()
        rel = str(path.relative_to(root))
        if path.is_dir():
            digest[rel] = ("dir", 0, stat.st_mtime_ns)
        else:
            digest[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), stat.st_size, stat.st_mtime_ns)
    return digest


def temporaries(root: Path) -> list[Path]:
    """Files or folders under ``root`` with a temporary name (``.name.tmp-PID``, ``.name.old-PID``)."""
    return [p for p in root.rglob(".*") if TEMPORARY.match(p.name)] if root.exists() else []


def output_files(outdir: Path) -> set[str]:
    """Relative paths of the files a run left, leaving out the runner's state folder."""
    return {str(p.relative_to(outdir)) for p in outdir.rglob("*")
            if p.is_file() and STATE_DIR not in p.relative_to(outdir).parts}


def stores(outdir: Path) -> list[Path]:
    """The stitched stores of a run, sorted."""
    return sorted((outdir / "stitched").glob("*.ome.zarr"))


def assert_same_outputs(expected: Path, actual: Path) -> None:
    """Assert two runs' outputs are the same: every JSON byte-identical, every stitched level array-identical."""
    jsons = sorted(str(p.relative_to(expected)) for p in expected.rglob("*.json")
                   if not any(part.endswith(".ome.zarr") for part in p.relative_to(expected).parts))
    assert jsons, f"no JSON outputs in {expected}"
    assert jsons == sorted(str(p.relative_to(actual)) for p in actual.rglob("*.json")
                           if not any(part.endswith(".ome.zarr") for part in p.relative_to(actual).parts))
    for rel in jsons:
        assert (expected / rel).read_bytes() == (actual / rel).read_bytes(), f"{rel} differs"
    names = [p.name for p in stores(expected)]
    assert names and names == [p.name for p in stores(actual)]
    for name in names:
        attrs_a, levels_a = read_levels(expected / "stitched" / name)
        attrs_b, levels_b = read_levels(actual / "stitched" / name)
        assert attrs_a == attrs_b, f"{name}: attributes differ"
        assert len(levels_a) == len(levels_b)
        for k, (a, b) in enumerate(zip(levels_a, levels_b)):
            assert a.dtype == b.dtype and a.shape == b.shape, f"{name} level {k}: {a.shape} vs {b.shape}"
            assert np.array_equal(a, b), f"{name} level {k}: {np.count_nonzero(a != b)} pixels differ"


def json_of(path: Path) -> dict:
    """The content of a JSON file."""
    return json.loads(Path(path).read_text())


@dataclass(frozen=True)
class Outcome:
    """What a command did: exit code, stdout and stderr."""

    returncode: int
    stdout: str
    stderr: str


def run_forked(commands: list[list[str]], workdir: Path, parallel: int = 2, timeout: float = 600) -> list[Outcome]:
    """Run many commands, each in a process of its own, paying the imports once.

    One driver subprocess imports the package and every ``bin/`` script once, then forks one child
    per command; the child calls the command's ``main(argv)`` with its stdout and stderr on files
    and exits with its return code after the exit handlers and a garbage collection, as at a real
    exit (an uncaught exception prints its traceback and exits 1, as the interpreter does).
    Commands are ``[CLI, ...]`` or ``bin_command(...)`` lists. Anything the driver itself prints
    (e.g. a warning at import) is an error.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "jobs.json").write_text(json.dumps(commands))
    driver = subprocess.run([sys.executable, __file__, str(workdir), str(parallel)], capture_output=True, text=True,
                            env=env(), timeout=timeout)
    if driver.returncode != 0 or driver.stdout or driver.stderr:
        raise RuntimeError(f"fork driver failed ({driver.returncode}):\n{driver.stdout}\n{driver.stderr}")
    codes = json.loads((workdir / "codes.json").read_text())
    return [Outcome(code, (workdir / f"{k}.out").read_text(), (workdir / f"{k}.err").read_text())
            for k, code in enumerate(codes)]


def _entry_point(command: list[str], scripts: dict):
    """The ``main`` function a command runs and its arguments."""
    if command[0] == CLI:
        from linumpy_motor.pipeline.cli import main
        return main, command[1:]
    assert command[0] == sys.executable and command[1].endswith(".py"), command
    if command[1] not in scripts:
        scripts[command[1]] = runpy.run_path(command[1], run_name="forked")["main"]
    return scripts[command[1]], command[2:]


def _child(main, argv: list[str], out: Path, err: Path) -> int:
    """In a forked child: run ``main(argv)`` with stdout and stderr on files; return the exit code."""
    os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 1)
    os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:
        traceback.print_exc()
        code = 1
    return code


def _exit_as_the_interpreter_does(code: int) -> None:
    """Run the exit handlers and collect garbage (what prints at a real exit, e.g. asyncio's "Task was
    destroyed but it is pending!"), then leave without tearing every module down (that is slow)."""
    atexit._run_exitfuncs()
    gc.collect()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _serve(workdir: Path, parallel: int) -> None:
    """The driver: fork a child per command of ``workdir/jobs.json``, ``parallel`` at a time."""
    commands = json.loads((workdir / "jobs.json").read_text())
    scripts: dict = {}
    entries = [_entry_point(command, scripts) for command in commands]
    codes: list[int | None] = [None] * len(commands)
    running: dict[int, int] = {}
    for k, (main, argv) in enumerate(entries):
        while len(running) >= parallel:
            pid, status = os.wait()
            codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _exit_as_the_interpreter_does(_child(main, argv, workdir / f"{k}.out", workdir / f"{k}.err"))
        running[pid] = k
    while running:
        pid, status = os.wait()
        codes[running.pop(pid)] = os.waitstatus_to_exitcode(status)
    (workdir / "codes.json").write_text(json.dumps(codes))


def finish_quickly(**kwargs) -> None:
    """A runner job that does nothing (run in a worker process by the worker-death tests)."""


def die_like_the_oom_killer(**kwargs) -> None:
    """A runner job whose worker process is killed with SIGKILL, as the out-of-memory killer does."""
    os.kill(os.getpid(), signal.SIGKILL)


def leave_a_lock_and_die(**kwargs) -> None:
    """A runner job whose worker process ends abruptly holding a lock that multiprocessing's resource tracker
    then reports as leaked."""
    import multiprocessing

    kwargs["held"] = multiprocessing.get_context("spawn").Lock()
    os._exit(1)


def finish_after_a_rerun_took_the_folder(output: Path, outdir: Path, **kwargs) -> None:
    """A runner job that is still writing its output when a rerun takes the output folder's lock."""
    from linumpy_motor.io import outputs

    with outputs.atomic_output(output, "test") as tmp:
        tmp.write_text("a leftover worker's output")
        (outdir / STATE_DIR / "lock").write_text("the rerun's token")


if __name__ == "__main__":
    _serve(Path(sys.argv[1]), int(sys.argv[2]))


LOG_RECORD = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d (DEBUG|INFO) ")


def error_lines(stderr: str) -> list[str]:
    """The non-empty lines of ``stderr`` that are not progress or step log records (INFO, DEBUG)."""
    return [line for line in stderr.splitlines() if line.strip() and not LOG_RECORD.match(line)]
