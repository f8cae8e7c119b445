"""The plain-text tables ``format_groups`` and ``format_layer_ids`` print."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["text_table"]


def text_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns two spaces apart, a dashed rule under the headers, no trailing spaces.

    Examples:
        >>> print(text_table(["name", "n"], [["a", "1"], ["bb", "22"]]))
        name  n
        ----  --
        a     1
        bb    22
    """
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = [headers, ["-" * w for w in widths], *rows]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines)
