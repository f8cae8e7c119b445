"""Issue 13: scenarios that Lightning's own test suite covers, each run without and with ``SchedulerStepper``.

Plain Lightning is the reference: with the stepper every lr must be the same (or the stepper must refuse with a
clear error where plain Lightning would silently go wrong).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from unittest import mock

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, LearningRateFinder
from lightning.pytorch.utilities.exceptions import MisconfigurationException
from torch.optim import lr_scheduler as tl

from lit_optim import SchedulerStepper
from tests.models import TinyModule, manual_sgd_step

STEPPER = pytest.mark.parametrize("stepper", [False, True], ids=["plain", "stepper"])


class Recorder(Callback):
    """The lr of group 0 just before each optimizer step, and the epoch it belongs to."""

    def __init__(self) -> None:
        self.lrs: list[float] = []
        self.epochs: list[int] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))
        self.epochs.append(trainer.current_epoch)


def _fit(
    make_trainer: Callable[..., Trainer], model: LightningModule, stepper: SchedulerStepper | None, **kwargs: Any
) -> Recorder:
    recorder = Recorder()
    callbacks = [recorder, *kwargs.pop("callbacks", [])] + ([stepper] if stepper is not None else [])
    kwargs.setdefault("limit_val_batches", 0)
    trainer = make_trainer(callbacks=callbacks, limit_train_batches=2, **kwargs)
    trainer.fit(model)
    return recorder


# --------------------------------------------------------------- epoch schedulers that stop counting their steps


class DelegatingWarmup(tl.LRScheduler):
    """``GradualWarmupScheduler``'s pattern: warm up for ``warmup`` epochs, then pass every ``step()`` to ``after``,
    so its own ``last_epoch`` stops advancing."""

    def __init__(self, optimizer: torch.optim.Optimizer, warmup: int, after: tl.LRScheduler) -> None:
        self.warmup, self.after = warmup, after
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:  # type: ignore[override]
        return [base * (self.last_epoch + 1) / (self.warmup + 1) for base in self.base_lrs]

    def step(self, epoch: int | None = None) -> None:
        if self.last_epoch >= self.warmup:
            self.after.step()
            self._last_lr = self.after.get_last_lr()
        else:
            super().step()


class Delegating(TinyModule):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.3)
        after = tl.StepLR(opt, step_size=1, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": DelegatingWarmup(opt, warmup=2, after=after)}


@STEPPER
def test_an_epoch_scheduler_that_stops_counting_never_hangs(
    make_trainer: Callable[..., Trainer], stepper: bool
) -> None:
    chosen = SchedulerStepper(intervals={"DelegatingWarmup": "epoch"}) if stepper else None
    recorder = _fit(make_trainer, Delegating(), chosen, max_epochs=5)
    per_epoch = [0.3 / 3, 0.3 * 2 / 3, 0.3, 0.3 / 2, 0.3 / 4]  # warmup over 3 values, then halving per epoch
    assert recorder.lrs == pytest.approx([per_epoch[e] for e in range(5) for _ in range(2)], rel=1e-15)


class StepLRModule(TinyModule):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": tl.StepLR(opt, step_size=1, gamma=0.5)}


class MockedStep(Callback):
    """Replace the scheduler's ``step`` by a mock at fit start (Lightning's tests count calls this way)."""

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.step = mock.Mock()
        trainer.lr_scheduler_configs[0].scheduler.step = self.step  # type: ignore[method-assign]


@STEPPER
def test_a_mocked_epoch_step_is_called_once_per_epoch(make_trainer: Callable[..., Trainer], stepper: bool) -> None:
    mocked = MockedStep()
    _fit(make_trainer, StepLRModule(), SchedulerStepper() if stepper else None, max_epochs=3, callbacks=[mocked])
    assert mocked.step.call_count == 3


# --------------------------------------------------------------- LightningModule.lr_scheduler_step


class TimmLike:
    """A scheduler with timm's interface: ``step(epoch, metric=None)`` sets the lr of that epoch; not a torch one."""

    def __init__(self, optimizer: torch.optim.Optimizer, gamma: float) -> None:
        self.optimizer, self.gamma = optimizer, gamma
        self.base = [group["lr"] for group in optimizer.param_groups]

    def step(self, epoch: int, metric: Any = None) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base, strict=True):
            group["lr"] = base * self.gamma**epoch

    def state_dict(self) -> dict[str, Any]:
        return {"base": self.base}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.base = state["base"]


class TimmModule(TinyModule):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": TimmLike(opt, gamma=0.5), "interval": "epoch"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        scheduler.step(epoch=self.current_epoch + 1)  # Lightning's documented recipe for timm's schedulers


