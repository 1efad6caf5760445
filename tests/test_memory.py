"""Memory limits end in one line, never a crash (issue 19, item 5): a step whose estimated peak does not fit
the address-space (``ulimit -v``) or cgroup limit is refused before it starts, naming the step, the slice
and the limit; a ``MemoryError`` or a thread that cannot start is one line naming the step and the slice.

An earlier version, under ``ulimit -v``, crashed with a segmentation fault, printed ``can't start new
thread`` or ``_ArrayMemoryError`` tracebacks, hung in OpenBLAS retrying its buffer, and with workers
called the MemoryError "cannot read data" with the advice to re-copy the slice.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from reliability_helpers import CLI, env, error_lines, write_small_dataset

from linumpy_motor import interrupts, memory
from linumpy_motor.errors import EXIT_NO_MEMORY, InputError, OutOfMemory
from linumpy_motor.io.grid import open_mosaic, read_block
from linumpy_motor.pipeline.jobs import run_jobs
from linumpy_motor.pipeline.resume import Stamps


def test_a_step_whose_peak_passes_the_address_space_limit_is_refused_naming_it(monkeypatch):
    monkeypatch.setattr(memory, "address_space_limit", lambda: memory.address_space_used() + 100 * 2**20)
    with pytest.raises(OutOfMemory) as info:  # exit 75: the pipeline retries the task with more memory
        memory.check_memory("stitch", "slice_z03.ome.zarr", 200 * 2**20, threads=2)
    assert info.value.path == Path("slice_z03.ome.zarr")
    assert "stitch step needs about" in info.value.problem and "(ulimit -v)" in info.value.problem


def test_a_step_that_fits_the_address_space_limit_goes_on(monkeypatch):
    headroom = memory.HEADROOM_BYTES + (2 + memory.io_threads()) * memory.THREAD_STACK_BYTES
    monkeypatch.setattr(memory, "address_space_limit", lambda: memory.address_space_used() + headroom + 2**30)
    memory.check_memory("stitch", "slice", 2**29, threads=2)


def _cgroup(root: Path, limit: str, usage: int) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "memory.max").write_text(limit + "\n")
    (root / "memory.current").write_text(f"{usage}\n")
    return root


def test_the_fit_is_refused_where_openblas_could_not_map_its_buffers(tmp_path, monkeypatch):
    """The fit's data are small, but OpenBLAS retried its 32 MiB buffer for ever (a process at 100 % CPU for
    27 minutes, deaf to SIGTERM) under an address-space limit that the measurement had nearly filled."""
    from linumpy_motor.pipeline import steps

    data = write_small_dataset(tmp_path / "data", n_slices=1)
    pairs = tmp_path / "slice_z00_pairs.json"
    steps.measure_pairs(data / "mosaic_grid_3d_z00.ome.zarr", pairs, overlap=0.2)
    monkeypatch.setattr(memory, "address_space_limit", lambda: memory.address_space_used() + 64 * 2**20)
    with pytest.raises(OutOfMemory, match="fit step needs about .* of address space, more than the limit"):
        steps.fit_affine([pairs], tmp_path / "motor_transform.json")
    assert not (tmp_path / "motor_transform.json").exists()


_LATE_LIBRARIES = """
import json, sys
from pathlib import Path
from linumpy_motor.pipeline import steps
from linumpy_motor.stitch import assemble

def extensions():
    return {name for name, module in list(sys.modules.items()) if str(getattr(module, "__file__", "")).endswith(".so")}

at_check = {}
check = steps.check_memory
def counting(step, label, need, threads, libraries=()):
    check(step, label, need, threads, libraries)
    at_check[step] = extensions()
