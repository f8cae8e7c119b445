"""Edge cases of the schedule options: absolute floors, cycle peaks."""

from __future__ import annotations

import warnings
from typing import Any

import pytest
import torch

from lit_optim import Cosine, CosineRestarts, Linear, ScheduleLR, Warmup


def _two_lrs() -> torch.optim.Optimizer:
    groups = [
        {"params": [torch.nn.Parameter(torch.zeros(1))], "name": "body", "lr": 0.1},
        {"params": [torch.nn.Parameter(torch.zeros(1))], "name": "frozen", "lr": 0.0},
    ]
    return torch.optim.SGD(groups, lr=0.1)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        (Cosine(min_lr_abs=0.01), r"min_lr_abs=0.01.*above the initial lr of param group 'frozen' \(0.0\).*rises"),
        (
            Linear(warmup=Warmup(duration=2, start_lr=0.01)),
            r"start_lr=0.01.*above the initial lr of param group 'frozen'",
        ),
    ],
)
def test_an_absolute_floor_above_a_groups_lr_warns(spec: Any, match: str) -> None:
    # timm's semantics (the lr moves towards the one absolute value) turn a decay into a rise for such a group
    with pytest.warns(UserWarning, match=match):
        ScheduleLR(_two_lrs(), spec, 10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ScheduleLR(_two_lrs(), Cosine(min_lr_abs=0.0), 10)


def test_a_cycle_decay_above_one_is_refused_like_cyclic_gamma() -> None:
    # peaks of 2x, 4x... the base lr: not a decay (Cyclic's gamma is refused above 1 the same way)
    with pytest.raises(ValueError, match=r"`cycle_decay` must be in \(0, 1\], got 2.0"):
        CosineRestarts(period=5, cycle_decay=2.0)
    assert CosineRestarts(period=5, cycle_decay=1.0).factor(5, 10) == 1.0


@pytest.mark.parametrize("field", ["cycle_momentum", "three_phase"])
def test_one_cycle_switches_refuse_a_string(field: str) -> None:
    # a quoted "false" in a plain YAML config is truthy: it would cycle the momentum (or add a phase) silently
    from lit_optim import OneCycle

    with pytest.raises(TypeError, match=rf"`{field}` must be True or False, got 'false'"):
        OneCycle(**{field: "false"})
