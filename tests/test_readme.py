"""The numbers the README states are the code's: each phrase is built from the constant it quotes."""

from __future__ import annotations

from pathlib import Path

import pytest

from linumpy_motor.mosaic.motor import BLEND_MIN_SHIFT_PX, BLEND_SHIFT_SHARE
from linumpy_motor.qc.summary import OVERLAP_WARNING_FRACTION, POOR_FIT_SCALE_PX, POOR_NCC
from linumpy_motor.register.flatfield import DEEP_CHUNK_MIN_TILES
from linumpy_motor.register.measure import MAX_EMPTY_DEFAULT
from linumpy_motor.stitch.assemble import BLOCK_PX, CACHE_BYTES

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
SHARE = {0.5: "half"}[BLEND_SHIFT_SHARE]
PHRASES = [
    f"overlap more than {100 * OVERLAP_WARNING_FRACTION:g} % of a tile",
    f"a robust residual scale above {POOR_FIT_SCALE_PX:g} px",
    f"median pair NCC below {POOR_NCC:g}",
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
