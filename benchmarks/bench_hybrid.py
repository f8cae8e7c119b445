"""Time one step of a HybridOptimizer (Muon + AdamW) against the same two torch optimizers stepped by hand.

Both sides optimize copies of one small transformer LM (``_models.TinyTransformer``) on the same split: the
hybrid from ``build_hybrid(model, "muon")``, the baseline torch's ``Muon`` and ``AdamW`` built on the same
parameter lists and stepped one after the other, the recipe the hybrid replaces. Gradients are set once, so
only ``step()`` is timed. The hybrid adds a Python loop and torch's step-hook wrapper; ``hybrid_vs_by_hand``
(median hybrid time / median by-hand time) should stay within 1.05.

Run: ``python benchmarks/bench_hybrid.py [--quick]``; prints a table and a JSON line.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._models import TinyTransformer
from benchmarks._timing import interleaved_medians, print_json, print_table
from lit_optim import build_hybrid


def _models(dim: int) -> tuple[TinyTransformer, TinyTransformer]:
    torch.manual_seed(0)
    model = TinyTransformer(dim=dim, depth=2, heads=4)
    twin = copy.deepcopy(model)  # deepcopy keeps the tied head
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        p.grad = torch.randn_like(p) * 1e-2
        q.grad = p.grad.clone()
    return model, twin


def _repeat(fn: Callable[[], object], times: int) -> Callable[[], None]:
    def repeated() -> None:
        for _ in range(times):
            fn()

    return repeated


def run(quick: bool = False) -> dict[str, float]:
    """Return ``{"hybrid_vs_by_hand": ratio}`` (and per width under ``hybrid_vs_by_hand_<dim>``)."""
    rows: list[dict[str, object]] = []
    result: dict[str, float] = {}
    widths = (32, 64) if quick else (32, 64, 128)
    for dim in widths:
        model, twin = _models(dim)
        hybrid = build_hybrid(model, "muon", lr=1e-3)
        names = {id(p): n for n, p in model.named_parameters()}
        twin_params = dict(twin.named_parameters())
        # the same split, written by hand on the twin: each inner optimizer's groups, parameter by parameter
        by_hand = [
            cls([{"params": [twin_params[names[id(p)]] for p in g["params"]], "weight_decay": g["weight_decay"]}
                 for g in inner.param_groups], **extra)
            for cls, inner, extra in (
                (torch.optim.Muon, hybrid.optimizers["muon"], {"lr": 1e-3, "adjust_lr_fn": "match_rms_adamw"}),
                (torch.optim.AdamW, hybrid.optimizers["adamw"], {"lr": 1e-3}),
            )
        ]  # fmt: skip

        def step_by_hand(optimizers: list[torch.optim.Optimizer] = by_hand) -> None:
            for optimizer in optimizers:
                optimizer.step()

        steps, repeats = (5, 7) if quick else (10, 25)
        times = interleaved_medians(
            {"hybrid": _repeat(hybrid.step, steps), "by_hand": _repeat(step_by_hand, steps)}, repeats
        )
        ratio = times["hybrid"] / times["by_hand"]
        result[f"hybrid_vs_by_hand_{dim}"] = ratio
        tensors = sum(len(g["params"]) for g in hybrid.param_groups)
        rows.append({"dim": dim, "tensors": tensors, "hybrid_ms/step": times["hybrid"] / steps * 1e3,
                     "by_hand_ms/step": times["by_hand"] / steps * 1e3, "ratio": ratio})  # fmt: skip
    # the smallest model is where a fixed per-step cost shows most
    result["hybrid_vs_by_hand"] = result[f"hybrid_vs_by_hand_{widths[0]}"]
    print_table("HybridOptimizer.step vs Muon.step + AdamW.step by hand (median of interleaved repeats)", rows)
    return result


if __name__ == "__main__":
    torch.set_num_threads(1)
    print_json(run(quick="--quick" in sys.argv))
