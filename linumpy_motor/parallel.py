"""How many cores this process was given, and keeping every thread pool (ours, BLAS, FFT) within them.

BLAS pools are held to one thread (see :func:`blas_on_one_thread`).

One owner for the rule: the default is the cores the process may run on (``sched_getaffinity``,
which SLURM's and taskset's pinning set) capped by the cgroup CPU quota (Docker ``--cpus``,
Kubernetes limits, SLURM with ``ConstrainCores``), never the host's core count.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import scipy
from threadpoolctl import threadpool_limits

from linumpy_motor.errors import InputError
from linumpy_motor.memory import CGROUP_ROOT

__all__ = ["CGROUP_ROOT", "available_cores", "blas_on_one_thread", "cgroup_cpu_quota", "limited_threads",
           "resolve_threads", "threads_per_worker"]



def cgroup_cpu_quota(root: Path | None = None) -> float | None:
    """CPUs allowed by the cgroup quota (v2 ``cpu.max``, else v1 ``cpu.cfs_quota_us`` under ``root``,
    default ``CGROUP_ROOT``), None when unlimited."""
    root = CGROUP_ROOT if root is None else root
    try:
        quota_text, period_text = (root / "cpu.max").read_text().split()[:2]
        return None if quota_text == "max" else int(quota_text) / int(period_text)
    except (OSError, ValueError):
        pass
    try:
        quota = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by the cgroup quota (rounded up), at least 1."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    quota = cgroup_cpu_quota()
    if quota is not None:
        cores = min(cores, math.ceil(quota))
    return max(1, cores)


def resolve_threads(threads: int | None) -> int:
    """``threads`` when given (must be >= 1), else :func:`available_cores`."""
    if threads is None:
        return available_cores()
    if int(threads) < 1:
        raise InputError(None, f"threads must be >= 1, got {threads}")
    return int(threads)


def threads_per_worker(threads: int | None, workers: int) -> int:
    """Threads for each of ``workers`` processes sharing ``threads`` cores (at least 1 each)."""
    return max(1, resolve_threads(threads) // max(1, workers))


@contextmanager
def blas_on_one_thread() -> Iterator[None]:
    """Run the block with the BLAS/OpenMP pools on one thread.

    The parallelism is ours (the stitch's thread pool, the FFT workers, the runner's worker
    processes), so BLAS must not multiply it; and the only BLAS work, the small matrix products of
    the sub-pixel refinement and the fit, ran 3x slower with two OpenBLAS threads than with one.
    """
    with threadpool_limits(limits=1):
        yield


@contextmanager
def limited_threads(threads: int) -> Iterator[None]:
    """Run the block with SciPy's FFTs on ``threads`` workers and BLAS on one thread (:func:`blas_on_one_thread`)."""
    with blas_on_one_thread(), scipy.fft.set_workers(threads):
        yield
