"""Issue 13: loops where a schedule used to be silently wrong; now exact (the preview is what the Trainer uses) or
refused when fitting starts, with a message that says what to do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, GradientAccumulationScheduler
from torch.optim import lr_scheduler as tl

from lit_optim import (
    Cosine,
    Linear,
    Plateau,
    ScheduleLR,
    SchedulerStepper,
    Step,
    lightning_scheduler_config,
    plateau_scheduler_config,
    preview_schedule,
    resolve_training_length,
)
from tests.models import TinyModule

SCHEDULE = Cosine(warmup=3, min_lr=0.01)


class Recorder(Callback):
    """Per optimizer, the lrs of its groups just before each of its steps."""

    def __init__(self) -> None:
        self.lrs: dict[int, list[tuple[float, ...]]] = {}

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        index = [id(o) for o in trainer.optimizers].index(id(optimizer))
        self.lrs.setdefault(index, []).append(tuple(float(g["lr"]) for g in optimizer.param_groups))


def _two_groups(module: TinyModule) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        [
            {"params": module.net[0].parameters(), "lr": 0.1, "name": "body"},
            {"params": module.net[2].parameters(), "lr": 0.5, "name": "head"},
        ]
    )


# ----------------------------------------------------------------------------- a schedule and a plateau, one optimizer


class ScheduleAndPlateau(TinyModule):
    def __init__(self, plateau: str) -> None:
        super().__init__()
        self.plateau = plateau

    def configure_optimizers(self) -> Any:
        opt = _two_groups(self)
        schedule = lightning_scheduler_config(opt, SCHEDULE, self.trainer)
        if self.plateau == "torch":
            plateau = {"scheduler": tl.ReduceLROnPlateau(opt, factor=0.5), "monitor": "val_loss"}
        elif self.plateau == "StepLR":  # any torch scheduler: its decay would be wiped at the next step as well
            plateau = {"scheduler": tl.StepLR(opt, step_size=1, gamma=0.5), "interval": "epoch"}
        else:
            plateau = plateau_scheduler_config(opt, Plateau("val_loss"), self.trainer)
        return [opt], [schedule, plateau]


@pytest.mark.parametrize(
    ("plateau", "name", "fix"),
    [
        ("torch", "ReduceLROnPlateau", r"`Plateau\(monitor=..., warmup=...\)`"),
        ("lit_optim", "PlateauLR", r"`Plateau\(monitor=..., warmup=...\)`"),
        ("StepLR", "StepLR", r"Express the whole curve as one lit_optim schedule \(e.g. `Step`, `MultiStep`"),
    ],
)
def test_a_schedule_and_another_scheduler_on_one_optimizer_are_refused_at_fit_start(
    make_trainer: Callable[..., Trainer], plateau: str, name: str, fix: str
) -> None:
    trainer = make_trainer(limit_train_batches=4, max_epochs=2)
    match = (
        rf"ScheduleLR \(lr_scheduler_configs\[0\]\) and {name} \(lr_scheduler_configs\[1\]\) drive the same "
        rf"optimizer \(SGD\).*would be overwritten at the next step.*{fix}"
    )
    with pytest.raises(ValueError, match=match):
        trainer.fit(ScheduleAndPlateau(plateau))
    assert trainer.global_step == 0  # refused before any step


# ----------------------------------------------------------------------------- manual optimization, two optimizers


class TwoOptimizersManual(TinyModule):
    """A GAN-like loop: both optimizers step on every batch, each with its own schedule."""

    def __init__(self, total_steps: int | None = None) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.total_steps = total_steps

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        for opt in self.optimizers():  # type: ignore[union-attr]
            loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
            self.manual_backward(loss)
            opt.step()
            opt.zero_grad()

    def configure_optimizers(self) -> Any:
        body = torch.optim.SGD(self.net[0].parameters(), lr=0.1)
        head = torch.optim.SGD(self.net[2].parameters(), lr=0.5)
        return [body, head], [
            lightning_scheduler_config(body, SCHEDULE, self.trainer, total_steps=self.total_steps),
            lightning_scheduler_config(head, Linear(), self.trainer, total_steps=self.total_steps),
        ]


def test_manual_optimization_with_max_steps_refuses_a_length_resolved_from_the_run(
    make_trainer: Callable[..., Trainer],
) -> None:
    trainer = make_trainer(max_steps=16, max_epochs=-1, limit_val_batches=0)
    match = (
        r"spans 16 steps, resolved from the run \(`max_steps=16`\), but under manual optimization with 2 optimizers "
        r"`global_step` .* counts every optimizer's steps.*`lightning_scheduler_config\(opt, schedule, self.trainer, "
        r"total_steps=...\)`"
    )
    with pytest.raises(ValueError, match=match):
        trainer.fit(TwoOptimizersManual())


def test_manual_optimization_each_schedule_covers_its_own_steps(make_trainer: Callable[..., Trainer]) -> None:
    recorder = Recorder()
    trainer = make_trainer(max_steps=16, max_epochs=-1, limit_val_batches=0, callbacks=[recorder])
    model = TwoOptimizersManual(total_steps=8)  # 16 global steps = 8 batches, each optimizer steps on each
    trainer.fit(model)
    assert recorder.lrs[0] == list(preview_schedule(SCHEDULE, 8, base_lrs=0.1).lrs)  # the whole curve, to its end
    assert recorder.lrs[1] == list(preview_schedule(Linear(), 8, base_lrs=0.5).lrs)
    assert [s.last_epoch for s in model.lr_schedulers()] == [8, 8]  # type: ignore[union-attr]


def test_manual_optimization_bounded_by_epochs_spans_one_step_per_batch(make_trainer: Callable[..., Trainer]) -> None:
    recorder = Recorder()
    trainer = make_trainer(max_epochs=2, limit_train_batches=4, limit_val_batches=0, callbacks=[recorder])
    trainer.fit(TwoOptimizersManual())
    assert recorder.lrs[0] == list(preview_schedule(SCHEDULE, trainer, base_lrs=0.1).lrs)
    assert len(recorder.lrs[1]) == 8


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "10"])
def test_total_steps_is_checked(make_trainer: Callable[..., Trainer], bad: Any) -> None:
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    with pytest.raises(ValueError, match=rf"`total_steps` must be an int >= 1 or None, got {bad!r}"):
        lightning_scheduler_config(opt, SCHEDULE, make_trainer(), total_steps=bad)


# ----------------------------------------------------------------------------- GradientAccumulationScheduler


class Scheduled(TinyModule):
    def __init__(self, schedule: Any = SCHEDULE) -> None:
        super().__init__()
        self.schedule = schedule

    def configure_optimizers(self) -> Any:
        opt = _two_groups(self)
        return {"optimizer": opt, "lr_scheduler": lightning_scheduler_config(opt, self.schedule, self.trainer)}


@pytest.mark.parametrize(
    ("scheduling", "limit", "epochs", "total"),
    [({0: 1, 1: 2}, 8, 3, 16), ({1: 3}, 7, 2, 10), ({0: 2, 2: 4}, 8, 4, 4 + 4 + 2 + 2)],
)
def test_gradient_accumulation_scheduler_is_counted(
    make_trainer: Callable[..., Trainer], scheduling: dict[int, int], limit: int, epochs: int, total: int
) -> None:
    recorder = Recorder()
    callbacks = [GradientAccumulationScheduler(scheduling), recorder]
    trainer = make_trainer(callbacks=callbacks, limit_train_batches=limit, limit_val_batches=0, max_epochs=epochs)
    model = Scheduled()
    trainer.fit(model)
    assert resolve_training_length(trainer).total_steps == total
    curve = preview_schedule(SCHEDULE, trainer, base_lrs={"body": 0.1, "head": 0.5})
    assert len(curve) == total == trainer.global_step
    assert recorder.lrs[0] == list(curve.lrs)  # every step, to the end of the schedule
    assert model.lr_schedulers().last_epoch == total  # type: ignore[union-attr]


def test_gradient_accumulation_scheduler_with_max_steps(make_trainer: Callable[..., Trainer]) -> None:
    recorder = Recorder()
    callbacks = [GradientAccumulationScheduler({1: 2}), recorder]
    trainer = make_trainer(callbacks=callbacks, limit_train_batches=8, limit_val_batches=0, max_epochs=5, max_steps=11)
    trainer.fit(Scheduled())
    curve = preview_schedule(SCHEDULE, trainer, base_lrs={"body": 0.1, "head": 0.5})
    assert len(curve) == 11 == trainer.global_step
    assert recorder.lrs[0] == list(curve.lrs)


def test_epoch_durations_under_a_changing_accumulation_are_refused(make_trainer: Callable[..., Trainer]) -> None:
    trainer = make_trainer(
        callbacks=[GradientAccumulationScheduler({1: 2})], limit_train_batches=8, limit_val_batches=0, max_epochs=3
    )
    match = r"steps per epoch is unknown.*`GradientAccumulationScheduler` changes the optimizer steps per epoch "
    match += r"\(8, 4, 4\)"
    with pytest.raises(ValueError, match=match):
        trainer.fit(Scheduled(Step(every="1ep", gamma=0.5)))


def test_a_bare_schedule_lr_is_not_refused_with_another_optimizer(make_trainer: Callable[..., Trainer]) -> None:
    class Module(TwoOptimizersManual):
        def configure_optimizers(self) -> Any:
            body = torch.optim.SGD(self.net[0].parameters(), lr=0.1)
            head = torch.optim.SGD(self.net[2].parameters(), lr=0.5)
            return [body, head], [
                {"scheduler": ScheduleLR(body, Linear(), total_steps=8), "interval": "step"},
                {"scheduler": ScheduleLR(head, Linear(), total_steps=8), "interval": "step"},
            ]

    trainer = make_trainer(max_steps=16, max_epochs=-1, limit_val_batches=0, callbacks=[SchedulerStepper()])
    model = Module()
    trainer.fit(model)  # lengths given by the user: nothing to refuse
    assert [s.last_epoch for s in model.lr_schedulers()] == [8, 8]  # type: ignore[union-attr]
