"""NumPy / CuPy dispatch: CPU fallback with a warning, and (on a GPU machine) the same shifts."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest
import scipy.fft

from linumpy_motor import backend
from linumpy_motor.backend import get_backend, gpu_available, to_numpy
from linumpy_motor.mosaic import motor
from linumpy_motor.register.correlation import measure_shifts
from linumpy_motor.register.measure import MeasureOptions, band_reader, measure_grid_pairs
from linumpy_motor.synthetic import SyntheticSpec, make_slice

GPU_SKIP = pytest.mark.skipif(not gpu_available(), reason="no GPU: CuPy is not installed or sees no CUDA device")


@pytest.fixture
def no_gpu(monkeypatch):
    """Behave as a machine without CUDA, whatever this one has."""
    monkeypatch.setattr(backend, "gpu_available", lambda: False)


def test_cpu_backend_by_default(caplog):
    with caplog.at_level(logging.WARNING):
        xp, fft, name = get_backend(False)
    assert (xp, fft, name) == (np, scipy.fft, "numpy")
    assert not caplog.records


def test_gpu_request_without_cuda_falls_back_with_a_warning(no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger="linumpy_motor.backend"):
        xp, fft, name = get_backend(use_gpu=True)
    assert (xp, fft, name) == (np, scipy.fft, "numpy")
    assert any(r.levelno == logging.WARNING and "GPU" in r.getMessage() for r in caplog.records)


@pytest.mark.skipif(gpu_available(), reason="this machine has a usable GPU")
def test_this_machine_without_cuda_falls_back(caplog):
    with caplog.at_level(logging.WARNING, logger="linumpy_motor.backend"):
        assert get_backend(use_gpu=True)[2] == "numpy"
    assert caplog.records


def test_gpu_available_is_false_when_cupy_cannot_be_imported(monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # import cupy -> ImportError
    assert gpu_available() is False


def test_to_numpy():
    array = np.arange(6.0)
    assert to_numpy(array) is array

    class DeviceArray:
        def get(self):
            return np.ones(3)

    np.testing.assert_array_equal(to_numpy(DeviceArray()), np.ones(3))


SPEC = SyntheticSpec(nx=2, ny=3, tile_shape=(1, 160, 160), tissue_fraction=1.0)


def _measured_backend(volume: np.ndarray, use_gpu: bool) -> str:
    h, w = SPEC.tile_shape[1:]
    _, _, stats = measure_grid_pairs(band_reader(volume[0], h), (h, w), 2, 3, 0.2, MeasureOptions(use_gpu=use_gpu))
    return stats["backend"]


def test_the_measurement_reports_the_backend_that_ran(no_gpu, caplog):
    volume, _, _ = make_slice(SPEC, seed=1)
    with caplog.at_level(logging.WARNING, logger="linumpy_motor.backend"):
        assert _measured_backend(volume, use_gpu=True) == "numpy"
    assert caplog.records


@pytest.mark.gpu
@GPU_SKIP
def test_cupy_and_numpy_measure_the_same_shifts():
    import cupy
    import cupyx.scipy.fft

    volume, _, _ = make_slice(SPEC, seed=2)
    a = np.stack([volume[0, :, 128:160], volume[0, :, 288:320]])
    b = np.stack([volume[0, :, 160:192], volume[0, :, 320:352]])
    on_cpu = measure_shifts(a, b, (15, 15))
    on_gpu = measure_shifts(a, b, (15, 15), xp=cupy, fft=cupyx.scipy.fft)
    for cpu, gpu in zip(on_cpu, on_gpu, strict=True):
        assert gpu.shift == pytest.approx(cpu.shift, abs=1e-3)
        assert gpu.ncc == pytest.approx(cpu.ncc, abs=1e-4)
    cpu_pairs = motor.compute_registration_refinements(volume, SPEC.tile_shape, 2, 3, 0.2)
    gpu_pairs = motor.compute_registration_refinements(volume, SPEC.tile_shape, 2, 3, 0.2, use_gpu=True)
    assert _measured_backend(volume, use_gpu=True) == "cupy"
    for cpu, gpu in zip(cpu_pairs["pairs"], gpu_pairs["pairs"], strict=True):
        assert gpu["measured_dy"] == pytest.approx(cpu["measured_dy"], abs=1e-3)
        assert gpu["measured_dx"] == pytest.approx(cpu["measured_dx"], abs=1e-3)
