"""Time `param_groups` against the usual hand-written two-list loop, at 10^2, 10^3 and 10^4 tensors.

The baseline is the recipe most training scripts carry: one pass over ``named_parameters`` putting biases and
``ndim <= 1`` tensors in a no-decay list. ``param_groups`` does more (norm layers by class, ``no_weight_decay()``,
tied weights by identity, named and merged groups) and should stay within 1.5x of it and linear in tensor count.

With ``layer_decay``, automatic layer ids (found from the module tree, stages of blocks here) are timed against the
BEiT-style loop that parses the layer id out of each name and keys groups by ``(layer, decay)``.

Run: ``python benchmarks/bench_groups.py [--quick]``; prints two tables and a JSON line.
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


class Stage(nn.Module):
    """A stage (recognised by its class name): a downsampling layer, then its blocks."""


def make_staged_model(tensors: int, stages: int = 50) -> nn.Module:
    """``stages`` stages, each a downsampling Linear then an nn.Sequential of Linear + LayerNorm blocks."""
    per_stage = max(1, (tensors // stages - 2) // 4)
    model = nn.Module()
    model.stages = nn.Sequential()
    for _ in range(stages):
        stage = Stage()
        stage.downsample = nn.Linear(4, 4)
        stage.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)) for _ in range(per_stage)])
        model.stages.append(stage)
    return model


def layer_baseline(model: nn.Module, decay: float = 0.75, lr: float = 1e-3) -> list[dict[str, Any]]:
    """The BEiT recipe: parse ``stages.<s>.blocks.<b>`` for the layer id, one group per (layer, no-decay)."""
    per_stage = len(model.stages[0].blocks)  # type: ignore[index, arg-type]
    named = list(model.named_parameters())
    ids = []
    for name, _ in named:
        parts = name.split(".")
        stage, block = int(parts[1]), int(parts[3]) if parts[2] == "blocks" else 0
        ids.append(stage * per_stage + block + 1)
    top = max(ids) + 1
    groups: dict[tuple[int, bool], dict[str, Any]] = {}
    for (name, p), layer in zip(named, ids, strict=True):
        no_decay = p.ndim <= 1 or name.endswith(".bias")
        settings = {"params": [], "lr": lr * decay ** (top - layer), "weight_decay": 0.0 if no_decay else 0.01}
        group = groups.setdefault((layer, no_decay), settings)
        group["params"].append(p)
    return list(groups.values())


def run_layer_decay(quick: bool) -> dict[str, float]:
    model = make_staged_model(SIZES[-1])
    ours, theirs = param_groups(model, layer_decay=0.75), layer_baseline(model)
    assert sorted(len(g["params"]) for g in ours) == sorted(len(g["params"]) for g in theirs)
    times = interleaved_medians(
        {"param_groups": lambda: param_groups(model, layer_decay=0.75), "baseline": lambda: layer_baseline(model)},
        5 if quick else 20,
    )
    ratio = times["param_groups"] / times["baseline"]
    tensors = sum(1 for _ in model.parameters())
    row = {"tensors": tensors, "param_groups_ms": times["param_groups"] * 1e3, "baseline_ms": times["baseline"] * 1e3,
           "ratio": ratio}  # fmt: skip
    print_table("param_groups(layer_decay=0.75) on stages of blocks vs the BEiT name-parsing loop", [row])
    return {"layer_decay_vs_baseline": ratio}


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
    result.update(run_layer_decay(quick))
    return result


if __name__ == "__main__":
    print_json(run(quick="--quick" in sys.argv))
