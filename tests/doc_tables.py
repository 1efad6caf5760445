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
