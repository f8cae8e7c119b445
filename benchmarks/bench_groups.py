"""Time `param_groups` against the usual hand-written two-list loop, at 10^2, 10^3 and 10^4 tensors.

The baseline is the recipe most training scripts carry: one pass over ``named_parameters`` putting biases and
``ndim <= 1`` tensors in a no-decay list. ``param_groups`` does more (norm layers by class, ``no_weight_decay()``,
tied weights by identity, named and merged groups) and should stay within 1.5x of it and linear in tensor count.

Run: ``python benchmarks/bench_groups.py [--quick]``; prints a table and a JSON line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._timing import interleaved_medians, print_json, print_table
from lit_optim import param_groups

SIZES = (100, 1_000, 10_000)


def make_model(tensors: int) -> nn.Module:
    """Blocks of Linear + LayerNorm (4 tensors each) in an nn.ModuleList, nested one level like a real model."""
    blocks = [nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(tensors // 4)]
    model = nn.Module()
    model.blocks = nn.ModuleList(blocks)
    return model


def baseline(model: nn.Module, weight_decay: float = 0.01) -> list[dict[str, Any]]:
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim <= 1 or name.endswith(".bias"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def run(quick: bool = False) -> dict[str, float]:
    """Return ``{"groups_vs_baseline": ratio}`` at 10^4 tensors (and per size under ``groups_vs_baseline_<n>``)."""
    rows: list[dict[str, object]] = []
    result: dict[str, float] = {}
    for size in SIZES:
        model = make_model(size)
        ours, theirs = param_groups(model), baseline(model)
        assert [len(g["params"]) for g in ours] == [len(g["params"]) for g in theirs]  # same split on this model
        repeats = max(5, (20_000 if quick else 200_000) // size)
        times = interleaved_medians(
            {"param_groups": lambda m=model: param_groups(m), "baseline": lambda m=model: baseline(m)}, repeats
        )
        ratio = times["param_groups"] / times["baseline"]
        result[f"groups_vs_baseline_{size}"] = ratio
        rows.append(
            {
                "tensors": size,
                "param_groups_ms": times["param_groups"] * 1e3,
                "baseline_ms": times["baseline"] * 1e3,
                "us_per_tensor": times["param_groups"] / size * 1e6,
                "baseline_us_per_tensor": times["baseline"] / size * 1e6,
                "ratio": ratio,
            }
        )
    result["groups_vs_baseline"] = result[f"groups_vs_baseline_{SIZES[-1]}"]
    print_table("param_groups vs a two-list named_parameters loop (median of interleaved repeats)", rows)
    return result


if __name__ == "__main__":
    print_json(run(quick="--quick" in sys.argv))