steps.check_memory = assemble.check_memory = counting
data, out = Path(sys.argv[1]), Path(sys.argv[2])
steps.measure_pairs(data / "mosaic_grid_3d_z00.ome.zarr", out / "p.json", overlap=0.2)
after = {"measure": extensions()}
steps.fit_affine([out / "p.json"], out / "t.json")
after["fit"] = extensions()
transform = json.loads((out / "t.json").read_text())["transform"]
assemble.stitch_slice(data / "mosaic_grid_3d_z00.ome.zarr", out / "s.ome.zarr", transform)
after["stitch"] = extensions()
print(json.dumps({step: sorted(after[step] - at_check[step]) for step in after}))
"""


def test_a_step_loads_its_libraries_before_it_counts_the_address_space(tmp_path):
    """No step maps an extension module after its memory check: SciPy's FFT and sparse solver map SciPy's own
    OpenBLAS (about 130 MB with its buffers) on first use, and loaded after the measure's check they took the
    address space it had counted as free (the CI run of 2026-12-06 hung)."""
    data = write_small_dataset(tmp_path / "data", n_slices=1)
    result = subprocess.run([sys.executable, "-c", _LATE_LIBRARIES, str(data), str(tmp_path)], capture_output=True,
                            text=True, env=env(), timeout=120)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"measure": [], "fit": [], "stitch": []}


def test_the_cgroup_limit_is_read_and_a_step_beyond_it_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(memory, "address_space_limit", lambda: None)
    assert memory.cgroup_memory(_cgroup(tmp_path / "none", "max", 5)) is None
    v1 = tmp_path / "v1" / "memory"
    v1.mkdir(parents=True)
    (v1 / "memory.limit_in_bytes").write_text(f"{2**30}\n")
    (v1 / "memory.usage_in_bytes").write_text(f"{2**29}\n")
    assert memory.cgroup_memory(tmp_path / "v1") == (2**30, 2**29)
    monkeypatch.setattr(memory, "CGROUP_ROOT", _cgroup(tmp_path / "v2", str(2**30), 900 * 2**20))
    with pytest.raises(OutOfMemory, match="measure step needs about 200 MB more memory, more than the 124 MB the "
                                         "cgroup limit of 1.00 GB leaves"):
        memory.check_memory("measure", "slice", 200 * 2**20, threads=1)
    memory.check_memory("measure", "slice", 100 * 2**20, threads=1)


def _runs_out_of_memory(**kwargs) -> None:
    raise MemoryError


def _cannot_start_a_thread(**kwargs) -> None:
    raise RuntimeError("can't start new thread")


@pytest.mark.parametrize("job", [_runs_out_of_memory, _cannot_start_a_thread])
def test_running_out_of_memory_in_a_job_is_one_line_naming_the_step_and_the_slice(tmp_path, job):
    stamps = Stamps(tmp_path, [])
    with pytest.raises(OutOfMemory) as info:
        run_jobs([(tmp_path / "p.json", "k", job, {"source": tmp_path / "slice_z01.ome.zarr"})], stamps, 1, "measure",
                 False)
    assert info.value.path == tmp_path / "slice_z01.ome.zarr"
    assert info.value.problem.startswith("measure step ran out of memory (")


def test_zarr_io_threads_are_counted_as_zarr_is_configured():
    import zarr

    assert memory.io_threads() == 1 + min(32, (os.cpu_count() or 1) + 4)  # asyncio's default pool, and zarr's loop
    with zarr.config.set({"threading.max_workers": 3}):
        assert memory.io_threads() == 4


@pytest.mark.parametrize("exc, out", [
    (ImportError("/x/_fblas.cpython-311-x86_64-linux-gnu.so: failed to map segment from shared object"), True),
    (OSError(12, "Cannot allocate memory"), True), (RuntimeError("can't start new thread"), True),
    (ImportError("No module named 'cupy'"), False), (OSError(2, "No such file or directory"), False)])
def test_a_library_that_cannot_be_mapped_is_out_of_memory_not_a_crash(exc, out):
    assert memory.is_out_of_memory(exc) is out


class _StarvedThread(threading.Thread):
    """A thread that runs out of memory as it starts: Python drops the error, and ``start`` waits for ever."""

    def _bootstrap_inner(self) -> None:
        raise MemoryError


@pytest.fixture
def starved_thread():
    """A :class:`_StarvedThread`, with the handlers installed and a rescue: had the fix failed, the wait in its
    ``start`` ends after 20 s, so the test fails instead of hanging."""
    assert interrupts.install()
    thread = _StarvedThread()
    rescue = threading.Timer(20, thread._started.set)
    rescue.start()
    yield thread
    rescue.cancel()
    interrupts.restore()


def test_a_thread_that_runs_out_of_memory_as_it_starts_raises_in_the_starter_instead_of_hanging(starved_thread):
    """The CI run of 2026-12-06 hung for 300 s under ``ulimit -v`` 500 MB: a thread of the measure's pool failed
    to start, Python dropped the MemoryError, and the main thread waited for it in ``Thread.start`` for ever."""
    started = time.monotonic()
    with pytest.raises(MemoryError):
        starved_thread.start()
    assert time.monotonic() - started < 10


def test_the_starter_of_a_starved_thread_is_woken_even_if_the_signal_came_before_its_wait(starved_thread):
    """On a loaded machine the signal came, 8 times in 300, just before the starter's wait began: it was handled
    then and the wait went on for ever. Here the signal is held back from the starter, so only the failing thread
    itself can end the wait; the error is raised as soon as the signal is let through."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, {interrupts.STARVED_SIGNAL})
    try:
        started = time.monotonic()
        starved_thread.start()  # returns: the wait was ended by the starved thread, not by the signal
        assert time.monotonic() - started < 10
        with pytest.raises(MemoryError):
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
            time.sleep(1)  # the held signal's handler raises before this ends
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def test_a_memory_error_while_reading_is_not_called_a_damaged_slice(tmp_path):
    data = write_small_dataset(tmp_path / "data", n_slices=1)
    grid = open_mosaic(data / "mosaic_grid_3d_z00.ome.zarr")

    class Exhausted:
        chunks = grid.array.chunks

        def __getitem__(self, key):
            raise MemoryError

    with pytest.raises(MemoryError):
        read_block(replace(grid, array=Exhausted()), 0, slice(0, 8), slice(0, 8))


