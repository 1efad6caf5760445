"""The package metadata builds with current setuptools without deprecated forms (PEP 639 licence)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.licenses import canonicalize_license_expression
from packaging.requirements import Requirement
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def test_license_is_an_spdx_expression_with_a_setuptools_that_reads_it():
    config = tomllib.loads(PYPROJECT.read_text())
    license_ = config["project"]["license"]
    assert isinstance(license_, str), "the table form stops being accepted by setuptools after 2027-02-18"
    assert canonicalize_license_expression(license_) == license_
    setuptools = next(Requirement(r) for r in config["build-system"]["requires"] if r.startswith("setuptools"))
    assert not setuptools.specifier.contains(Version("76.9")), "SPDX strings need setuptools >= 77"
