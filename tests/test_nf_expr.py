"""The Groovy evaluator the Nextflow tests rely on (tests/nf_expr.py) gives what Groovy 4 gives.

The expected values were printed by Groovy 4.0 itself (GroovyShell.evaluate) for these expressions.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from nf_expr import NfSyntaxError, evaluate  # noqa: E402

GROOVY = [
    ("'false'.toBoolean()", False),
    ("'TRUE'.toBoolean()", True),
    ("'y'.toBoolean()", True),
    ("'' ?: 'x'", "x"),
    ("[] ? 1 : 2", 2),
    ("0 ?: 5", 5),
    ("137 in ((130..145) + 104 + 175)", True),
    ("129 in ((130..145) + 104 + 175)", False),
    ("'a_z07_b'.findAll(/(?<=z)\\d+/)", ["07"]),
    ("'abc'.findAll(/\\d+/) ?: 'none'", "none"),
    ("['a', '', 'b'].findAll { x -> x }.join(' ')", "a b"),
    ("'7'.padLeft(2, '0')", "07"),
    ("[id: 3, prefix: 'p'].prefix", "p"),
    ("null?.size()", None),
    ("'x.ome.zarr'.replaceFirst(/\\.ome\\.zarr$/, '')", "x"),
    ("'a b  c'.tokenize(' ')", ["a", "b", "c"]),
    ("[3, 1, 2].sort()", [1, 2, 3]),
    ("'ab' + 1 + [2]", "ab1[2]"),
    ("[1, 2] + 3", [1, 2, 3]),
    ("'x' in ['x', 'y']", True),
]


@pytest.mark.parametrize("expr, expected", GROOVY)
def test_groovy_semantics(expr, expected):
    assert evaluate(expr, {}) == expected


def test_only_the_taken_branch_is_evaluated():
    assert evaluate("xs ? xs[-1] : null", {"xs": []}) is None
    assert evaluate("a != null && a.size() > 1", {"a": None}) is False


@pytest.mark.parametrize("expr", ["x.foo()", "a / b", "unknown", "'s'.bogus()"])
def test_unsupported_code_fails_loudly(expr):
    with pytest.raises(NfSyntaxError):
        evaluate(expr, {"x": "s", "a": 1, "b": 2})