def _limited(limit: int):
    def preexec() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return preexec


@pytest.mark.slow
def test_runs_under_address_space_limits_finish_or_say_so_in_one_line(tmp_path):
    data = write_small_dataset(tmp_path / "data", n_slices=2)
    outcomes = {}
    for mb in (350, 500, 650, 800, 4000):
        out = tmp_path / f"out{mb}"
        result = subprocess.run([CLI, "run", str(data), str(out), "--no-progress"], capture_output=True, text=True,
                                env=env(), timeout=300, preexec_fn=_limited(mb * 2**20))
        outcomes[mb] = result.returncode
        assert result.returncode in (0, EXIT_NO_MEMORY), f"{mb} MB: exit {result.returncode}\n{result.stderr}"
        if result.returncode:
            lines = error_lines(result.stderr)
            assert len(lines) == 1 and lines[0].startswith("linumpy-motor: error: "), f"{mb} MB:\n{result.stderr}"
            assert "address space" in lines[0] or "out of memory" in lines[0], lines[0]
            assert result.stderr.rstrip().endswith(lines[0])
    assert outcomes[350] == EXIT_NO_MEMORY and outcomes[4000] == 0, outcomes
    assert np.all(np.diff([outcomes[mb] == 0 for mb in sorted(outcomes)]) >= 0), f"a larger limit failed: {outcomes}"


def _grid_of(scene: np.ndarray, nx: int, ny: int, tile: int, overlap: float) -> np.ndarray:
    """One plane of ``nx`` x ``ny`` tiles cut from ``scene`` at a step of ``(1 - overlap)`` tile."""
    step = round(tile * (1 - overlap))
    plane = np.empty((1, nx * tile, ny * tile), np.float32)
    for i in range(nx):
        for j in range(ny):
            plane[0, i * tile:(i + 1) * tile, j * tile:(j + 1) * tile] = \
                scene[i * step:i * step + tile, j * step:j * step + tile]
    return plane


@pytest.mark.parametrize("nx, ny, tile, overlap, threads", [
    (6, 6, 128, 0.2, 2), (4, 4, 256, 0.1, 2), (12, 10, 64, 0.3, 2), (3, 3, 192, 0.15, 1), (16, 4, 96, 0.25, 2)])
def test_the_measure_estimate_covers_its_traced_peak(nx, ny, tile, overlap, threads):
    """The pre-flight estimate is close to what the measurement holds at its peak (traced: NumPy reports its
    buffers): not far below, and not so far above that it refuses jobs that fit. It was 2.3x to 4.5x too
    low before."""
    import tracemalloc

    from scipy import ndimage

    from linumpy_motor.register.measure import MeasureOptions, measure_volume
    from linumpy_motor.register.measure import peak_bytes as measure_peak_bytes

    rng = np.random.default_rng(nx * ny + tile)
    scene = ndimage.gaussian_filter(rng.random((nx * tile, ny * tile)), 2).astype(np.float32)
    volume = _grid_of(scene, nx, ny, tile, overlap)
    tracemalloc.start()
    try:
        measure_volume(lambda zs, rows, cols: volume[zs, rows, cols], (1, tile, tile), nx, ny, overlap,
                       MeasureOptions(threads=threads))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    estimate = measure_peak_bytes((1, tile, tile), nx, ny, overlap)
    assert 0.8 * peak <= estimate <= 1.6 * peak, \
        f"estimate {estimate / 2**20:.1f} MB, traced peak {peak / 2**20:.1f} MB"


def test_the_measure_estimate_refuses_a_bad_overlap():
    from linumpy_motor.register.measure import peak_bytes as measure_peak_bytes

    with pytest.raises(InputError, match="overlap"):
        measure_peak_bytes((1, 64, 64), 3, 3, float("nan"))
