"""The outlier rule, in one place: Tukey's biweight cut on 2-D residual lengths.

A residual is a 2-D vector; its length under Gaussian noise of ``s`` px per component follows a
Rayleigh law whose median is ``s * RAYLEIGH_MEDIAN``. The robust scale is therefore the median
length over :data:`RAYLEIGH_MEDIAN` (not the 1-D MAD constant 1.4826), and a residual is an
outlier at or beyond ``TUKEY_C`` scales. The fit, the tile-position solve and the QC report all use it.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["MAD_TO_SD", "RAYLEIGH_MEDIAN", "SCALE_FLOOR_PX", "TUKEY_C", "outlier_cutoff", "robust_scale"]

TUKEY_C = 4.685
"""Tukey's biweight constant: 95 % efficiency under Gaussian noise."""
RAYLEIGH_MEDIAN = math.sqrt(2 * math.log(2))
"""Median of the length of a 2-D standard normal vector."""
MAD_TO_SD = 1.4826
"""Standard deviation of a normal sample over its median absolute deviation (1-D values only)."""
SCALE_FLOOR_PX = 1e-6
"""Smallest robust scale (px): exact data (zero residuals) still gets a finite cutoff."""


def robust_scale(lengths: np.ndarray) -> float:
    """Per-component noise scale (px) of 2-D residual ``lengths``: their median over the Rayleigh median."""
    return float(np.median(lengths)) / RAYLEIGH_MEDIAN


def outlier_cutoff(scale: float) -> float:
    """Residual length at and beyond which a residual of noise ``scale`` is an outlier (weight 0)."""
    return TUKEY_C * scale
