"""The options that express peers' schedules (issue 13): their formulas, their errors, durations' rounding rule."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, get_args

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.optim.lr_scheduler import ConstantLR, CyclicLR

from lit_optim import (
    Constant,
    Cosine,
    CosineRestarts,
    Cyclic,
    Linear,
    MultiStep,
    Plateau,
    Polynomial,
    Schedule,
    ScheduleLR,
    Step,
    TrainingLength,
    Warmup,
    WarmupStableDecay,
    preview_schedule,
)
from lit_optim.schedules import SCHEDULES, ScheduleName
from tests.test_peer_schedules import LRS, Peer, PeerModel, Recorder
from tests.trainers import cpu_trainer

# ---------------------------------------------------------------- factor() on unresolved specs (a mutation gap)


def test_factor_of_an_unresolved_fraction_rounds_like_resolve() -> None:
    # 5% of 30 steps is 1.5: 2 warmup steps (rounded up), so step 1 is halfway up. Flooring would give 1 step (1.0).
    assert Cosine(warmup="5%").factor(1, 30) == 0.5
    assert Cosine(warmup="5%").resolve(TrainingLength(30)).warmup == Warmup(duration=2)


UNRESOLVED = [
    Cosine(warmup="5%"),
    Cosine(warmup="10%", decay_end="55%", cycles=0.75),
    Linear(warmup=0.07, min_lr_abs=0.01),
    Polynomial(warmup="3%", decay_end=0.5, power=2.0),
    CosineRestarts(period="15%", warmup="5%"),
    CosineRestarts(cycles=3, warmup="12%", warmup_prefix=False),
    Step(every="11%", gamma=0.5),
    MultiStep(milestones=("13%", "47%"), gamma=0.5),
    WarmupStableDecay(warmup="5%", stable="33%", decay="17%"),
    Cyclic(up="9%", down="14%", warmup="5%"),
]


@pytest.mark.parametrize("spec", UNRESOLVED, ids=lambda s: repr(s)[:60])
@pytest.mark.parametrize("total", [25, 30, 37, 91])
def test_unresolved_factor_equals_resolved_factor_at_every_step(spec: Schedule, total: int) -> None:
    resolved = spec.resolve(TrainingLength(total))
    for step in range(total + 2):
        assert spec.lr_terms(step, total) == resolved.lr_terms(step, total), step


# ---------------------------------------------------------------- formulas of the new options


def test_warmup_shapes_and_absolute_start() -> None:
    assert [Warmup(duration=4, shape="1-sqrt").factor(s, 4) for s in range(4)] == [
        1 - math.sqrt(1 - s / 4) for s in range(4)
    ]
    assert [Warmup(duration=3, shape="constant", start_factor=0.25).factor(s, 3) for s in range(3)] == [0.25] * 3
    w = Warmup(duration=4, shape="cosine", start_lr=0.01)
    for s in range(4):
        g = (1 - math.cos(math.pi * s / 4)) / 2
        factor, offset = w.lr_terms(s, 4)
        for lr in (0.1, 3.0):  # an absolute start: the same lr for every group at step 0
            assert lr * factor + offset == pytest.approx(0.01 + (lr - 0.01) * g, abs=1e-15)


@pytest.mark.parametrize("end", [12, 30, 40])  # before the run's end, at it, and past it (the run stops mid-decay)
def test_decay_end_then_hold(end: int) -> None:
    spec = Cosine(warmup=2, decay_end=end, min_lr=0.2)
    for s in range(33):  # a run of 30 steps, and past it
        p = min(max(min(s, 30) - 2, 0) / (end - 2), 1.0)
        expected = s / 2 if s < 2 else 0.2 + 0.8 * (1 + math.cos(math.pi * p)) / 2
        assert spec.factor(s, 30) == pytest.approx(expected, abs=1e-15), s


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_equals_torch_cycliclr_with_momentum(mode: str) -> None:
    gamma = 0.95 if mode == "exp_range" else 1.0

    def make() -> torch.optim.Optimizer:
        params = [{"params": [torch.zeros(1, requires_grad=True)], "lr": lr} for lr in (0.2, 0.6)]
        return torch.optim.SGD(params, lr=0.2, momentum=0.9)

    theirs = make()
    torch_sched = CyclicLR(theirs, base_lr=[0.02, 0.06], max_lr=[0.2, 0.6], step_size_up=3, step_size_down=5,
                           mode=mode, gamma=gamma)
    ours = make()
    our_sched = ScheduleLR(ours, Cyclic(up=3, down=5, mode=mode, gamma=gamma, min_lr=0.1, cycle_momentum=True), 40)
    for step in range(40):
        for a, b in zip(ours.param_groups, theirs.param_groups, strict=True):
            assert a["lr"] == pytest.approx(b["lr"], rel=1e-12), step
            assert a["momentum"] == pytest.approx(b["momentum"], rel=1e-12), step
        for opt, sched in ((ours, our_sched), (theirs, torch_sched)):
            opt.step()
            sched.step()


def test_constant_warmup_equals_torch_constantlr() -> None:
    opts = [torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.3) for _ in range(2)]
    scheds = [ConstantLR(opts[0], factor=0.25, total_iters=4),
              ScheduleLR(opts[1], Constant(warmup=Warmup(duration=4, shape="constant", start_factor=0.25)), 10)]
    for _ in range(10):
        assert opts[0].param_groups[0]["lr"] == opts[1].param_groups[0]["lr"]
        for opt, sched in zip(opts, scheds, strict=True):
            opt.step()
            sched.step()


@pytest.mark.parametrize(
    ("spec", "needs"),
    [
        (Cosine(decay_end=100), False),  # a decay that ends at a known step runs open-ended
        (Cosine(decay_end="50%"), True),
        (WarmupStableDecay(warmup=10, stable=100, decay=20), False),
        (WarmupStableDecay(decay=20), True),
        (CosineRestarts(cycles=3), True),
        (CosineRestarts(period=10, cycle_limit=2), False),
        (Cyclic(up=10), False),
    ],
)
def test_needs_total_steps(spec: Schedule, needs: bool) -> None:
    assert spec.needs_total_steps() is needs


def test_schedule_name_lists_the_catalogue() -> None:
    assert list(get_args(ScheduleName)) == sorted(SCHEDULES)  # what LightningCLI checks a `scheduler: cosine` against


def test_specs_without_the_new_options_keep_their_repr() -> None:
    # the repr is the schedule's identity in a ScheduleLR checkpoint: unused options must not change it
    assert repr(Cosine(min_lr=0.1)) == "Cosine(warmup=None, min_lr=0.1)"
    assert repr(Warmup(duration=3)) == "Warmup(duration=Duration('3steps'), shape='linear', start_factor=0.0)"
    assert repr(Cosine(cycles=1.0)) == "Cosine(warmup=None, min_lr=0.0, cycles=1.0)"


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("make", "error", "match"),
    [
        (lambda: Cosine(cycles=0), ValueError, r"`cycles` must be > 0"),
        (lambda: Cosine(min_lr=0.1, min_lr_abs=1e-5), ValueError,
         r"Give `min_lr` \(a ratio .*\) or `min_lr_abs` \(an absolute lr .*\), not both"),
        (lambda: Linear(min_lr_abs=-1.0), ValueError, r"`min_lr_abs` must be >= 0"),
        (lambda: Warmup(duration=3, start_factor=0.1, start_lr=0.01), ValueError,
         r"Give `start_factor` .* or `start_lr` .*, not both"),
        (lambda: Warmup(duration=3, shape="exponential", start_lr=0.01), ValueError,
         r"An exponential warmup cannot start from an absolute `start_lr`"),
        (lambda: CosineRestarts(), ValueError, r"needs exactly one of `period` .* and `cycles`"),
        (lambda: CosineRestarts(period=5, cycles=2), ValueError, r"needs exactly one of `period`"),
        (lambda: CosineRestarts(cycles=2.5), TypeError, r"`cycles` must be an int >= 1, got 2\.5"),
        (lambda: CosineRestarts(cycles=2, period_mult=2), ValueError, r"`period_mult` must be 1, got 2"),
        (lambda: CosineRestarts(period=5, cycle_limit=0), ValueError, r"`cycle_limit` must be an int >= 1"),
        (lambda: CosineRestarts(period=5, cycle_decay=0.0), ValueError, r"`cycle_decay` must be in \(0, 1\]"),
        (lambda: CosineRestarts(period=5, warmup_prefix="no"), TypeError, r"`warmup_prefix` must be True or False"),
        (lambda: WarmupStableDecay(cycles=1.0), ValueError,
         r"`cycles` shapes a cosine decay; with decay_shape='linear' it would be ignored"),
        (lambda: Cyclic(up=4, gamma=0.9), ValueError, r"`gamma` scales mode 'exp_range' only"),
        (lambda: Cyclic(up=4, mode="triangle"), ValueError, r"`mode` must be one of .*Did you mean 'triangular'\?"),
        (lambda: Cyclic(up=0), ValueError, r"Invalid `up`: A duration must be > 0"),
        (lambda: Plateau("val_loss", warmup=Warmup(duration=3, start_lr=0.01)), ValueError,
         r"A Plateau warmup scales each group's lr: use `start_factor`"),
    ],
)
def test_bad_options(make: Any, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        make()


@pytest.mark.parametrize(
    ("spec", "length", "match"),
    [
        (Cosine(warmup=10, decay_end=10), TrainingLength(50), r"`decay_end` \(10 steps into the run\) must come after "
                                                               r"the warmup \(10 steps\)"),
        (WarmupStableDecay(warmup=5, stable=30, decay=20), TrainingLength(50),
         r"warmup \(5 steps\), stable phase \(30 steps\) and decay \(20 steps\) together are longer than the run"),
    ],
)
def test_options_that_do_not_fit_the_run(spec: Schedule, length: TrainingLength, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        spec.resolve(length)


def test_factor_alone_refuses_an_absolute_warmup_start() -> None:
    with pytest.raises(ValueError, match=r"starts from an absolute lr: .*`initial_lr \* factor \+ offset`"):
        Warmup(duration=3, start_lr=0.01).factor(1, 3)


# ---------------------------------------------------------------- resume with an absolute floor and momentum cycling

RESUMED = Peer("", Cyclic(up=3, down=4, mode="triangular2", min_lr_abs=0.004, cycle_momentum=True), 20,
               lambda s, lr: 0.0, optimizer="adamw")


def _fit(root: Path, ckpt_path: str | None = None) -> tuple[Recorder, Any]:
    recorder = Recorder()
    checkpoint = ModelCheckpoint(dirpath=root, save_top_k=-1, every_n_train_steps=1)
    trainer = cpu_trainer(root, max_epochs=-1, max_steps=RESUMED.steps, accumulate_grad_batches=2,
                          limit_val_batches=0, callbacks=[recorder, checkpoint])
    model = PeerModel(RESUMED.spec, RESUMED.optimizer)
    trainer.fit(model, ckpt_path=ckpt_path)
    return recorder, model


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")  # resuming into a fresh folder
@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")  # about data order; lrs are what we check
def test_resume_mid_cycle_is_exact(tmp_path: Path) -> None:
    straight, model = _fit(tmp_path / "a")
    curve = preview_schedule(RESUMED.spec, RESUMED.steps, base_lrs=list(LRS))
    assert straight.lrs == list(curve.lrs)
    assert curve.momenta == tuple(m for m, _ in straight.momenta)
    # step 8: one step into the second cycle, and an epoch boundary (the same data follows, so weights compare)
    resumed, again = _fit(tmp_path / "b", ckpt_path=str(tmp_path / "a" / "epoch=0-step=8.ckpt"))
    assert resumed.lrs == straight.lrs[8:]
    assert resumed.momenta == straight.momenta[8:]
    for a, b in zip(model.parameters(), again.parameters(), strict=True):
        assert torch.equal(a, b)
