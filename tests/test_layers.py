"""The library's sub-packages are layers: a module imports only from its own layer or the ones below it."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import linumpy_motor

PACKAGE = Path(linumpy_motor.__file__).parent
LAYERS = (
    ("linumpy_motor", "linumpy_motor.errors", "linumpy_motor.interrupts", "linumpy_motor.backend",
     "linumpy_motor.parallel", "linumpy_motor.memory"),
    ("linumpy_motor.io",),
    ("linumpy_motor.register",),
    ("linumpy_motor.stitch", "linumpy_motor.synthetic"),
    ("linumpy_motor.qc",),
    ("linumpy_motor.pipeline",),
    ("linumpy_motor.mosaic",),
)
"""From the bottom up; docs/development.md's map shows the same order."""


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _layer(module: str) -> int:
    ranks = [rank for rank, members in enumerate(LAYERS) for member in members
             if module == member or (member != "linumpy_motor" and module.startswith(member + "."))]
    assert ranks, f"{module} is in no layer"
    return max(ranks)


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}: relative import (absolute imports show the layer)"
            if node.module and node.module.startswith("linumpy_motor"):
                found |= {f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in MODULES else node.module
                          for alias in node.names}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.startswith("linumpy_motor")}
    return found


SOURCES = sorted(PACKAGE.rglob("*.py"))
MODULES = {_module_name(path) for path in SOURCES}


@pytest.mark.parametrize("path", SOURCES, ids=_module_name)
def test_imports_go_down_the_layers(path):
    module = _module_name(path)
    upward = sorted(name for name in _imports(path) if _layer(name) > _layer(module))
    assert not upward, f"{module} (layer {_layer(module)}) imports from a higher layer: {upward}"


@pytest.mark.parametrize("path", [p for p in SOURCES if p.name != "__init__.py"], ids=_module_name)
def test_every_module_declares_its_public_api(path):
    module = importlib.import_module(_module_name(path))
    public = getattr(module, "__all__", None)
    assert public, f"{module.__name__} declares no __all__"
    missing = [name for name in public if not hasattr(module, name)]
    assert not missing, f"{module.__name__}.__all__ names what it does not define: {missing}"


@pytest.mark.parametrize("path", [p for p in SOURCES if p.name == "__init__.py" and p.parent != PACKAGE],
                         ids=_module_name)
def test_every_package_lists_its_modules(path):
    package = importlib.import_module(_module_name(path))
    modules = sorted(p.stem for p in path.parent.glob("*.py") if p.name != "__init__.py")
    assert sorted(package.__all__) == modules


SCRIPTS = sorted((PACKAGE.parent / "bin").glob("*.py"))


@pytest.mark.parametrize("path", SOURCES + SCRIPTS, ids=lambda p: p.name if p.parent.name == "bin" else _module_name(p))
def test_modules_and_scripts_use_only_declared_public_names(path):
    """What one module takes from another is in that module's __all__ (or is a sub-module of a package)."""
    undeclared = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("linumpy_motor"):
            source = importlib.import_module(node.module)
            for alias in node.names:
                if f"{node.module}.{alias.name}" not in MODULES and alias.name not in getattr(source, "__all__", ()):
                    undeclared.append(f"{node.module}.{alias.name}")
    assert not undeclared, f"{path.name} imports names its sources do not declare public: {undeclared}"
