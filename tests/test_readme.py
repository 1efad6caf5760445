"""The numbers the README states are the code's: each phrase is built from the constant it quotes."""

from __future__ import annotations

from pathlib import Path

import pytest

from linumpy_motor.mosaic.motor import BLEND_MIN_SHIFT_PX, BLEND_SHIFT_SHARE
from linumpy_motor.qc.summary import POOR_FIT_SCALE_PX, POOR_NCC
from linumpy_motor.qc.verdict import (
    BLANK_RATIO,
    MAX_FAILED_FRACTION,
    OVERLAP_TOLERANCE,
    SATURATED_FRACTION,
    TISSUE_LEVEL,
    TISSUE_QUANTILE,
)
from linumpy_motor.register.flatfield import DEEP_CHUNK_MIN_TILES
from linumpy_motor.register.measure import MAX_EMPTY_DEFAULT
from linumpy_motor.stitch.assemble import BLOCK_PX, CACHE_BYTES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SHARE = {0.5: "half"}[BLEND_SHIFT_SHARE]
PHRASES = [
    f"more than {100 * OVERLAP_TOLERANCE:g} % of a tile along an axis",
    f"robust residual scale of the pooled fit above {POOR_FIT_SCALE_PX:g} px",
    f"median pair NCC below {POOR_NCC:g}",
    f"reads at least {100 * TISSUE_LEVEL:g} % of the slice's tissue level (the {100 * TISSUE_QUANTILE:g}th percentile",
    f"at least {100 * SATURATED_FRACTION:g} % of its pixels at the plane's largest value",
    f"reads under {100 * BLANK_RATIO:g} % of the neighbour's copy of the same place, which shows tissue, or over "
    f"{1 / BLANK_RATIO:g} times it",
    f"over {100 * MAX_FAILED_FRACTION:g} % of its pairs that show tissue were skipped or rejected by the fit",
    f"(`--cache-mb`, {CACHE_BYTES // 2**20} MB by default)",
    f"`b` the block size ({BLOCK_PX})",
    f"at least {DEEP_CHUNK_MIN_TILES}, when every read decodes a whole deep chunk",
    f"skip pairs < {100 * (1 - MAX_EMPTY_DEFAULT):.0f} % non-zero",
    f"a tile moves by {SHARE} the mean of its neighbours' refinements",
    f"not at all below {BLEND_MIN_SHIFT_PX:g} px along both axes",
]


@pytest.mark.parametrize("phrase", PHRASES)
def test_the_readme_quotes_the_constant(phrase):
    assert phrase in " ".join(README.split()), f"README does not say: {phrase}"