@STEPPER
def test_a_timm_style_scheduler_is_stepped_through_the_hook(
    make_trainer: Callable[..., Trainer], stepper: bool
) -> None:
    recorder = _fit(make_trainer, TimmModule(), SchedulerStepper() if stepper else None, max_epochs=3)
    assert recorder.lrs == [0.1 * 0.5**e for e in (0, 0, 1, 1, 2, 2)]


class HoldUntilEpoch2(StepLRModule):
    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        if self.current_epoch >= 2:  # custom logic: hold the lr for the first epochs
            scheduler.step()


@STEPPER
def test_a_custom_lr_scheduler_step_is_honoured(make_trainer: Callable[..., Trainer], stepper: bool) -> None:
    model = HoldUntilEpoch2()
    recorder = _fit(make_trainer, model, SchedulerStepper() if stepper else None, max_epochs=5)
    assert recorder.lrs == [0.1 * f for f in (1, 1, 1, 1, 1, 1, 0.5, 0.5, 0.25, 0.25)]
    assert model.lr_schedulers().last_epoch == 3  # type: ignore[union-attr]  # stepped at the end of epochs 2-4


# --------------------------------------------------------------- manual optimization, epoch scheduler stepped by hand


class ManualEpochModule(StepLRModule):
    """Lightning's manual-optimization recipe: step the epoch scheduler yourself on the epoch's last batch."""

    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        loss = manual_sgd_step(self, batch)
        if self.trainer.is_last_batch:
            self.lr_schedulers().step()  # type: ignore[union-attr]
        return loss


@STEPPER
def test_manual_optimization_epoch_scheduler_stepped_by_hand_is_not_doubled(
    make_trainer: Callable[..., Trainer], stepper: bool
) -> None:
    model = ManualEpochModule()
    if stepper:
        with pytest.warns(RuntimeWarning, match=r"StepLR \(lr_scheduler_configs\[0\]\) is stepped by your "):
            recorder = _fit(make_trainer, model, SchedulerStepper(), max_epochs=4)
    else:
        recorder = _fit(make_trainer, model, None, max_epochs=4)
    assert recorder.lrs == [0.1 * 0.5**e for e in (0, 0, 1, 1, 2, 2, 3, 3)]
    assert model.lr_schedulers().last_epoch == 4  # type: ignore[union-attr]


class ManualEpochEndModule(ManualEpochModule):
    """Steps the scheduler in ``on_train_epoch_end``, after the stepper's own end-of-epoch step."""

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return manual_sgd_step(self, batch)

    def on_train_epoch_end(self) -> None:
        self.lr_schedulers().step()  # type: ignore[union-attr]


def test_manual_epoch_scheduler_stepped_after_the_stepper_raises_instead_of_doubling(
    make_trainer: Callable[..., Trainer],
) -> None:
    plain = _fit(make_trainer, ManualEpochEndModule(), None, max_epochs=3)
    assert plain.lrs == [0.1 * 0.5**e for e in (0, 0, 1, 1, 2, 2)]
    with pytest.raises(
        RuntimeError,
        match=r"StepLR \(lr_scheduler_configs\[0\]\) was stepped outside .*advanced "
        r"twice in one epoch.*`if self.trainer.is_last_batch: sch.step\(\)`",
    ):
        _fit(make_trainer, ManualEpochEndModule(), SchedulerStepper(), max_epochs=3)


# --------------------------------------------------------------- LearningRateFinder re-run mid-training


class FinderAtEpochs(LearningRateFinder):
    """The pattern of ``LearningRateFinder``'s docstring: search again at milestone epochs."""

    def __init__(self, milestones: tuple[int, ...]) -> None:
        super().__init__(num_training_steps=3, early_stop_threshold=None, update_attr=False)
        self.milestones = milestones

    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        return

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if trainer.current_epoch in self.milestones:
            self.lr_find(trainer, pl_module)


