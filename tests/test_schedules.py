"""Every schedule against its documented formula, and against torch's own scheduler where one exists."""

from __future__ import annotations

import dataclasses
import math
import pickle
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch.optim.lr_scheduler import (
    CosineAnnealingWarmRestarts,
    ExponentialLR,
    LRScheduler,
    MultiStepLR,
    OneCycleLR,
    PolynomialLR,
    StepLR,
)

from lit_optim.schedules import (
    SCHEDULES,
    Constant,
    Cosine,
    CosineRestarts,
    Cyclic,
    Exponential,
    InverseSqrt,
    Linear,
    MultiStep,
    OneCycle,
    Polynomial,
    Schedule,
    Step,
    Warmup,
    WarmupStableDecay,
    build_schedule,
)
from lit_optim.schedules.durations import Duration, TrainingLength
from lit_optim.schedules.scheduler import ScheduleLR

BASE_LRS = (0.1, 0.03, 1e-4)
TOTAL = 24


def _cos(p: float) -> float:
    return (1 + math.cos(math.pi * p)) / 2


def _restarts(s: int, period: int, mult: int) -> tuple[int, int]:
    """(steps into the cycle, cycle length), by walking the cycles one by one."""
    start, length = 0, period
    while s >= start + length:
        start += length
        length *= mult
    return s - start, length


