"""Motor-model positions against registration positions: statistics and diagnostic flags."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from linumpy_motor.errors import InputError

__all__ = ["OFFSET_FLAG_PX", "OUTLIER_FLAG_PX", "SCALE_FLAG", "compare_positions"]

OFFSET_FLAG_PX = 2.0
SCALE_FLAG = 0.005
OUTLIER_FLAG_PX = 5.0


def _slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of y against x (1 when x does not vary)."""
    dx = x - x.mean()
    denominator = float((dx * dx).sum())
    return float((dx * (y - y.mean())).sum() / denominator) if denominator > 0 else 1.0


def compare_positions(motor_positions: npt.ArrayLike, reg_positions: npt.ArrayLike) -> dict:
    """Statistics of ``reg - motor`` with flags for offset, scaling and outlying tiles.

    Parameters
    ----------
    motor_positions, reg_positions : sequence of (row, col)
        Positions of the same tiles, same order.

    Returns
    -------
    dict
        ``n_tiles``, ``mean_diff_px``, ``std_diff_px`` and ``max_abs_diff_px`` (per axis, y then x),
        ``rms_diff_px`` and ``max_diff_px`` (distances), ``scale_y``/``scale_x`` (slope of
        registration against motor positions: dilation), ``flags`` and the ``thresholds`` used.
    """
    motor = np.asarray(motor_positions, dtype=float).reshape(-1, 2)
    reg = np.asarray(reg_positions, dtype=float).reshape(-1, 2)
    if motor.shape != reg.shape:
        raise InputError(None, f"position lists differ in length: {len(motor)} motor vs {len(reg)} registration")
    diff = reg - motor
    distance = np.linalg.norm(diff, axis=1)
    scale = [_slope(motor[:, k], reg[:, k]) for k in range(2)]
    mean = diff.mean(axis=0)
    return {
        "n_tiles": len(motor),
        "mean_diff_px": mean.tolist(),
        "std_diff_px": diff.std(axis=0).tolist(),
        "max_abs_diff_px": np.abs(diff).max(axis=0).tolist(),
        "rms_diff_px": float(np.sqrt((distance**2).mean())),
        "max_diff_px": float(distance.max()),
        "scale_y": scale[0],
        "scale_x": scale[1],
        "flags": {
            "systematic_offset": bool(np.linalg.norm(mean) > OFFSET_FLAG_PX),
            "scale_mismatch": bool(max(abs(s - 1) for s in scale) > SCALE_FLAG),
            "outlying_tiles": bool(distance.max() > OUTLIER_FLAG_PX),
        },
        "thresholds": {"offset_px": OFFSET_FLAG_PX, "scale": SCALE_FLAG, "outlier_px": OUTLIER_FLAG_PX},
    }
