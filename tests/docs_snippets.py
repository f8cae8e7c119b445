"""The ```python blocks of README.md and docs/*.md, for the tests that run them.

A block runs unless the line before its fence is ``<!-- fragment -->`` (a method body or an excerpt that needs a
model around it). Blocks of one page run in order in one namespace, so a page can define a model and use it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FRAGMENT = "<!-- fragment -->"
_FENCE = re.compile(r"^```python\n(.*?)^```", re.M | re.S)


@dataclass(frozen=True)
class Snippet:
    page: str
    line: int
    code: str
    runnable: bool


def pages() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def snippets(page: Path) -> list[Snippet]:
    text = page.read_text()
    found = []
    for match in _FENCE.finditer(text):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        line = text.count("\n", 0, match.start()) + 1
        found.append(Snippet(page.relative_to(ROOT).as_posix(), line, match.group(1), before != FRAGMENT))
    return found


def marked(page: Path, marker: str) -> str:
    """The ```python block right after ``<!-- marker -->`` in ``page`` (e.g. the README's quick start)."""
    text = page.read_text()
    start = text.index(f"<!-- {marker} -->")
    match = _FENCE.search(text, start)
    if match is None:
        raise ValueError(f"{page.name} has no ```python block after <!-- {marker} -->")
    return match.group(1)
