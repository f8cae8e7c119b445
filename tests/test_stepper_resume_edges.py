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
