"""Resume edge cases of ``SchedulerStepper`` found in review: each run N+K straight vs N, save, restore, K more,
compared lr for lr (plain Lightning measured alongside where it supports the case)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import LightningModule, Trainer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.optim import lr_scheduler as tl

from lit_optim import SchedulerStepper
from tests.models import TinyModule
from tests.trainers import cpu_trainer

BATCHES = 4


class Recorder(Callback):
    """The lr of every optimizer's first group just before each of its steps."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_before_optimizer_step(self, trainer: Trainer, pl_module: LightningModule, optimizer: Any) -> None:
        self.lrs.append(float(optimizer.param_groups[0]["lr"]))


class HandSteppedEpoch(TinyModule):
    """Manual optimization, Lightning's recipe: the epoch scheduler stepped by hand on each epoch's last batch."""

    def __init__(self) -> None:
        super().__init__(n=4 * BATCHES)
        self.automatic_optimization = False

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        return {"optimizer": opt, "lr_scheduler": tl.StepLR(opt, step_size=1, gamma=0.5)}

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        opt = self.optimizers()
        loss = torch.nn.functional.mse_loss(self(batch[0]), batch[1])
        self.manual_backward(loss)
        opt.step()  # type: ignore[union-attr]
        opt.zero_grad()  # type: ignore[union-attr]
        if self.trainer.is_last_batch:
            self.lr_schedulers().step()  # type: ignore[union-attr]
        return loss


def _fit(root: Path, model: LightningModule, stepper: bool, epochs: int, ckpt_path: str | None = None) -> Recorder:
    recorder = Recorder()
    callbacks: list[Callback] = [recorder, ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_train_steps=1)]
    if stepper:
        callbacks.insert(0, SchedulerStepper())
    trainer = cpu_trainer(root, max_epochs=epochs, limit_val_batches=1, callbacks=callbacks)
    trainer.fit(model, ckpt_path=ckpt_path)
    return recorder


@pytest.mark.filterwarnings("ignore:.*is stepped by your `training_step`:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
@pytest.mark.filterwarnings("ignore:.*your dataloader is not resumable")
@pytest.mark.filterwarnings("ignore:Using ModelCheckpoint with manual optimization:UserWarning")
@pytest.mark.parametrize("step", [4, 6, 8], ids=["first-epoch-last-step", "mid-epoch", "second-epoch-last-step"])
@pytest.mark.parametrize("stepper", [False, True], ids=["plain", "stepper"])
def test_hand_stepped_epoch_scheduler_is_not_caught_up_again_on_resume(
    tmp_path: Path, stepper: bool, step: int
) -> None:
    straight = _fit(tmp_path / "straight", HandSteppedEpoch(), stepper, epochs=4).lrs
    assert straight == [0.1 * 0.5 ** (i // BATCHES) for i in range(4 * BATCHES)]
    epoch = (step - 1) // BATCHES
    ckpt = tmp_path / "straight" / "ckpt" / f"epoch={epoch}-step={step}.ckpt"
    resumed = _fit(tmp_path / "resumed", HandSteppedEpoch(), stepper, epochs=4, ckpt_path=str(ckpt)).lrs
    assert resumed == straight[step:]


class PlateauOnEpochMetric(TinyModule):
    """A ``ReduceLROnPlateau`` (cooldown 2) on a training metric that never improves, logged either by
    ``training_step`` with ``on_epoch=True`` or by the module's own ``on_train_epoch_end``."""

    def __init__(self, where: str) -> None:
        super().__init__(n=4 * BATCHES)
        self.where = where

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if self.where == "training_step":
            self.log("flat", 1.0, on_step=False, on_epoch=True)
        return super().training_step(batch, batch_idx)

    def on_train_epoch_end(self) -> None:
        if self.where == "on_train_epoch_end":
            self.log("flat", 1.0)

    def configure_optimizers(self) -> Any:
        opt = torch.optim.SGD(self.parameters(), lr=0.1)
        plateau = tl.ReduceLROnPlateau(opt, factor=0.5, patience=0, cooldown=2)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": plateau, "monitor": "flat"}}


def _fit_plateau(root: Path, where: str, stepper: bool, ckpt_path: str | None = None) -> Recorder:
    recorder = Recorder()
    callbacks: list[Callback] = [
        recorder,
        ModelCheckpoint(dirpath=root / "ckpt", save_top_k=-1, every_n_epochs=1, save_on_train_epoch_end=True),
    ]
    if stepper:
        callbacks.insert(0, SchedulerStepper())
    trainer = cpu_trainer(root, max_epochs=7, limit_val_batches=0, callbacks=callbacks)
    trainer.fit(PlateauOnEpochMetric(where), ckpt_path=ckpt_path)
    return recorder


def _plateau_closed_form(epochs: int) -> list[float]:
    """torch's rule with patience 0, cooldown 2 on a constant metric: the first epoch sets the best, then a
    reduction at every epoch end that is out of cooldown (epochs 1, 4, 7, ...)."""
    lrs, lr, cooldown, bad = [], 0.1, 0, 0
    for epoch in range(epochs):
        lrs += [lr] * BATCHES
        if epoch == 0:
            continue
        bad += 1
        if cooldown > 0:
            cooldown, bad = cooldown - 1, 0
        if bad > 0:
            lr, cooldown, bad = lr * 0.5, 2, 0
    return lrs


@pytest.mark.parametrize("where", ["training_step", "on_train_epoch_end"])
def test_plateau_on_a_metric_logged_by_the_modules_epoch_end_hook_works_as_in_lightning(
    tmp_path: Path, where: str
) -> None:
    plain = _fit_plateau(tmp_path / "plain", where, stepper=False).lrs
    assert plain == _plateau_closed_form(7)
    assert _fit_plateau(tmp_path / "stepper", where, stepper=True).lrs == plain


@pytest.mark.filterwarnings("ignore:The dirpath has changed:UserWarning")
@pytest.mark.parametrize("where", ["training_step", "on_train_epoch_end"])
@pytest.mark.parametrize("epoch", [2, 3], ids=["mid-cooldown", "cooldown-end"])
def test_plateau_on_a_training_metric_resumes_mid_cooldown(tmp_path: Path, where: str, epoch: int) -> None:
    straight = _fit_plateau(tmp_path / "straight", where, stepper=True).lrs
    ckpt = tmp_path / "straight" / "ckpt" / f"epoch={epoch - 1}-step={epoch * BATCHES}.ckpt"
    resumed = _fit_plateau(tmp_path / "resumed", where, stepper=True, ckpt_path=str(ckpt)).lrs
    assert resumed == straight[epoch * BATCHES :]
