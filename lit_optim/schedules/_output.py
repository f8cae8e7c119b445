"""Writing curves out: CSV rows at full precision and matplotlib figures as PNG (the ``plot`` extra)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["new_figure", "save_png", "write_csv"]


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[float]]) -> Path:
    """Write ``step,<header...>`` and one row per step (values as ``repr``, so they read back exactly).

    Examples:
        >>> import tempfile
        >>> out = write_csv(Path(tempfile.mkdtemp()) / "a" / "c.csv", ["lr"], [[0.1], [0.2]])
        >>> out.read_text().splitlines()
        ['step,lr', '0,0.1', '1,0.2']
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["step", *header])
        for step, row in enumerate(rows):
            writer.writerow([step, *(repr(v) for v in row)])
    return path


def new_figure(owner: str, **kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure`` (no pyplot state) for ``owner``'s plot.

    Raises:
        ImportError: matplotlib is not installed (the message names ``owner`` and the extra).
    """
    try:
        from matplotlib.figure import Figure
    except ImportError as err:
        raise ImportError(
            f"{owner} needs matplotlib: `pip install 'lit_optim[plot]'` (or `pip install matplotlib`)."
        ) from err
    return Figure(dpi=110, layout="constrained", **kwargs)


def save_png(fig: Any, path: str | Path) -> Path:
    """Save ``fig`` as a PNG at ``path`` (its folder created) and return the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
