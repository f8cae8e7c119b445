"""Every per-module and layer-wise scale is applied exactly once, whichever scheduler drives the optimizer."""

from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from lit_optim import Cosine, ScheduleLR, build_optimizer, param_groups
from tests.models import GPT


def expected_scale(name: str) -> float:
    """GPT with 2 blocks, layer_decay 0.75 (ids: embeddings 0, blocks 1..2, head 3) and the head override's 0.5."""
    layer = int(re.match(r"layer_(\d+)", name).group(1))  # type: ignore[union-attr]
    return 0.75 ** (3 - layer) * (0.5 if "/head/" in name else 1.0)


def grouped_optimizer() -> torch.optim.Optimizer:
    model = GPT()
    groups = param_groups(model, lr=0.1, layer_decay=0.75, overrides={"ln_f.*": {"lr_scale": 0.5, "name": "head"}})
    return build_optimizer("adamw", groups)


class TimmLikeScheduler:
    """timm.scheduler.Scheduler's group handling, written out (timm itself is not a dependency)."""

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
        self.base_values = [group["initial_lr"] for group in optimizer.param_groups]
        self.update_groups(self.base_values)

    def step_update(self, factor: float) -> None:
        self.update_groups([base * factor for base in self.base_values])

    def update_groups(self, values: list[float]) -> None:
        for group, value in zip(self.optimizer.param_groups, values, strict=True):
            if "lr_scale" in group:
                group["lr"] = value * group["lr_scale"]
            else:
                group["lr"] = value


def test_under_a_timm_scheduler_each_scale_is_applied_once() -> None:
    optimizer = grouped_optimizer()
    scheduler = TimmLikeScheduler(optimizer)
    for factor in (1.0, 0.5, 0.125):
        scheduler.step_update(factor)
        for group in optimizer.param_groups:
            assert group["lr"] == pytest.approx(0.1 * expected_scale(group["name"]) * factor, rel=1e-12)


def test_under_torch_and_lit_optim_schedulers_each_scale_is_applied_once() -> None:
    for make in (
        lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5**step),
        lambda opt: ScheduleLR(opt, Cosine(), total_steps=4),
    ):
        optimizer = grouped_optimizer()
        scheduler = make(optimizer)
        for _ in range(3):
            factors = [g["lr"] / g["initial_lr"] for g in optimizer.param_groups]
            assert len({round(f, 12) for f in factors}) == 1  # one factor for every group
            for group in optimizer.param_groups:
                assert group["initial_lr"] == pytest.approx(0.1 * expected_scale(group["name"]), rel=1e-12)
            optimizer.step()
            scheduler.step()


def test_groups_do_not_carry_timms_lr_scale_key() -> None:
    assert all("lr_scale" not in g for g in grouped_optimizer().param_groups)


def test_timm_style_groups_with_lr_scale_are_refused_by_build_optimizer() -> None:
    timm_groups = [{"params": [nn.Parameter(torch.ones(2, 2))], "lr_scale": 0.5, "weight_decay": 0.05}]
    with pytest.raises(
        ValueError,
        match=r"The parameter group 0 has an 'lr_scale' key: timm's convention: timm's schedulers multiply the lr "
        r"by it, torch's and lit_optim's never do, so under any other scheduler it would be silently ignored\. HINT:",
    ):
        build_optimizer("adamw", timm_groups, lr=1e-3)
