"""Reading README.md and docs/ as data: a section under a heading, the rows of its tables, the back-quoted
names of a text and its code blocks (shared by the tests of the docs)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
USAGE = REPO / "docs" / "usage.md"
OUTPUT = REPO / "docs" / "output.md"
DOCS = [README, *sorted((REPO / "docs").glob("*.md"))]


def section(path: Path, heading: str) -> str:
    """The text under the heading ``heading`` (any level) of ``path``, up to the next heading of its level
    or above."""
    text = path.read_text(encoding="utf-8")
    found = re.search(rf"^(#+) {re.escape(heading)}\n", text, re.MULTILINE)
    assert found, f"{path.name} has no heading {heading!r}"
    level = len(found.group(1))
    rest = text[found.end():]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[:end.start()] if end else rest


def table(text: str) -> list[list[str]]:
    """The body rows of the Markdown tables in ``text`` (header and separator rows left out), as cells."""
    rows, previous = [], ""
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-| ]+\|", line.strip()):
            if previous.startswith("|"):
                rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
        previous = line
    return rows


def ticked(text: str) -> list[str]:
    """The back-quoted parts of a cell or a text (its fenced code blocks left out)."""
    return re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))


def code_blocks(text: str, language: str = "") -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def documented_layout(block: int) -> list[str]:
    """The paths of a layout block of docs/output.md, relative to OUTDIR (a folder ends with ``/``)."""
    lines = code_blocks(section(OUTPUT, "Layout"))[block].splitlines()
    assert lines[0] == "OUTDIR/"
    return [line.split()[0] for line in lines[1:]]


def as_pattern(path: str) -> re.Pattern:
    """A documented path as a pattern: ``NN`` a slice id, a folder anything under it."""
    pattern = re.escape(path).replace("NN", r"\d{2,}")
    return re.compile(pattern + (".*" if path.endswith("/") else ""))


def written(outdir: Path) -> list[str]:
    """What a run wrote under ``outdir``: its files, a stitched store counted as one."""
    found = []
    for path in sorted(outdir.rglob("*")):
        relative = path.relative_to(outdir).as_posix()
        inside_store = ".ome.zarr/" in relative
        if not inside_store and (path.is_file() or relative.endswith(".ome.zarr")):
            found.append(relative)
    return found
