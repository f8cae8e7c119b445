"""Per-step cost of ``ScheduleLR.step()`` next to an equivalent ``torch.optim.lr_scheduler.LambdaLR``.

Both drive the same warmup + cosine schedule on an optimizer with 8 param groups; each repetition times
``STEPS`` consecutive ``scheduler.step()`` calls (the optimizer step itself is the same for both and left out).
Ratio key: ``schedule_vs_lambdalr`` = ScheduleLR time / LambdaLR time (target <= 1.2).

Run: ``python benchmarks/bench_schedule.py [--quick]``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import torch
from torch.optim.lr_scheduler import LambdaLR, LRScheduler

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._timing import interleaved_medians, print_json, print_table
from lit_optim import Cosine, ScheduleLR

GROUPS = 8
WARMUP = 1_000
TOTAL = 10_000_000  # long enough that every timed step is a real cosine step
MIN_LR = 0.1


def _optimizer() -> torch.optim.Optimizer:
    return torch.optim.AdamW(
        [{"params": [torch.zeros(4, requires_grad=True)], "lr": 1e-3 * (i + 1)} for i in range(GROUPS)]
    )


def _lambda(step: int) -> float:
    if step < WARMUP:
        return step / WARMUP
    p = min((step - WARMUP) / (TOTAL - WARMUP), 1.0)
    return MIN_LR + (1.0 - MIN_LR) * (1.0 + math.cos(math.pi * p)) / 2.0


def _stepper(scheduler: LRScheduler, steps: int) -> Callable[[], None]:
    scheduler.optimizer.step()  # once, so torch's step-order check is satisfied

    def run() -> None:
        for _ in range(steps):
            scheduler.step()

    return run


def run(quick: bool = False) -> dict[str, float]:
    steps, repeats = (2_000, 15) if quick else (2_000, 41)
    ours = ScheduleLR(_optimizer(), Cosine(warmup=WARMUP, min_lr=MIN_LR), total_steps=TOTAL)
    ref = LambdaLR(_optimizer(), _lambda)
    medians = interleaved_medians({"ScheduleLR": _stepper(ours, steps), "LambdaLR": _stepper(ref, steps)}, repeats)
    # like for like: both are at the same step with the same lrs
    same = ours.last_epoch == ref.last_epoch and all(
        math.isclose(a, b, rel_tol=1e-12) for a, b in zip(ours.get_last_lr(), ref.get_last_lr(), strict=True)
    )
    if not same:
        raise RuntimeError("ScheduleLR and LambdaLR diverged: the benchmark does not compare like for like.")
    ratio = medians["ScheduleLR"] / medians["LambdaLR"]
    print_table(
        f"scheduler.step(), {GROUPS} groups, warmup + cosine ({steps} steps x {repeats} interleaved repeats)",
        [{"scheduler": name, "us/step": seconds / steps * 1e6} for name, seconds in medians.items()],
    )
    return {"schedule_vs_lambdalr": ratio}


if __name__ == "__main__":
    print_json(run(quick="--quick" in sys.argv))
