"""Timing helpers shared by the benchmarks: interleaved repetitions, medians, a table and a JSON line."""

from __future__ import annotations

import json
import logging
import statistics
import time
import warnings
from collections.abc import Callable, Mapping


def interleaved_medians(fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, float]:
    """Run each callable ``repeats`` times, alternating between them, and return the median seconds of each.

    Interleaving means slow drifts of the machine (other processes, frequency scaling) hit every candidate
    alike, so the ratios of medians are stable even when absolute times are not.
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(times) for name, times in samples.items()}


def print_table(title: str, rows: list[dict[str, object]]) -> None:
    """Print ``rows`` (dicts with the same keys) as an aligned text table under ``title``."""
    if not rows:
        return
    headers = list(rows[0])
    cells = [[_fmt(row[h]) for h in headers] for row in rows]
    widths = [max(len(h), *(len(c[i]) for c in cells)) for i, h in enumerate(headers)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for c in cells:
        print("  ".join(v.ljust(w) for v, w in zip(c, widths, strict=True)))


def print_json(result: Mapping[str, object]) -> None:
    """Print ``result`` as one JSON line (the last line a benchmark prints)."""
    print(json.dumps(dict(result), sort_keys=True))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def quiet() -> None:
    """Silence Lightning's banners and warnings so benchmark output is only the tables."""
    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