class PerStepLambda(TinyModule):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = tl.LambdaLR(opt, lambda s: 1 / (1 + s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")  # the finder restores a mid-epoch checkpoint
@STEPPER
def test_learning_rate_finder_rerun_mid_training(make_trainer: Callable[..., Trainer], stepper: bool) -> None:
    model = PerStepLambda()
    finder = FinderAtEpochs(milestones=(1,))
    recorder = Recorder()
    callbacks: list[Callback] = [recorder, finder] + ([SchedulerStepper()] if stepper else [])
    trainer = make_trainer(callbacks=callbacks, limit_train_batches=4, limit_val_batches=0, max_epochs=3)
    trainer.fit(model)
    assert finder.optimal_lr is not None  # it ran
    assert recorder.lrs == [0.1 * (1 / (1 + s)) for s in range(12)]  # the finder's steps left the schedule untouched
    assert model.lr_schedulers().last_epoch == 12  # type: ignore[union-attr]


# --------------------------------------------------------------- plateau schedulers


class ScriptedTrainMetric(TinyModule):
    """Logs a scripted per-epoch training metric with ``on_epoch=True``; a ReduceLROnPlateau monitors it."""

    VALUES = (1.0, 2.0, 0.5, 3.0, 4.0, 0.1)

    def __init__(self, monitor: str = "train_metric", on_step: bool = False, on_epoch: bool = True) -> None:
        super().__init__()
        self.monitor, self.on_step, self.on_epoch = monitor, on_step, on_epoch

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        value = self.VALUES[self.current_epoch]
        self.log("train_metric", value, on_step=self.on_step, on_epoch=self.on_epoch)
        return super().training_step(batch, batch_idx)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = tl.ReduceLROnPlateau(opt, factor=0.5, patience=0)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": self.monitor}}


def _rop_reference(values: tuple[float, ...]) -> list[float]:
    """torch's ReduceLROnPlateau on the epoch values: the lr of each epoch."""
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    sched = tl.ReduceLROnPlateau(opt, factor=0.5, patience=0)
    lrs = []
    for value in values:
        lrs.append(opt.param_groups[0]["lr"])
        sched.step(value)
    return lrs


@pytest.mark.parametrize(
    ("on_step", "on_epoch"), [(False, True), (True, True), (True, False)], ids=["epoch", "step+epoch", "step"]
)
@pytest.mark.parametrize("validation", [0, 1], ids=["no-validation", "with-validation"])
@STEPPER
def test_plateau_on_an_epoch_level_training_metric(
    make_trainer: Callable[..., Trainer], stepper: bool, validation: int, on_step: bool, on_epoch: bool
) -> None:
    model = ScriptedTrainMetric(on_step=on_step, on_epoch=on_epoch)  # "step": the last step's value, as Lightning
    epochs = len(model.VALUES)
    recorder = _fit(
        make_trainer, model, SchedulerStepper() if stepper else None, max_epochs=epochs, limit_val_batches=validation
    )
    per_epoch = _rop_reference(model.VALUES)
    assert recorder.lrs == [per_epoch[e] for e in range(epochs) for _ in range(2)]
    assert per_epoch[-1] == 0.1 * 0.5**3  # epochs 1, 3 and 4 did not improve


@STEPPER
def test_a_missing_plateau_monitor_is_a_misconfiguration_and_a_value_error(
    make_trainer: Callable[..., Trainer], stepper: bool
) -> None:
    model = ScriptedTrainMetric(monitor="train_metrc")
    with pytest.raises(MisconfigurationException, match=r"train_metrc") as info:
        _fit(make_trainer, model, SchedulerStepper() if stepper else None, max_epochs=2, limit_val_batches=1)
    if stepper:
        assert isinstance(info.value, ValueError)
        assert "Did you mean 'train_metric'?" in str(info.value)


class ManualPlateau(TinyModule):
    def __init__(self) -> None:
        super().__init__()
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        return manual_sgd_step(self, batch)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return [opt], [tl.ReduceLROnPlateau(opt)]


def test_manual_optimization_plateau_error_names_only_what_works_there(make_trainer: Callable[..., Trainer]) -> None:
    match = r"ReduceLROnPlateau needs a metric to monitor.*SchedulerStepper\(monitor="
    with pytest.raises(MisconfigurationException, match=match) as info:
        _fit(make_trainer, ManualPlateau(), SchedulerStepper(), limit_val_batches=1)
    assert isinstance(info.value, ValueError)
    assert "'monitor': " not in str(info.value)  # Lightning drops that key under manual optimization


class EveryOtherEpoch(TinyModule):
    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        config = {"scheduler": tl.StepLR(opt, step_size=1, gamma=0.5), "interval": "epoch", "frequency": 2}
        return {"optimizer": opt, "lr_scheduler": config}


@STEPPER
def test_epoch_frequency(make_trainer: Callable[..., Trainer], stepper: bool) -> None:
    recorder = _fit(make_trainer, EveryOtherEpoch(), SchedulerStepper() if stepper else None, max_epochs=5)
    assert recorder.lrs == [0.1 * 0.5 ** (e // 2) for e in range(5) for _ in range(2)]


class GlobalStepHook(TinyModule):
    """A per-step scheduler whose `lr_scheduler_step` override reads `self.global_step`."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[int] = []

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        sched = tl.LambdaLR(opt, lambda s: 1 / (1 + s))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        self.seen.append(self.global_step)
        if self.global_step % 3 != 0:  # custom logic on the step count
            scheduler.step()


@STEPPER
def test_a_per_step_lr_scheduler_step_override_sees_lightnings_global_step(
    make_trainer: Callable[..., Trainer], stepper: bool
) -> None:
    model = GlobalStepHook()
    recorder = _fit(make_trainer, model, SchedulerStepper() if stepper else None, max_epochs=3)
    assert model.seen == [1, 2, 3, 4, 5, 6]
    assert recorder.lrs == [0.1 * (1 / (1 + s)) for s in (0, 1, 2, 2, 3, 4)]
