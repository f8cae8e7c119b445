"""The param groups of an LR range test: the base lr, each group's ratio to it, and applying a new base lr."""

from __future__ import annotations

import math
from typing import Any

from lightning.pytorch import Trainer
from torch.optim import Optimizer

from lit_optim.optim.lr_scaling import GROUP_KEY, scale_lr
from lit_optim.schedules.scheduler import ScheduleLR

__all__ = ["apply_base_lr", "base_and_ratios", "batch_scaling", "check_appliable", "sweep_groups"]


def sweep_groups(optimizers: list[Optimizer]) -> tuple[list[dict[str, Any]], list[str]]:
    if not optimizers:
        raise ValueError("LRRangeTest found no optimizer: `configure_optimizers` must return at least one.")
    groups, names = [], []
    for i, opt in enumerate(optimizers):
        for j, group in enumerate(opt.param_groups):
            name = str(group.get("name", f"group_{j}"))
            groups.append(group)
            names.append(f"optimizer_{i}/{name}" if len(optimizers) > 1 else name)
    if not groups:  # Lightning's stand-in when `configure_optimizers` returned None
        raise ValueError("LRRangeTest found no optimizer: `configure_optimizers` must return at least one.")
    return groups, names


def base_and_ratios(groups: list[dict[str, Any]]) -> tuple[float, list[float]]:
    """The base lr and each group's ratio to it (lit_optim's ``applied_lr_scale`` when consistent, else lr / max lr)."""
    lrs = [float(g.get("initial_lr", g["lr"])) for g in groups]
    for lr in lrs:
        if not (math.isfinite(lr) and lr >= 0):
            raise ValueError(f"LRRangeTest needs finite group lrs >= 0, got {lrs!r}.")
    if max(lrs) == 0:
        raise ValueError(
            f"Every param group has lr 0 ({len(lrs)} groups), so there is no ratio to keep. HINT: give the optimizer "
            "a non-zero lr (it sets the groups' ratios; the test sweeps the value)."
        )
    raw = [g.get("applied_lr_scale") for g in groups]
    if all(isinstance(s, (int, float)) and not isinstance(s, bool) and s >= 0 for s in raw):
        scales = [float(s) for s in raw if s is not None]  # lit_optim's groups: lr = base lr * applied_lr_scale
        bases = [lr / s for lr, s in zip(lrs, scales, strict=True) if s > 0]
        if bases and all(math.isclose(b, bases[0], rel_tol=1e-9) for b in bases):
            return bases[0], scales
    top = max(lrs)
    return top, [lr / top for lr in lrs]


def batch_scaling(groups: list[dict[str, Any]], base_lr: float) -> tuple[float, float]:
    """The configured lr and the ``lr_scaling`` factor that made ``base_lr`` of it (``base_lr`` and 1.0 unscaled)."""
    records = [g.get(GROUP_KEY) for g in groups]
    first = records[0]
    if not (isinstance(first, dict) and all(r == first for r in records)):
        return base_lr, 1.0
    factor = scale_lr(1.0, first["rule"], int(first["global_batch_size"]), int(first["reference_batch_size"]))
    return float(first["base_lr"]), factor


def check_appliable(trainer: Trainer) -> None:
    others = sorted({type(c.scheduler).__name__ for c in trainer.lr_scheduler_configs
                     if not isinstance(c.scheduler, ScheduleLR)})
    if others:
        raise ValueError(
            f"LRRangeTest(apply=True) can set the lr under lit_optim's ScheduleLR (or no scheduler), not under "
            f"{others}: their lrs are not all proportional to a base lr. HINT: use `apply=False` and rebuild the "
            "optimizer with `test.result.suggestion`."
        )


def apply_base_lr(trainer: Trainer, lrs: list[float]) -> None:
    groups, _ = sweep_groups(trainer.optimizers)  # the restored groups: new dicts, same order
    for group, lr in zip(groups, lrs, strict=True):
        if "initial_lr" in group:
            group["initial_lr"] = lr
        group["lr"] = lr
    for config in trainer.lr_scheduler_configs:
        scheduler = config.scheduler
        state = scheduler.state_dict()
        state["base_lrs"] = [g["initial_lr"] for g in scheduler.optimizer.param_groups]
        scheduler.load_state_dict(state)  # recomputes every group's lr at the current step, as a resume does
