"""Memory limits: the address-space limit (``ulimit -v``) and the cgroup memory limit a process runs under,
the check a step makes against them before it starts, and the one line for running out of memory.

One owner for the rule: a step estimates its peak (each step owns its formula, e.g. the stitch's in
:mod:`linumpy_motor.stitch.assemble`) and calls :func:`check_memory` before any work; it is refused in
one line naming the step, the slice and the limit when the address space in use plus that peak, or the
cgroup's usage plus it, would pass the limit. Under a too-low limit NumPy raises ``MemoryError``,
Python fails to start a thread, and OpenBLAS retries its buffer forever or crashes: refusing first is
the only clean outcome. What still runs out is reported by :func:`out_of_memory` in one line.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import resource
import sys
from collections.abc import Sequence
from pathlib import Path

from linumpy_motor.errors import OutOfMemory

__all__ = ["CGROUP_ROOT", "HEADROOM_BYTES", "MALLOC_ARENAS", "OUT_OF_MEMORY_ERRORS", "OUT_OF_MEMORY_WORDS",
           "THREAD_STACK_BYTES", "address_space_limit", "address_space_used", "cgroup_memory", "check_memory",
           "io_threads", "is_out_of_memory", "limit_arenas", "out_of_memory"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
"""Where this process's cgroup files are read: its memory limit here, its CPU quota in
:mod:`linumpy_motor.parallel`."""
HEADROOM_BYTES = 128 * 2**20
"""Address space a step may take beyond its data and its threads' stacks: libraries' lazy buffers (OpenBLAS
takes 32 MiB each) and the allocator's growth."""
THREAD_STACK_BYTES = 8 * 2**20
"""Address space each thread a step starts reserves for its stack (glibc's default)."""
MALLOC_ARENAS = 1
"""Allocator arenas allowed under an address-space limit: glibc reserves 64 MiB of address space for each
besides the first, up to 8 per core by default (0.9 GB more on two cores). One is enough there: the large
buffers are mapped one by one, not taken from an arena."""
M_ARENA_MAX = -8
"""glibc's ``mallopt`` parameter for the most arenas (``<malloc.h>``)."""