# (schedule, closed form of factor(s) for a run of TOTAL steps, written from the docstring's formula)
CLOSED_FORMS: list[tuple[Schedule, Callable[[int], float]]] = [
    (Constant(), lambda s: 1.0),
    (Linear(), lambda s: 1 - min(s / TOTAL, 1)),
    (Linear(min_lr=0.25), lambda s: 0.25 + 0.75 * (1 - min(s / TOTAL, 1))),
    (Cosine(), lambda s: _cos(min(s / TOTAL, 1))),
    (Cosine(min_lr=0.1, warmup=4), lambda s: s / 4 if s < 4 else 0.1 + 0.9 * _cos(min((s - 4) / 20, 1))),
    (
        Cosine(warmup=Warmup(duration=6, shape="cosine", start_factor=0.1)),
        lambda s: 0.1 + 0.9 * (1 - math.cos(math.pi * s / 6)) / 2 if s < 6 else _cos(min((s - 6) / 18, 1)),
    ),
    (
        Linear(warmup=Warmup(duration="25%", shape="exponential", start_factor=0.01)),
        lambda s: 0.01 ** (1 - s / 6) if s < 6 else 1 - min((s - 6) / 18, 1),
    ),
    (CosineRestarts(period=5), lambda s: _cos((s % 5) / 5)),
    (CosineRestarts(period=3, period_mult=2, min_lr=0.2), lambda s: 0.2 + 0.8 * _cos(_div(*_restarts(s, 3, 2)))),
    (CosineRestarts(period="25%", warmup=2), lambda s: s / 2 if s < 2 else _cos(((s - 2) % 6) / 6)),
    (Polynomial(power=2.0), lambda s: (1 - min(s / TOTAL, 1)) ** 2),
    (Polynomial(power=0.5, min_lr=0.1), lambda s: 0.1 + 0.9 * (1 - min(s / TOTAL, 1)) ** 0.5),
    (Step(every=5, gamma=0.5), lambda s: 0.5 ** (s // 5)),
    (Step(every=5, gamma=0.5, min_lr=0.2), lambda s: max(0.2, 0.5 ** (s // 5))),
    (Step(every=4, gamma=0.5, warmup=3), lambda s: s / 3 if s < 3 else 0.5 ** ((s - 3) // 4)),
    (MultiStep(milestones=(3, "50%", 20), gamma=0.1), lambda s: 0.1 ** sum(s >= m for m in (3, 12, 20))),
    (
        MultiStep(milestones=[6, 12], gamma=0.5, warmup=4),  # milestones are run positions, warmup included
        lambda s: s / 4 if s < 4 else 0.5 ** sum(s >= m for m in (6, 12)),
    ),
    (Exponential(gamma=0.8), lambda s: 0.8**s),
    (Exponential(gamma=0.8, min_lr=0.05), lambda s: max(0.05, 0.8**s)),
    (InverseSqrt(warmup=4), lambda s: s / 4 if s < 4 else math.sqrt(4 / s)),
    (InverseSqrt(timescale=2, min_lr=0.4), lambda s: max(0.4, math.sqrt(2 / (s + 2)))),
    (
        WarmupStableDecay(warmup=4, decay=6),
        lambda s: s / 4 if s < 4 else (1.0 if s < 18 else 1 - min((s - 18) / 6, 1)),
    ),
    (
        WarmupStableDecay(decay="25%", decay_shape="cosine", min_lr=0.1),
        lambda s: 1.0 if s < 18 else 0.1 + 0.9 * _cos(min((s - 18) / 6, 1)),
    ),
    (
        WarmupStableDecay(decay=8, decay_shape="1-sqrt"),
        lambda s: 1.0 if s < 16 else 1 - math.sqrt(min((s - 16) / 8, 1)),
    ),
    (
        # torch CyclicLR's triangle: up 3, down 5 (cycle 8), height halving each cycle (triangular2)
        Cyclic(up=3, down=5, mode="triangular2", min_lr=0.1),
        lambda s: 0.1 + 0.9 * (s % 8 / 3 if s % 8 <= 3 else (8 - s % 8) / 5) / 2 ** (s // 8),
    ),
    (
        OneCycle(pct_start=0.25, anneal="linear", div_factor=10.0, final_div_factor=100.0),
        # phases end at 0.25 * 24 - 1 = 5 and 23: 0.1 -> 1 -> 0.001
        lambda s: 0.1 + 0.9 * s / 5 if s <= 5 else 1 + (0.001 - 1) * min((s - 5) / 18, 1),
    ),
    (
        OneCycle(pct_start=0.25, three_phase=True),
        # phases end at 5, 10 and 23: 0.04 -> 1 -> 0.04 -> 4e-6, cosine
        lambda s: (
            1 + (0.04 - 1) * _cos(s / 5)
            if s <= 5
            else 0.04 + (1 - 0.04) * _cos((s - 5) / 5)
            if s <= 10
            else 4e-6 + (0.04 - 4e-6) * _cos(min((s - 10) / 13, 1))
        ),
    ),
]


def _div(a: int, b: int) -> float:
    return a / b


def _id(value: object) -> str | None:
    return repr(value)[:70] if isinstance(value, Schedule) else None


@pytest.mark.parametrize(("schedule", "closed_form"), CLOSED_FORMS, ids=_id)
def test_closed_form(schedule: Schedule, closed_form: Callable[[int], float]) -> None:
    for s in range(TOTAL + 3):  # and past the end: the final value holds
        assert schedule.factor(s, TOTAL) == pytest.approx(closed_form(min(s, TOTAL)), rel=1e-12, abs=1e-15), s


@pytest.mark.parametrize(("schedule", "closed_form"), CLOSED_FORMS, ids=_id)
def test_scheduler_follows_spec_for_every_group(schedule: Schedule, closed_form: Callable[[int], float]) -> None:
    lrs = ours(schedule, TOTAL)
    for s, row in enumerate(lrs):
        assert row == pytest.approx([b * closed_form(s) for b in BASE_LRS], rel=1e-12, abs=1e-18), s


def test_every_catalogue_entry_has_a_closed_form_test() -> None:
    assert {type(s) for s, _ in CLOSED_FORMS} == set(SCHEDULES.values())


# ---------------------------------------------------------------- vs torch, every step


def make_optimizer(
    cls: type[torch.optim.Optimizer] = torch.optim.SGD, lrs: tuple[float, ...] = BASE_LRS, **kwargs: Any
) -> torch.optim.Optimizer:
    return cls([{"params": [torch.zeros(2, requires_grad=True)], "lr": lr} for lr in lrs], **kwargs)


def drive(scheduler: LRScheduler, steps: int, key: str = "lr") -> list[list[float]]:
    """``group[key]`` (``betas`` -> beta1) of every group at each of ``steps`` optimizer steps."""
    opt = scheduler.optimizer
    out = []
    for _ in range(steps):
        out.append([float(g["betas"][0] if key == "betas" else g[key]) for g in opt.param_groups])
        opt.step()
        scheduler.step()
    return out


def ours(schedule: Schedule, total: int, steps: int | None = None, **kwargs: Any) -> list[list[float]]:
    return drive(ScheduleLR(make_optimizer(**kwargs), schedule, total), total if steps is None else steps)


def assert_curves_equal(a: list[list[float]], b: list[list[float]], rel: float = 1e-12) -> None:
    assert len(a) == len(b)
    for step, (x, y) in enumerate(zip(a, b, strict=True)):
        assert x == pytest.approx(y, rel=rel, abs=1e-15), f"step {step}: {x} != {y}"


TORCH_CASES: list[tuple[Schedule, Callable[[torch.optim.Optimizer], LRScheduler]]] = [
    (CosineRestarts(period=5), lambda o: CosineAnnealingWarmRestarts(o, T_0=5)),
    (CosineRestarts(period=3, period_mult=2), lambda o: CosineAnnealingWarmRestarts(o, T_0=3, T_mult=2)),
    (Step(every=3, gamma=0.5), lambda o: StepLR(o, step_size=3, gamma=0.5)),
    (MultiStep(milestones=(2, 5, 5, 9), gamma=0.3), lambda o: MultiStepLR(o, milestones=[2, 5, 5, 9], gamma=0.3)),
    (Exponential(gamma=0.9), lambda o: ExponentialLR(o, gamma=0.9)),
    (Polynomial(power=2.0), lambda o: PolynomialLR(o, total_iters=TOTAL, power=2.0)),
    (Polynomial(power=0.7), lambda o: PolynomialLR(o, total_iters=TOTAL, power=0.7)),
    (OneCycle(), lambda o: OneCycleLR(o, max_lr=list(BASE_LRS), total_steps=TOTAL, cycle_momentum=False)),
    (
        OneCycle(pct_start=0.4, anneal="linear", div_factor=5.0, final_div_factor=50.0),
        lambda o: OneCycleLR(
            o, list(BASE_LRS), total_steps=TOTAL, pct_start=0.4, anneal_strategy="linear", div_factor=5.0,
            final_div_factor=50.0, cycle_momentum=False,
        ),
    ),
    (
        OneCycle(three_phase=True, pct_start=0.25),
        lambda o: OneCycleLR(o, list(BASE_LRS), total_steps=TOTAL, pct_start=0.25, three_phase=True,
                             cycle_momentum=False),
    ),
]


@pytest.mark.parametrize(("schedule", "make"), TORCH_CASES, ids=_id)
def test_matches_torch_every_step(schedule: Schedule, make: Callable[[torch.optim.Optimizer], LRScheduler]) -> None:
    expected = drive(make(make_optimizer()), TOTAL)
    assert_curves_equal(ours(schedule, TOTAL), expected, rel=1e-9)  # torch's recursive forms accumulate rounding


@pytest.mark.parametrize("min_lr", [0.1, 0.5])
def test_restarts_floor_matches_torch_eta_min(min_lr: float) -> None:
    lrs = (0.2, 0.2)  # torch's eta_min is one absolute value; ours a ratio per group
    expected = drive(CosineAnnealingWarmRestarts(make_optimizer(lrs=lrs), T_0=4, T_mult=2, eta_min=min_lr * 0.2), 30)
    got = drive(ScheduleLR(make_optimizer(lrs=lrs), CosineRestarts(period=4, period_mult=2, min_lr=min_lr), 30), 30)
    assert_curves_equal(got, expected)


@pytest.mark.parametrize(
    ("cls", "kwargs", "key"),
    [
        (torch.optim.SGD, {"momentum": 0.9}, "momentum"),
        (torch.optim.AdamW, {"betas": (0.9, 0.98)}, "betas"),
    ],
)
@pytest.mark.parametrize("three_phase", [False, True])
def test_one_cycle_momentum_matches_torch(
    cls: type[torch.optim.Optimizer], kwargs: dict[str, Any], key: str, three_phase: bool
) -> None:
    spec = OneCycle(cycle_momentum=True, base_momentum=0.8, max_momentum=0.9, three_phase=three_phase)
    ref = OneCycleLR(make_optimizer(cls, **kwargs), list(BASE_LRS), total_steps=TOTAL, base_momentum=0.8,
                     max_momentum=0.9, three_phase=three_phase)
    mine = ScheduleLR(make_optimizer(cls, **kwargs), spec, TOTAL)
    assert_curves_equal(drive(mine, TOTAL, key), drive(ref, TOTAL, key))
    ref = OneCycleLR(make_optimizer(cls, **kwargs), list(BASE_LRS), total_steps=TOTAL, base_momentum=0.8,
                     max_momentum=0.9, three_phase=three_phase)
    mine = ScheduleLR(make_optimizer(cls, **kwargs), spec, TOTAL)
    assert_curves_equal(drive(mine, TOTAL), drive(ref, TOTAL), rel=1e-9)
    if key == "betas":
        assert all(g["betas"][1] == 0.98 for g in mine.optimizer.param_groups)


def test_one_cycle_momentum_needs_momentum() -> None:
    opt = make_optimizer(torch.optim.Adagrad)
    with pytest.raises(ValueError, match=r"cycles momentum, but param group 0 of Adagrad has neither `momentum`"):
        ScheduleLR(opt, OneCycle(cycle_momentum=True), TOTAL)


# ---------------------------------------------------------------- specs as values


def test_specs_are_frozen_comparable_picklable_keyword_only() -> None:
    spec = Cosine(warmup="5%", min_lr=0.1)
    assert spec == Cosine(warmup=Warmup(duration=0.05), min_lr=0.1)
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert hash(spec) == hash(Cosine(warmup="5%", min_lr=0.1))
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.min_lr = 0.2  # type: ignore[misc]
    with pytest.raises(TypeError, match=r"positional"):
        Cosine("5%")  # type: ignore[misc]
    assert repr(MultiStep(milestones=["30%", "2ep"])) == (
        "MultiStep(warmup=None, min_lr=0.0, milestones=(Duration('30%'), Duration('2ep')), gamma=0.1)"
    )


def test_resolve_turns_every_duration_into_steps() -> None:
    spec = WarmupStableDecay(warmup="1ep", decay="10%")
    assert spec.resolve(TrainingLength(200, 30)) == WarmupStableDecay(warmup=30, decay=20)
    spec2 = MultiStep(milestones=("50%", "2ep"))
    assert spec2.resolve(TrainingLength(100, 10)).milestones == (Duration(50), Duration(20))


def test_factor_of_unresolved_epochs_raises() -> None:
    with pytest.raises(ValueError, match=r"2ep is in epochs: resolve the schedule first"):
        Step(every="2ep").factor(3, 100)


def test_build_schedule() -> None:
    assert build_schedule("wsd", decay="10%") == WarmupStableDecay(decay="10%")
    assert build_schedule("one_cycle") == OneCycle()
    with pytest.raises(ValueError, match=r"Unknown schedule 'cosine_restart'\. Valid: \['constant', 'cosine', "
                       r"'cosine_restarts'.*Did you mean 'cosine_restarts'\?"):
        build_schedule("cosine_restart")
    with pytest.raises(ValueError, match=r"Unknown parameter of Cosine 'min_lr_ratio'\. Valid: \['cycles', "
                       r"'decay_end', 'min_lr', 'min_lr_abs', 'warmup'\]\. Did you mean 'min_lr_abs'\?"):
        build_schedule("cosine", min_lr_ratio=0.1)


def test_build_schedule_takes_a_warmup_mapping_from_a_config() -> None:
    # YAML/CLI configs can only spell a shaped warmup as a mapping
    spec = build_schedule("cosine", warmup={"duration": "5%", "shape": "cosine", "start_factor": 0.1}, min_lr=0.1)
    assert spec == Cosine(warmup=Warmup(duration="5%", shape="cosine", start_factor=0.1), min_lr=0.1)
    assert Linear(warmup={"duration": 3}) == Linear(warmup=3)
    with pytest.raises(ValueError, match=r"Unknown parameter of Warmup 'shap'\. Valid: \['duration', 'shape', "
                       r"'start_factor', 'start_lr'\]\. Did you mean 'shape'\?"):
        build_schedule("cosine", warmup={"duration": 5, "shap": "cosine"})
    with pytest.raises(TypeError, match=r"missing 1 required keyword-only argument: 'duration'"):
        Cosine(warmup={"shape": "cosine"})


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Cosine(min_lr=1.5), ValueError,
         r"`min_lr` is a ratio of each group's initial lr .* got 1\.5: a floor above the base lr"),
        (lambda: Linear(min_lr=-0.1), ValueError, r"`min_lr` .* must be in \[0, 1\], got -0\.1"),
        (lambda: Cosine(warmup=0), ValueError, r"Invalid `warmup`: A duration must be > 0"),
        (lambda: Cosine(warmup=-5), ValueError, r"Invalid `warmup`: A duration must be > 0"),
        (lambda: Cosine(warmup="5 weeks"), ValueError, r"Unknown duration unit 'weeks'"),
        (lambda: Warmup(duration=5, shape="linar"), ValueError,  # type: ignore[arg-type]
         r"`shape` must be one of \['1-sqrt', 'constant', 'cosine', 'exponential', 'linear'\], got 'linar'\. "
         r"Did you mean 'linear'\?"),
        (lambda: Warmup(duration=5, start_factor=1.0), ValueError, r"`start_factor` must be in \[0, 1\), got 1\.0"),
        (lambda: Warmup(duration=5, shape="exponential"), ValueError, r"exponential warmup needs `start_factor` > 0"),
        (lambda: Step(every=0), ValueError, r"Invalid `every`: A duration must be > 0"),
        (lambda: Step(every=3, gamma=0.0), ValueError, r"`gamma` must be in \(0, 1\], got 0\.0"),
        (lambda: Exponential(gamma=1.5), ValueError, r"`gamma` must be in \(0, 1\], got 1\.5"),
        (lambda: MultiStep(milestones=()), ValueError,
         r"`milestones` must be a non-empty tuple of durations, got \(\)"),
        (lambda: MultiStep(milestones=(5, -1)), ValueError, r"Invalid `milestones`: A duration must be > 0"),
        (lambda: Polynomial(power=0.0), ValueError, r"`power` must be > 0 and finite, got 0\.0"),
        (lambda: CosineRestarts(period=5, period_mult=0), ValueError, r"`period_mult` must be > 0.*got 0"),
        (lambda: CosineRestarts(period=5, period_mult=0.5), ValueError, r"`period_mult` must be >= 1 .*, got 0\.5"),
        (lambda: InverseSqrt(), ValueError, r"InverseSqrt needs a `timescale` or a `warmup`"),
        (lambda: WarmupStableDecay(decay_shape="sqrt"), ValueError,  # type: ignore[arg-type]
         r"`decay_shape` must be one of \['1-sqrt', 'cosine', 'linear'\], got 'sqrt'"),
        (lambda: OneCycle(pct_start=1.0), ValueError, r"`pct_start` must be < 1, got 1\.0"),
        (lambda: OneCycle(pct_start=0.5, three_phase=True), ValueError,
         r"`pct_start` must be < 0\.5 with `three_phase"),
        (lambda: OneCycle(anneal="cosine"), ValueError,  # type: ignore[arg-type]
         r"`anneal` must be one of \['cos', 'linear'\], got 'cosine'"),
        (lambda: OneCycle(div_factor=-1.0), ValueError, r"`div_factor` must be > 0 and finite, got -1\.0"),
        (lambda: OneCycle(max_momentum=1.2), ValueError, r"`max_momentum` must be in \(0, 1\], got 1\.2"),
    ],
)
def test_bad_spec(make: Callable[[], Any], error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    ("schedule", "length", "match"),
    [
        (Cosine(warmup="100%"), TrainingLength(50),
         r"The warmup \(100%\) resolves to 50 steps, not shorter than the run"),
        (Linear(warmup="3ep"), TrainingLength(50, 20), r"The warmup \(3ep\) resolves to 60 steps"),
        (Linear(warmup="2ep"), TrainingLength(50), r"Cannot resolve 2ep to optimizer steps"),
        (WarmupStableDecay(warmup=30, decay="50%"), TrainingLength(50),
         r"warmup \(30 steps\) and decay \(25 steps\) together are longer than the run of 50"),
        (OneCycle(pct_start=0.01), TrainingLength(50), r"OneCycle\(pct_start=0\.01\) leaves a phase without steps"),
    ],
)
def test_does_not_fit_the_run(schedule: Schedule, length: TrainingLength, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        schedule.resolve(length)
