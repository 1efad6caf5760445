"""Array-module dispatch: one code path for NumPy (CPU) and CuPy (GPU)."""

from __future__ import annotations

import logging
from types import ModuleType

import numpy as np
import scipy

__all__ = ["array_backend", "get_backend", "gpu_available", "to_numpy"]

logger = logging.getLogger(__name__)


def gpu_available() -> bool:
    """Return True when CuPy imports and sees at least one CUDA device."""
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # ImportError, CUDARuntimeError, missing driver libraries...
        return False


def array_backend(use_gpu: bool = False) -> tuple[ModuleType, str]:
    """Pick the array module (what the stitch needs: no FFT module imported).

    Parameters
    ----------
    use_gpu : bool
        Ask for CuPy. Falls back to NumPy, with a warning, when no CUDA device is usable.

    Returns
    -------
    xp : module
        ``numpy`` or ``cupy``.
    name : str
        ``"numpy"`` or ``"cupy"``: the backend that will actually run.
    """
    if use_gpu:
        if gpu_available():
            import cupy

            return cupy, "cupy"
        logger.warning("GPU requested but CuPy or a CUDA device is not available; using the CPU")
    return np, "numpy"


def get_backend(use_gpu: bool = False) -> tuple[ModuleType, ModuleType, str]:
    """Pick the array and FFT modules (:func:`array_backend`, and the FFT module that goes with it).

    Returns
    -------
    xp : module
        ``numpy`` or ``cupy``.
    fft : module
        ``scipy.fft`` or ``cupyx.scipy.fft``.
    name : str
        ``"numpy"`` or ``"cupy"``: the backend that will actually run.
    """
    xp, name = array_backend(use_gpu)
    if name == "cupy":
        import cupyx.scipy.fft

        return xp, cupyx.scipy.fft, name
    return xp, scipy.fft, name


def to_numpy(array) -> np.ndarray:
    """Bring an array (NumPy or CuPy) back to host memory as a NumPy array."""
    return array.get() if hasattr(array, "get") else np.asarray(array)