def address_space_limit() -> int | None:
    """This process's address-space limit in bytes (``ulimit -v``, RLIMIT_AS), None when unlimited."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    return None if soft == resource.RLIM_INFINITY else int(soft)


def address_space_used() -> int:
    """The address space this process uses now, in bytes (``VmSize``; 0 where /proc is not there)."""
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return 0
    line = next((line for line in status.splitlines() if line.startswith("VmSize:")), "VmSize: 0 kB")
    return int(line.split()[1]) * 1024


def cgroup_memory(root: Path | None = None) -> tuple[int, int] | None:
    """``(limit, usage)`` in bytes of this process's cgroup (v2 ``memory.max`` / ``memory.current``, else v1
    ``memory/memory.limit_in_bytes`` / ``memory.usage_in_bytes`` under ``root``, default ``CGROUP_ROOT``),
    None when it sets no limit."""
    root = CGROUP_ROOT if root is None else root
    for limit_file, usage_file in (("memory.max", "memory.current"),
                                   ("memory/memory.limit_in_bytes", "memory/memory.usage_in_bytes")):
        try:
            text = (root / limit_file).read_text().strip()
            usage = int((root / usage_file).read_text())
        except (OSError, ValueError):
            continue
        if text == "max" or not text.isdigit() or int(text) >= 2**60:  # v1 writes a huge number for none
            return None
        return int(text), usage
    return None


def limit_arenas() -> None:
    """Under an address-space limit, allow the allocator :data:`MALLOC_ARENAS` arenas (glibc's ``mallopt``), so
    that threads do not each reserve 64 MiB of it; elsewhere nothing changes."""
    if address_space_limit() is not None and sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).mallopt(M_ARENA_MAX, MALLOC_ARENAS)
        except (OSError, AttributeError):  # not glibc
            pass


def io_threads() -> int:
    """Threads zarr starts for its I/O as a step reads and writes, each reserving a stack: its event loop's, and
    its pool's (zarr's ``threading.max_workers``, else asyncio's default of min(32, cores + 4))."""
    import zarr  # here: the launcher imports this module before the libraries

    workers = zarr.config.get("threading.max_workers", None)
    return 1 + (int(workers) if workers else min(32, (os.cpu_count() or 1) + 4))


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GB" if n >= 2**30 else f"{n / 2**20:.0f} MB"


def check_memory(step: str, label: str | Path, need_bytes: int, threads: int, libraries: Sequence[str] = ()) -> None:
    """Before a step: refuse it when its estimated peak does not fit the limits this process runs under.

    Parameters
    ----------
    step : str
        The step (``"measure"``, ``"stitch"``), named in the message.
    label : str or Path
        What it works on (its slice), named first in the message.
    need_bytes : int
        The step's estimated peak of data held at once (the step's own formula).
    threads : int
        Threads the step starts (each reserves :data:`THREAD_STACK_BYTES` of address space, as do zarr's,
        :func:`io_threads`).
    libraries : sequence of str
        Modules the step imports where it first uses them: imported first, so that the address space in use
        counts them (SciPy's FFT and solvers map SciPy's own OpenBLAS, about 130 MB with its buffers).

    Raises
    ------
    OutOfMemory
        The address space in use, plus ``need_bytes``, the threads' stacks and :data:`HEADROOM_BYTES`, is over
        the address-space limit; or the cgroup's usage plus ``need_bytes`` is over its limit.
    """
    for name in libraries:
        importlib.import_module(name)
    limit = address_space_limit()
    if limit is not None:
        stacks = (threads + io_threads()) * THREAD_STACK_BYTES
        peak = address_space_used() + need_bytes + stacks + HEADROOM_BYTES
        if peak > limit:
            raise OutOfMemory(label, f"{step} step needs about {_size(peak)} of address space, more than the limit "
                                    f"of {_size(limit)} (ulimit -v): raise the limit, or give fewer --threads")
    cgroup = cgroup_memory()
    if cgroup is not None and cgroup[1] + need_bytes > cgroup[0]:
        raise OutOfMemory(label, f"{step} step needs about {_size(need_bytes)} more memory, more than the "
                                f"{_size(max(0, cgroup[0] - cgroup[1]))} the cgroup limit of {_size(cgroup[0])} "
                                "leaves: give the job more memory, or run fewer --workers")


OUT_OF_MEMORY_WORDS: dict[type[Exception], str] = {
    RuntimeError: "can't start new thread", ImportError: "failed to map segment", OSError: "Cannot allocate memory"}
"""How an exception other than ``MemoryError`` says memory ran out: a thread that could not start, a library loaded
late (SciPy's on first use) that could not be mapped, an ``mmap`` refused."""
OUT_OF_MEMORY_ERRORS: tuple[type[BaseException], ...] = (MemoryError, *OUT_OF_MEMORY_WORDS)
"""The exceptions :func:`is_out_of_memory` may find out of memory (an ``except`` catches these, then asks it)."""


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says memory ran out: a ``MemoryError``, or one of :data:`OUT_OF_MEMORY_WORDS`."""
    return isinstance(exc, MemoryError) or any(isinstance(exc, kind) and words in str(exc)
                                               for kind, words in OUT_OF_MEMORY_WORDS.items())


def out_of_memory(step: str | None, label: str | Path | None, exc: BaseException) -> OutOfMemory:
    """The one-line error for a step (None: a command) that ran out of memory (:func:`is_out_of_memory`), naming
    it and its slice."""
    limit = address_space_limit()
    under = f" under the address-space limit of {_size(limit)} (ulimit -v)" if limit is not None else ""
    what = f"{step} step ran" if step else "ran"
    return OutOfMemory(label, f"{what} out of memory ({type(exc).__name__}){under}: rerun with more memory, or "
                             "fewer --workers or --threads (finished steps are kept)")
